"""Optimizer parameter groups with a learning rate and weight decay per model part (fusion, LLM, experts).

LLaVA trains its projector at a different rate than the LLM (``mm_projector_lr``); Mova generalises that to
every part its policy interface names (:meth:`~mova.model.policy.PolicyKind.parts`): a recipe sets
``train.fusion_learning_rate``, ``train.llm_learning_rate``, ``train.experts_learning_rate`` and the
matching ``*_weight_decay``; unset ones fall back to ``train.learning_rate`` / ``train.weight_decay``.
Parts are found through the policy interface, never by matching parameter names, so a plain LM's layer
called ``fusion`` is not mistaken for a Mova fusion network.

As in transformers' Trainer, biases and normalisation weights never decay. The same groups serve
transformers' Trainer (:class:`~mova.trainers.base.MovaTrainer`) and the RL engines
(:class:`~mova.rl.engine.TrainEngine`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mova.config import PARTS
from mova.model.policy import policy_kind


def part_options(train: Any) -> dict[str, dict[str, float]]:
    """``{part: {"lr": ..., "weight_decay": ...}}`` for the parts whose rate or decay the recipe sets."""
    out: dict[str, dict[str, float]] = {}
    for part in PARTS:
        lr, wd = getattr(train, f"{part}_learning_rate", None), getattr(train, f"{part}_weight_decay", None)
        if lr is not None or wd is not None:
            out[part] = {"lr": train.learning_rate if lr is None else lr,
                         "weight_decay": train.weight_decay if wd is None else wd}
    return out


def has_part_options(train: Any) -> bool:
    """Whether the recipe gives any part a learning rate or weight decay of its own."""
    return bool(part_options(train))


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that take no weight decay: biases and the weights of normalisation layers
    (transformers' rule: layer-norm classes, and names of the usual norm modules)."""
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    from transformers.trainer_pt_utils import get_parameter_names

    decay = set(get_parameter_names(model, ALL_LAYERNORM_LAYERS,
                                    ["bias", "layernorm", "rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]))
    return {n for n, _ in model.named_parameters() if n not in decay}


def parameter_groups(model: nn.Module, learning_rate: float, weight_decay: float,
                     options: dict[str, dict[str, float]] | None = None,
                     no_decay: set[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The trainable parameters of ``model`` as optimizer groups: one per (part, decays or not), parts from
    ``options`` (:func:`part_options`) at their own rate and decay, everything else at ``learning_rate`` /
    ``weight_decay``. Returns the groups (empty ones left out) and each group's name (``fusion``,
    ``fusion/no_decay``, ``rest`` ...), for logs."""
    options = options or {}
    no_decay = no_decay_names(model) if no_decay is None else no_decay
    owner: dict[int, str] = {}
    for part, module in policy_kind(model).parts(model).items():
        if part in options:
            for p in module.parameters():
                owner.setdefault(id(p), part)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        buckets.setdefault((owner.get(id(p), "rest"), name not in no_decay), []).append(p)
    groups, names = [], []
    for (part, decays), params in sorted(buckets.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        opts = options.get(part, {"lr": learning_rate, "weight_decay": weight_decay})
        groups.append({"params": params, "lr": opts["lr"], "weight_decay": opts["weight_decay"] if decays else 0.0})
        names.append(part if decays else f"{part}/no_decay")
    return groups, names
