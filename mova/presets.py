"""Named model presets: ``tiny`` builds every expert family and a small Llama in seconds on a CPU; ``smol-vlm``
puts the real pretrained SmolLM2-135M-Instruct in the LLM's place; ``smol`` is SmolLM2 with no experts (text
trainers can also load the LM itself by name: ``init_from=smollm2-135m-instruct``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mova.errors import UnknownNameError

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_TOKENIZER = ASSETS / "tiny-tokenizer"

TINY_LLM: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    # A larger init than the 0.02 of big LLMs: at width 64 it got the demo's sft out of the answer-prior
    # plateau (constant answers per question type) much sooner.
    "initializer_range": 0.1,
    "tie_word_embeddings": False,
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "experts": [
            {"family": "clip", "tiny": True, "position_scheme": "full"},
            {"family": "sam", "tiny": True, "position_scheme": "share_by_row"},
            {"family": "layoutlmv3", "tiny": True, "position_scheme": "full"},
            {"family": "timm", "tiny": True, "position_scheme": "full"},
            # RapidOCR upsamples an image until its short side reaches det_limit_side_len (736 by default):
            # 160 keeps the demo's 128 px images near their size, many times faster with the same words
            # read (python benchmarks/ocr.py prints both).
            {"family": "ocr_text", "max_tokens": 16, "position_scheme": "full",
             "kwargs": {"det_limit_side_len": 160}},
        ],
        "fusion": {"type": "mlp"},
        "llm": {"config": TINY_LLM, "tokenizer": str(TINY_TOKENIZER)},
        "template": "vicuna_v1",
    },
}
#: SmolLM2-135M-Instruct (:mod:`mova.model.known_models`), fetched into Mova's cache on first use.
SMOL_LLM = "smollm2-135m-instruct"
#: ``smol-vlm``: the tiny preset's experts and fusion network in front of SmolLM2, in SmolLM2's chat template.
PRESETS["smol-vlm"] = {**copy.deepcopy(PRESETS["tiny"]), "llm": {"name_or_path": SMOL_LLM}, "template": "tokenizer"}
#: ``smol``: SmolLM2 alone, as a Mova model with no experts. Its logits are the plain LM's; it runs the VLM
#: stages on text-only LLaVA records, and a config can add experts to it later (``experts=[...]``).
PRESETS["smol"] = {"experts": [], "fusion": {"type": "mlp"}, "llm": {"name_or_path": SMOL_LLM}, "template": "tokenizer"}


def preset_dict(name: str) -> dict[str, Any]:
    """A deep copy of preset ``name`` as a plain dict (safe to override)."""
    if name not in PRESETS:
        raise UnknownNameError("preset", name, PRESETS)
    return copy.deepcopy(PRESETS[name])
