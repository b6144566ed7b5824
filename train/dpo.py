"""Stage entry: `python train/dpo.py --config RECIPE.yaml key=value ...` (same as `mova train dpo`).

Preference optimisation of a Mova VLM (SPA-VL pairs) or a text LM (JSONL pairs); launch on several GPUs
with torchrun or deepspeed exactly like the other stages (scripts/train_torchrun.sh, train_deepspeed.sh).
"""

import sys

from mova.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "dpo", *sys.argv[1:]]))
