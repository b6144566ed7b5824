"""`mova model-info`: token and position budget from configurations alone."""

from __future__ import annotations

from pathlib import Path

from mova.cli import main
from mova.config import load_model_config
from mova.model.info import model_info

ROOT = Path(__file__).resolve().parents[1]
SEVEN_B = ROOT / "train" / "configs" / "model" / "mova-7b.yaml"


def test_tiny_preset_table(capsys):
    assert main(["model-info", "tiny"]) == 0
    out = capsys.readouterr().out
    for family in ("clip", "sam", "layoutlmv3", "timm", "ocr_text"):
        assert family in out
    assert "positions per image" in out


def test_seven_b_budget_from_configs_alone():
    info = model_info(load_model_config(SEVEN_B))
    rows = {r.name: r for r in info["rows"]}
    assert (rows["clip"].tokens, rows["clip"].positions, rows["clip"].hidden) == ("576", "576", 1024)
    assert (rows["sam"].tokens, rows["sam"].positions, rows["sam"].hidden) == ("4096", "64", 256)
    assert (rows["layoutlmv3"].tokens, rows["layoutlmv3"].hidden) == ("196", 768)
    assert info["context"] == 4096 and info["llm_hidden"] == 4096
    assert 6.7e9 < info["llm_params"] < 6.8e9  # Llama-2-7B shape
    assert info["positions_min"] == 576 + 64 + 196
    assert info["tokens_min"] == 576 + 4096 + 196
    assert 300e6 < rows["clip"].frozen_params < 310e6  # ViT-L/14 vision tower
    assert rows["sam"].frozen_params > 85e6


def test_overrides_change_the_budget(capsys):
    assert main(["model-info", str(SEVEN_B), "experts.1.position_scheme=share_all", "experts.0.pool=2"]) == 0
    out = capsys.readouterr().out
    sam_line = next(line for line in out.splitlines() if line.startswith("sam"))
    assert "share_all" in sam_line and sam_line.split()[5] == "1"
    clip_line = next(line for line in out.splitlines() if line.startswith("clip"))
    assert clip_line.split()[3] == "144"  # 24x24 pooled 2x2 -> 12x12


def test_bad_config_reports_error(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experts:\n  - family: clip\n    colour: red\n")
    assert main(["model-info", str(bad)]) == 2
    assert "colour" in capsys.readouterr().err
