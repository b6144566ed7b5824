"""Stage entry: `python train/r3.py --config RECIPE.yaml key=value ...` (same as `mova train r3`).

Launch on several GPUs with torchrun or deepspeed like the other stages (scripts/train_torchrun.sh,
scripts/train_deepspeed.sh); PPO's actor and critic each get a DeepSpeed engine from `train.deepspeed`.
"""

import sys

from mova.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "r3", *sys.argv[1:]]))
