"""Stage entry: `python train/align.py --config RECIPE.yaml key=value ...` (same as `mova train align`).

Launch on several GPUs with torchrun or deepspeed (scripts/train_torchrun.sh, scripts/train_deepspeed.sh).
"""

import sys

from mova.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "align", *sys.argv[1:]]))
