# ddpm-book: a fresh clone needs only `make book` or `make test`.
#
#   make book    create .venv if missing, install, build the book into _build/html
#   make test    same install, then lint, unit, portability, wheel, nbval, book-strict, browser, learner
#   make portability   numerical tests + theory notebooks again, other CPU kernels, one thread
#   make wheel   the Colab route: build the wheel, install it into a fresh venv, run two chapters
#   make lint    ruff
#   make bench   benchmarks (own venv, see bench/README.md)
#   make chapter NB=book/NN_name.ipynb   build one chapter on its own, strictly
#   make clean   remove _build
#   make exercises   learner notebooks (coding solutions replaced by stubs) into exercises/
#   make learner     run every learner notebook: each checker must say "not solved yet"
#   make wheel       the Colab route: the wheel, installed (not editable) in fresh venvs, trains, samples, runs 2 chapters
#   make publish build, then push _build/html to the gh-pages branch (see README)
#
# Override on the command line, e.g. `make test PYTHON=python3.12 VENV=/tmp/venv`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= book,test,dev
# strict: every Sphinx warning (and every unresolved reference, -n) fails the build
BOOKFLAGS ?= -W -n --keep-going

BIN := $(VENV)/bin
PY := $(BIN)/python
# re-install only when pyproject.toml changes (or the venv is new)
STAMP := $(VENV)/.ddpm-installed

# never wait for input (CI, no stdin); take kernels and config from the venv
export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export JUPYTER_PREFER_ENV_PATH := 1

.PHONY: help install book test lint unit portability nbval book-strict bench chapter clean
.PHONY: distclean
.PHONY: vendor browser times
.PHONY: publish
.PHONY: exercises learner
.PHONY: wheel

help:
	@sed -n 's/^#   make/  make/p' Makefile

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "error: $(PYTHON) is not Python >= 3.10 (or not found); run e.g. make PYTHON=python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@start=$$(date +%s); \
	$(PY) -m pip install --upgrade pip; \
	$(PY) -m pip install -e ".[$(EXTRAS)]"; \
	touch $@; \
	echo "[time] install: $$(( $$(date +%s) - start ))s"

install: $(STAMP)

# Incremental: only changed pages are re-read (and their notebooks re-executed).
# `make clean book` for a build from scratch; `make test` always rebuilds everything.
book: $(STAMP) vendor
	$(BIN)/jupyter-book build . --path-output . $(BOOKFLAGS)
	@test -f _build/html/index.html
	@echo "book: $(CURDIR)/_build/html/index.html"

test: $(STAMP)
	@total=$$(date +%s); \
	for phase in lint unit portability wheel nbval book-strict browser learner; do \
	  start=$$(date +%s); \
	  if ! $(MAKE) --no-print-directory $$phase; then \
	    echo "[time] $$phase: FAILED after $$(( $$(date +%s) - start ))s"; exit 1; \
	  fi; \
	  echo "[time] $$phase: $$(( $$(date +%s) - start ))s"; \
	done; \
	echo "[time] test total (without install): $$(( $$(date +%s) - total ))s"; \
	$(MAKE) --no-print-directory times

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(PY) -m pytest -ra tests --ignore=tests/browser

# The numerical tests and the theory notebooks a second time, on another of PyTorch's CPU kernel
# sets (ATEN_CPU_CAPABILITY: default, avx2, avx512) than the one `unit` and `nbval` use (the
# CPU's best), and on one thread. float32 results differ in their last bits between kernel sets,
# thread counts and CPUs, so a tolerance tuned to one machine's rounding fails here too, on any
# machine. "default" (plain C++ loops) exists on every CPU; tests/conftest.py stops the pass if
# the kernel set did not change. A CPU with only the default set runs the pass on one thread.
# (test_metrics.py is left out: its slow part trains and caches a classifier, not arithmetic.)
NUMERICAL_TESTS ?= tests/test_schedules.py tests/test_diffusion.py tests/test_unet.py \
  $(wildcard tests/test_exercises_*.py)
THEORY_NOTEBOOKS ?= $(wildcard book/0[1-5]_*.ipynb)
portability: $(STAMP)
	@first=$$($(PY) -c 'import torch; print(torch.backends.cpu.get_cpu_capability())'); \
	native=$$(env -u ATEN_CPU_CAPABILITY $(PY) -c \
	  'import torch; print(torch.backends.cpu.get_cpu_capability())'); \
	if [ "$$first" != DEFAULT ]; then other=default; \
	elif [ "$$native" != DEFAULT ]; then other=$$(echo "$$native" | tr A-Z a-z); \
	else other=; fi; \
	if [ -n "$$other" ]; then \
	  echo "portability: the first pass ran on $$first kernels, this one runs on $$other, one thread"; \
	  export DDPM_FIRST_PASS_CPU_CAPABILITY=$$first ATEN_CPU_CAPABILITY=$$other; \
	else \
	  echo "portability: PyTorch has only its default CPU kernels here: same kernels, one thread"; \
	fi; \
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -ra -p no:cacheprovider --nbval-lax \
	  $(NUMERICAL_TESTS) $(THEORY_NOTEBOOKS)

# Notebooks are stored without outputs, so nbval only checks that they run (checks are asserts).
# Two workers (pytest-xdist) of one thread each: book/conftest.py keeps each notebook's cells
# on one worker, and the chapters that load chapter 7's model after it, on one worker. On
# 2 cores two one-thread kernels finish the book sooner than one kernel on two threads (a
# second thread speeds the UNet up 1.4-1.8x, not 2x, and the small tensors not at all;
# bench/README.md), and two threads each would oversubscribe the cores.
# pytest exits 5 when it collects nothing: fine while book/ has no notebooks.
NOTEBOOK_WORKERS ?= 2
NOTEBOOK_THREADS ?= 1
nbval: $(STAMP)
	@rc=0; OMP_NUM_THREADS=$(NOTEBOOK_THREADS) $(PY) -m pytest -ra --nbval-lax \
	  -n $(NOTEBOOK_WORKERS) book/ \
	  --junitxml=_build/nbval-junit.xml || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "nbval: no notebooks under book/ yet"; rc=0; fi; \
	exit $$rc

book-strict: $(STAMP) vendor
	$(BIN)/jupyter-book build . --path-output . --all $(BOOKFLAGS)
	@test -f _build/html/index.html

# MathJax, require.js and the ipywidgets embed manager, pinned, from the npm registry into
# _vendor/npm/ (served as _static/npm/: the site needs no CDN). Skips what is already there.
vendor: | $(PY)
	@$(PY) tools/vendor_assets.py

# Every page of _build/html in headless Chromium (Debian: chromium + chromium-driver); skipped,
# with the command to install them, where they are missing (.ci/run installs them).
# Screenshots: _build/screenshots/.
browser: $(STAMP)
	$(PY) -m pytest -ra tests/browser

# Seconds per notebook in the nbval pass and in the strict build (also _build/notebook-times.txt).
times: | $(PY)
	@$(PY) tools/notebook_times.py

bench:
	bash bench/run.sh

# Build one chapter on its own, strictly: make chapter NB=book/01_forward_process.ipynb
CHAPTER_DIR ?= /tmp/ddpm-chapter
chapter: $(STAMP) vendor
	@test -n "$(NB)" || { echo "usage: make chapter NB=book/NN_name.ipynb"; exit 2; }
	rm -rf $(CHAPTER_DIR) && mkdir -p $(CHAPTER_DIR)
	cp -r _config.yml book _vendor tools $(CHAPTER_DIR)/
	printf 'format: jb-book\nroot: book/intro\nchapters:\n  - file: %s\n  - file: book/references\n' \
	  "$(basename $(NB))" > $(CHAPTER_DIR)/_toc.yml
	$(BIN)/jupyter-book build $(CHAPTER_DIR) --path-output $(CHAPTER_DIR) --all $(BOOKFLAGS)

# Publish by hand (the workflow .github/workflows/book.yml does it on every push to main):
# ghp-import (dev extra) commits _build/html to the gh-pages branch and pushes it to origin.
# -n writes .nojekyll (else GitHub's Jekyll hides _static/ and every folder starting with _),
# -p pushes, -f replaces the branch with this build.
publish: book
	$(BIN)/ghp-import -n -p -f _build/html

# Learner notebooks (tools/make_exercises.py): every chapter with each coding solution replaced
# by `raise NotImplementedError("Exercise N.M: ...")`, into exercises/ (git-ignored). A notebook
# the learner has edited is kept; `make exercises FORCE=1` rewrites it.
exercises: $(STAMP)
	$(PY) tools/make_exercises.py --out exercises $(if $(FORCE),--force)

# Execute every learner notebook in a kernel (one more pass over the book): every checker must
# print "not solved yet", and only the stubs may raise. The tests' fast parts run in `unit`;
# the launch-button check needs the built book (book-strict runs before this phase).
# Two workers of one thread each, scheduled as in nbval (tools/notebook_groups.py).
learner: $(STAMP)
	DDPM_LEARNER_TESTS=1 OMP_NUM_THREADS=$(NOTEBOOK_THREADS) $(PY) -m pytest -ra \
	  -n $(NOTEBOOK_WORKERS) tests/test_learner_notebooks.py \
	  tests/test_repository_url.py

# The Colab route (tests/test_wheel.py): build the wheel, install it (not editable) into fresh
# virtual environments, run `ddpm train` (a few steps) and `ddpm sample` with the base
# dependencies only, and a theory and a practice chapter from a folder outside the checkout.
# Offline: the dependencies are this venv's, linked in. About two minutes on a quiet machine.
wheel: $(STAMP)
	DDPM_WHEEL_TESTS=1 $(PY) -m pytest -ra tests/test_wheel.py

clean:
	rm -rf _build

distclean: clean
	rm -rf $(VENV) .pytest_cache .ruff_cache
