#!/usr/bin/env bash
# The quickstart: build the tiny poly-expert model, run a batch through it and print its model table.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m mova.cli demo "$@"
