"""Load a Mova checkpoint for release, merging LoRA adapters that training left unmerged.

A stage run with ``train.lora.r > 0`` and ``train.lora.merge: false`` saves the LLM wrapped by peft: its
weights carry ``base_model.model.`` prefixes, ``base_layer`` weights and ``lora_A`` / ``lora_B`` tensors,
which a plain ``MovaForCausalLM`` cannot load. Merging rebuilds that wrapping with the run's LoRA settings
(rank and target modules are read off the tensors, ``alpha`` from the run's ``summary.json`` or the
caller), loads the weights strictly, and folds the adapters into the base weights with peft.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from mova.export.errors import ExportError

LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_A(\.[^.]+)?\.weight$")
PEFT_PREFIX = "base_model.model."


def weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{path} holds no *.safetensors weights; export takes a folder written by a Mova "
                          "training stage (its final/ or a checkpoint-N/ folder)")
    return files


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        state.update(load_file(str(f)))
    return state


def lora_modules(keys: list[str]) -> dict[str, str]:
    """LLM module name (peft prefixes removed) -> its ``lora_A`` key, for every adapted module."""
    out = {}
    for k in keys:
        m = LORA_KEY.match(k)
        if m and m.group("module").startswith("language_model."):
            name = m.group("module")[len("language_model."):]
            out[name.removeprefix(PEFT_PREFIX)] = k
    return out


def has_unmerged_lora(path: str | Path) -> bool:
    from safetensors import safe_open

    for f in weight_files(Path(path)):
        with safe_open(str(f), "pt") as handle:
            if any(LORA_KEY.match(k) for k in handle.keys()):
                return True
    return False


def run_lora_settings(path: Path) -> dict[str, Any] | None:
    """``train.lora`` of the run that wrote ``path`` (its ``summary.json`` beside or above it)."""
    for folder in (path, path.parent, path.parent.parent):
        summary = folder / "summary.json"
        if summary.is_file():
            try:
                lora = json.loads(summary.read_text())["config"]["train"]["lora"]
            except (KeyError, TypeError, json.JSONDecodeError):
                continue
            return lora
    return None


def load_merged(path: str | Path, lora_alpha: float | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, processor, info)`` with the checkpoint's LoRA adapters merged into the LLM.

    ``info`` records rank, alpha and the merged modules (the model card lists them).
    """
    from peft import LoraConfig, get_peft_model

    from mova.model.modeling_mova import MovaConfig, MovaForCausalLM
    from mova.model.processing_mova import MovaProcessor

    path = Path(path)
    state = read_state_dict(path)
    adapted = lora_modules(list(state))
    if not adapted:
        raise ExportError(f"--merge-lora: {path} holds no LoRA adapters (no lora_A weights)")
    ranks = {state[k].shape[0] for k in adapted.values()}
    if len(ranks) != 1:
        raise ExportError(f"{path}: LoRA adapters of different ranks {sorted(ranks)}; merge them with peft by hand")
    rank = ranks.pop()
    run = run_lora_settings(path) or {}
    alpha = lora_alpha if lora_alpha is not None else run.get("alpha")
    if alpha is None:
        raise ExportError(f"{path}: no summary.json with train.lora.alpha beside the checkpoint; pass --lora-alpha "
                          "(the alpha the adapters were trained with)")
    targets = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    config = MovaConfig.from_pretrained(path)
    model = MovaForCausalLM(config)
    model.language_model = get_peft_model(model.language_model, LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output embeddings may be absent from the file; anything else is a mismatch.
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ExportError(f"{path}: weights do not match a LoRA-wrapped Mova model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); was it trained with different target modules?")
    model.language_model = model.language_model.merge_and_unload()
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    model.to(dtype).eval()
    processor = MovaProcessor.from_pretrained(path, config=model.config)
    return model, processor, {"rank": rank, "alpha": alpha, "target_modules": targets, "modules": len(adapted)}
