"""Every shipped YAML recipe parses into a RunConfig (typos in keys fail here, not on a cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mova.cli.train import STAGES as TRAIN_STAGES
from mova.config import load_run_config
from mova.trainers.dpo import check_reference
from mova.trainers.dpo_loss import check_loss_options

RECIPES = sorted((Path(__file__).resolve().parents[1] / "train" / "configs").glob("*.yaml"))
#: recipes in a format of their own (the continual loop's sequence of tasks), checked by their loader.
OWN_FORMAT = {"tiny_continual"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_loads(path):
    if path.stem in OWN_FORMAT:
        from mova.continual.config import load_continual_config

        load_continual_config(path)
        return
    cfg = load_run_config(path)
    assert cfg.stage in TRAIN_STAGES
    assert cfg.stage in path.stem
    for name in ("ppo", "grpo", "curriculum", "rm"):
        if name in cfg.sections:
            assert cfg.stage in (name, "r3"), (cfg.stage, name)
    if cfg.stage == "dpo":
        check_reference(cfg)
        check_loss_options(cfg.dpo.loss_type, cfg.dpo.beta, cfg.dpo.label_smoothing)
