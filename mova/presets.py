"""Named model presets: ``tiny`` builds every expert family and a small Llama in seconds on a CPU; ``smol-vlm``
puts the real pretrained SmolLM2-135M-Instruct in the LLM's place; ``smol`` is SmolLM2 with no experts (text
trainers can also load the LM itself by name: ``init_from=smollm2-135m-instruct``); ``bench`` has the 7B recipe's
expert towers and position schemes before a 1.1B Llama, all from configs with random weights, so speed and memory
can be measured at realistic shapes with nothing downloaded (``benchmarks/bench_shape.py``, docs/bench.md)."""

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


#: ``bench``'s LLM: TinyLlama-1.1B's shape (22 layers, width 2048, grouped-query attention with 4 KV heads for
#: 32 query heads, a 32K vocabulary, untied head), given the 7B recipe's 4096-position context.
BENCH_LLM: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
#: ``bench``: train/configs/model/mova-7b.yaml's CLIP ViT-L/14-336 (penultimate layer, ``full`` positions) and SAM
#: ViT-B (1024 px, 64 x 64 grid, ``share_by_row``) before :data:`BENCH_LLM`, in bf16 with sdpa. Nothing names
#: weights, so every part is built from its config with random weights and nothing is downloaded. The CLIP tower
#: uses QuickGELU as the ``openai`` weights the recipe loads do. The tokenizer is the tiny preset's (its ids are a
#: subset of the 32K vocabulary; the embedding table and LM head keep their full size). LayoutLMv3 and the OCR
#: words are left out: the first is a 196-token expert beside the 4672 tokens of these two, the second needs
#: RapidOCR, which a stock GPU image lacks.
PRESETS["bench"] = {
    "experts": [
        {"family": "clip", "model": "ViT-L-14-336", "feature_layer": -2, "position_scheme": "full",
         "kwargs": {"quick_gelu": True}},
        {"family": "sam", "model": "vit_b", "position_scheme": "share_by_row"},
    ],
    "fusion": {"type": "mlp"},
    "llm": {"config": BENCH_LLM, "tokenizer": str(TINY_TOKENIZER)},
    "template": "vicuna_v1",
    "dtype": "bfloat16",
    "attn_implementation": "sdpa",
}
