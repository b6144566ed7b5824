"""Every shipped YAML recipe parses into a RunConfig (typos in keys fail here, not on a cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mova.config import load_run_config
from mova.trainers.dpo import check_reference
from mova.trainers.dpo_loss import check_loss_options

RECIPES = sorted((Path(__file__).resolve().parents[1] / "train" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_loads(path):
    cfg = load_run_config(path)
    assert cfg.stage in ("align", "sft", "dpo")
    assert cfg.stage in path.stem
    if cfg.stage == "dpo":
        check_reference(cfg)
        check_loss_options(cfg.dpo.loss_type, cfg.dpo.beta, cfg.dpo.label_smoothing)
