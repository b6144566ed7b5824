"""Stage entry: `python train/rm.py --config RECIPE.yaml key=value ...` (same as `mova train rm`).

Reward-model training on text pairs (JSONL) or SPA-VL (a Mova VLM); launch on several GPUs with torchrun or
deepspeed exactly like the other stages (scripts/train_torchrun.sh, train_deepspeed.sh with zero2.json).
Preference strength for the noisy-label options comes from `mova rm-strength` (see docs/reward_modeling.md).
"""

import sys

from mova.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "rm", *sys.argv[1:]]))
