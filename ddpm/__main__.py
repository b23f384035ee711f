"""``python -m ddpm``: the same as the ``ddpm`` command."""

import sys

from .cli import main

sys.exit(main())
