"""Config loading: every value is checked against its field's type, choices and range at load time, and the
error names the key, the bad value and what is allowed; method sections need no import side effect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mova.config import load_run_config, to_dict
from mova.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override,match", [
    ("train.max_steps=ten", r"train\.max_steps: expected an integer, got 'ten'"),
    ("train.learning_rate=fast", r"train\.learning_rate: expected a number, got 'fast'"),
    ("train.lr_scheduler_type=cosine_typo", r"train\.lr_scheduler_type: 'cosine_typo' is not one of .*cosine"),
    ("train.warmup_ratio=1.5", r"train\.warmup_ratio: must be < 1, got 1\.5"),
    ("train.per_device_train_batch_size=0", r"per_device_train_batch_size: must be >= 1, got 0"),
    ("train.bf16=yes please", r"train\.bf16: expected true or false"),
    ("dpo.reference=cpoy", r"dpo\.reference: 'cpoy' is not one of 'copy', 'adapters_off', 'precomputed'"),
    ("dpo.loss_type=sigmod", r"dpo\.loss_type: 'sigmod' is not one of .*sigmoid"),
    ("dpo.beta=-1", r"dpo\.beta: must be > 0"),
    ("model.dtype=float64", r"model\.dtype: 'float64' is not one of"),
    ("data.limit=0", r"data\.limit: must be >= 1"),
    ("train.report_to=3", r"train\.report_to: expected a list of a string, got 3"),
])
def test_bad_values_fail_at_load_naming_key_value_and_allowed(override, match):
    with pytest.raises(ConfigError, match=match):
        load_run_config(ROOT / "train/configs/tiny_dpo.yaml", [override])


def test_good_values_are_converted_where_harmless():
    cfg = load_run_config(ROOT / "train/configs/tiny_dpo.yaml",
                          ["train.learning_rate=5e-3", "train.report_to=wandb", "train.max_steps=20.0"])
    assert cfg.train.learning_rate == 5e-3 and cfg.train.report_to == ["wandb"] and cfg.train.max_steps == 20


def test_moved_and_unknown_keys_say_where_to_look(tmp_path):
    with pytest.raises(ConfigError, match=r"dpo\.limit is now data\.limit"):
        load_run_config(ROOT / "train/configs/tiny_dpo.yaml", ["dpo.limit=4"])
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['dpoo'\]"):
        load_run_config(ROOT / "train/configs/tiny_dpo.yaml", ["dpoo.beta=0.2"])


def test_sections_load_without_importing_their_trainers_first():
    """A fresh interpreter loads the PPO and R3 recipes (their ``ppo:`` / ``curriculum:`` sections) with no
    import of the trainer modules beforehand, and reading a recipe imports no trainer."""
    code = ("import sys; from mova.config import load_run_config; "
            "c = load_run_config('train/configs/tiny_ppo_text.yaml'); "
            "r = load_run_config('train/configs/tiny_r3.yaml'); "
            "print(type(c.ppo).__name__, type(r.curriculum).__name__, r.ppo.kl_coef, "
            "sorted(m for m in sys.modules if m.startswith('mova.trainers.') and not m.endswith('_config')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PpoConfig", "CurriculumConfig", "0.02", "[]"]


def test_a_reported_config_is_a_recipe_again(tmp_path):
    cfg = load_run_config(ROOT / "train/configs/tiny_r3.yaml", ["ppo.kl_coef=0.03"])
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    again = load_run_config(path)
    assert to_dict(again) == to_dict(cfg) and again.ppo.kl_coef == 0.03
