"""``python -m mova.cli ...`` (what torchrun and the deepspeed launcher start)."""

import sys

from mova.cli import main

sys.exit(main())
