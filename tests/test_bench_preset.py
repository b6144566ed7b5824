"""The ``bench`` preset: the 7B recipe's expert towers and position schemes before a ~1B Llama, from configs only.

The references are independent of the preset's own code: the LLM's parameter count from Llama's formula over the
config's numbers, and the experts against the ones ``train/configs/model/mova-7b.yaml`` builds (same towers,
same schemes, same parameter counts).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mova.cli import main
from mova.config import load_model_config
from mova.model.experts import build_expert
from mova.model.info import human, model_info

ROOT = Path(__file__).resolve().parents[1]
SEVEN_B = ROOT / "train" / "configs" / "model" / "mova-7b.yaml"


def llama_params(c: dict) -> int:
    """Parameters of a Llama with config ``c`` (untied head, grouped-query attention, RMSNorm without bias)."""
    h, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = c["num_key_value_heads"] * (h // c["num_attention_heads"])
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    return vocab * h * (1 if c.get("tie_word_embeddings") else 2) + layers * per_layer + h


def test_bench_llm_is_a_one_billion_gqa_llama():
    cfg = load_model_config("bench")
    c = cfg.llm.config
    assert cfg.llm.name_or_path is None  # built from the config: nothing to download
    assert c["model_type"] == "llama" and c["hidden_size"] == 2048 and c["vocab_size"] == 32000
    assert 16 <= c["num_hidden_layers"] <= 22
    assert c["num_key_value_heads"] < c["num_attention_heads"]  # grouped-query attention
    expected = llama_params(c)
    assert 0.7e9 <= expected <= 1.3e9
    info = model_info(cfg)
    assert info["llm_params"] == expected  # the model model-info builds has exactly that shape
    assert info["context"] == 4096 and cfg.dtype == "bfloat16"


def test_bench_experts_are_the_seven_b_recipes():
    bench, seven_b = load_model_config("bench"), load_model_config(SEVEN_B)
    assert not any(e.pretrained or e.tiny for e in bench.experts)  # random weights, real shapes
    ours = {r.name: r for r in model_info(bench)["rows"]}
    theirs = {r.name: r for r in model_info(seven_b)["rows"]}
    assert set(ours) == {"clip", "sam"}
    for name in ours:
        a, b = ours[name], theirs[name]
        assert (a.grid, a.tokens, a.scheme, a.positions, a.hidden, a.frozen_params) == \
            (b.grid, b.tokens, b.scheme, b.positions, b.hidden, b.frozen_params), name
    assert (ours["clip"].grid, ours["clip"].scheme, ours["sam"].grid, ours["sam"].scheme) == \
        ("24x24", "full", "64x64", "share_by_row")
    # the CLIP tower computes what the recipe's pretrained one does: QuickGELU (the openai tag's), penultimate layer
    with torch.device("meta"):
        clip_ours = build_expert(next(e for e in bench.experts if e.family == "clip"))
        clip_theirs = build_expert(next(e for e in seven_b.experts if e.family == "clip"))
    assert clip_ours.quick_gelu and clip_ours.quick_gelu == clip_theirs.quick_gelu
    assert clip_ours.vision_cfg == clip_theirs.vision_cfg and clip_ours.layer_index == clip_theirs.layer_index == 22


def test_model_info_bench_prints_the_counts(capsys):
    assert main(["model-info", "bench"]) == 0
    out = capsys.readouterr().out
    llm_line = next(line for line in out.splitlines() if line.startswith("LLM (llama, width 2048)"))
    assert llm_line.endswith(human(llama_params(load_model_config("bench").llm.config)))
    assert "clip" in out and "sam" in out and "share_by_row" in out
