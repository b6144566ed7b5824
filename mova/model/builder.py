"""Build a ``MovaConfig``, a model and its processor from a :class:`~mova.config.ModelConfig`.

Two paths share this module: ``build_model(cfg)`` assembles a fresh VLM from its parts (the LLM from its
hub id or folder, each expert from its own library's checkpoint), and ``measure`` paths build encoders on
the ``meta`` device to learn their shapes with no weights and no memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase

from mova.config import ExpertConfig, ModelConfig, to_dict
from mova.errors import ConfigError
from mova.model.experts import build_expert
from mova.model.modeling_mova import MovaConfig, MovaForCausalLM
from mova.model.processing_mova import MovaProcessor
from mova.model.templates import IMAGE_PLACEHOLDER

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; known: {sorted(DTYPES)}")
    return DTYPES[name]


def text_config(cfg: ModelConfig) -> PreTrainedConfig:
    """The LLM's config: ``llm.name_or_path``'s ``config.json`` updated with ``llm.config``."""
    overrides = dict(cfg.llm.config)
    if cfg.llm.name_or_path:
        from mova.model.checkpoints import resolve_checkpoint

        base = AutoConfig.from_pretrained(resolve_checkpoint(cfg.llm.name_or_path, "llm.name_or_path"))
        for k, v in overrides.items():
            if k != "model_type":
                setattr(base, k, v)
        return base
    if "model_type" not in overrides:
        raise ConfigError("llm: give name_or_path (hub id or folder) or an inline config with a model_type")
    model_type = overrides.pop("model_type")
    return AutoConfig.for_model(model_type, **overrides)


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with an ``<image>`` special token and a pad token."""
    from mova.model.known_models import resolve_known

    source = resolve_known(cfg.llm.tokenizer or cfg.llm.name_or_path)
    if not source:
        raise ConfigError("llm: no tokenizer (set llm.tokenizer or llm.name_or_path)")
    tok = AutoTokenizer.from_pretrained(source)
    if IMAGE_PLACEHOLDER not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def measure_expert(cfg: ExpertConfig, llm_hidden: int) -> dict[str, Any]:
    """The expert's config plus its shapes, read off an instance built on the meta device."""
    with torch.device("meta"):
        expert = build_expert(cfg)
    hidden = expert.hidden_size or llm_hidden
    return {**to_dict(cfg), "grid": list(expert.grid), "num_prefix_tokens": expert.num_prefix_tokens,
            "hidden_size": hidden, "input_kind": expert.input_kind}


def build_mova_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> MovaConfig:
    tcfg = text_config(cfg)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) if tokenizer is not None else 0
    if tokenizer is not None and len(tokenizer) > tcfg.vocab_size:
        tcfg.vocab_size = len(tokenizer)
    if tokenizer is not None:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(tcfg, key, getattr(tokenizer, key))
    experts = [measure_expert(e, tcfg.hidden_size) for e in cfg.experts]
    mcfg = MovaConfig(text_config=tcfg, experts=experts, fusion=to_dict(cfg.fusion), image_token_id=image_token_id,
                      template=cfg.template)
    mcfg.text_config._attn_implementation = cfg.attn_implementation
    mcfg._attn_implementation = cfg.attn_implementation  # the experts that are transformers models follow it
    return mcfg


def build_model(cfg: ModelConfig, load_weights: bool = True) -> tuple[MovaForCausalLM, MovaProcessor]:
    """A fresh VLM from parts; with ``load_weights`` the LLM and experts load their checkpoints."""
    tokenizer = load_tokenizer(cfg)
    mcfg = build_mova_config(cfg, tokenizer)
    llm = None
    if load_weights and cfg.llm.name_or_path:
        from mova.model.checkpoints import resolve_checkpoint

        llm = AutoModelForCausalLM.from_pretrained(resolve_checkpoint(cfg.llm.name_or_path, "llm.name_or_path"),
                                                   dtype=torch_dtype(cfg.dtype),
                                                   attn_implementation=cfg.attn_implementation)
        if llm.get_input_embeddings().num_embeddings < len(tokenizer):
            llm.resize_token_embeddings(len(tokenizer))
    model = MovaForCausalLM(mcfg, language_model=llm)
    if load_weights:
        for expert in model.experts.values():
            if expert.cfg.pretrained:
                expert.load_pretrained()
    model.to(torch_dtype(cfg.dtype))
    return model, MovaProcessor(tokenizer, mcfg)


def load_pretrained(path: str | Path, **kwargs: Any) -> tuple[MovaForCausalLM, MovaProcessor]:
    """Load a saved Mova model folder and its processor."""
    from mova.model.checkpoints import resolve_checkpoint

    path = resolve_checkpoint(path, kwargs.pop("what", "model"))
    model = MovaForCausalLM.from_pretrained(path, **kwargs)
    return model, MovaProcessor.from_pretrained(path, config=model.config)
