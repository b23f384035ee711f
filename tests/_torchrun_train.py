"""Run by tests/test_train.py under `torchrun --standalone --nproc_per_node=2`: train a tiny
config (JSON in argv[1]) and record the dataset indices each rank used, per step, in argv[2]."""

import json
import os
import sys

import torch

from ddpm.train import TrainConfig, train

torch.set_num_threads(1)
config = TrainConfig.from_dict(json.loads(sys.argv[1]))
used = []
train(config, progress=False, on_step=lambda step, info: used.append(info["indices"].tolist()))
with open(os.path.join(sys.argv[2], f"indices_rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(used, f)
