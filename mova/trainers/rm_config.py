"""Options of ``mova train rm`` (the ``rm:`` section of a stage recipe); which pairs to read is ``data:``'s.

Pairs come from ``data.data_path`` (SPA-VL or a JSONL of text pairs) and the held-out pairs scored after
training from ``data.eval_data_path`` (its SPA-VL subset: ``data.eval_spavl_config`` / ``eval_split`` /
``eval_limit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mova.config import bounded


def _losses() -> list[str]:
    from mova.trainers.rm_loss import RM_LOSSES

    return sorted(RM_LOSSES)


@dataclass
class RmConfig:
    """Reward-model options: the loss, noisy-preference handling, auxiliary losses, MetaRM, pair layout."""

    #: bt | label_smoothing | soft_negative (mova.trainers.rm_loss).
    loss: str = bounded("bt", choices=_losses)
    #: a in -(1-a) log p - a log(1-p): for label_smoothing (every pair) and soft_negative (negative strength).
    label_smoothing: float = bounded(0.0, ge=0, lt=0.5)
    #: adaptive margin: the loss sees r_c - r_r - margin_scale * strength_mean. 0: no margin.
    margin_scale: float = 0.0
    #: swap chosen and rejected of this fraction of the pairs, the ones of lowest strength, before training.
    flip_fraction: float = bounded(0.0, ge=0, lt=1)
    #: a JSONL written by `mova rm-strength` (strength_mean / strength_std per pair); without it the pairs'
    #: own strength_mean column (text JSONL) is used when present.
    strength_path: str | None = None
    #: weight of the mean per-token NLL of the chosen responses (keeps the backbone a language model). 0: off.
    lm_loss_weight: float = bounded(0.0, ge=0)
    #: none | simcse | swav: a contrastive loss on reward-model features, with this weight.
    contrastive: Literal["none", "simcse", "swav"] = "none"
    contrastive_weight: float = bounded(0.1, ge=0)
    #: difference (h_chosen - h_rejected per pair) | response (every response's last-token feature).
    contrastive_features: Literal["difference", "response"] = "difference"
    #: the two views are two dropout masks on the features (one backbone pass).
    contrastive_dropout: float = bounded(0.1, ge=0, lt=1)
    contrastive_temperature: float = bounded(0.1, gt=0)
    swav_prototypes: int = bounded(16, ge=2)
    swav_epsilon: float = bounded(0.05, gt=0)
    swav_iterations: int = bounded(3, ge=1)
    #: MetaRM: a JSONL of {"prompt", "responses": [k policy samples], "image"?}; the ascent step runs every
    #: ``metarm_every`` steps on ``metarm_batch_size`` prompts with step size ``metarm_lr``.
    metarm_path: str | None = None
    metarm_lr: float = bounded(1e-3, ge=0)
    metarm_every: int = bounded(1, ge=1)
    metarm_batch_size: int = bounded(4, ge=1)
    #: shared (prompt and image once per pair, a tree) | padded ([prompt+chosen; prompt+rejected]).
    pair_encoding: Literal["shared", "padded"] = "shared"
    max_tokens_per_row: int = bounded(512, ge=16)
    #: Mova: train the fusion network too (the LLM always trains, fully or through LoRA; the head always).
    train_fusion: bool = False
    #: pairs per batch when scoring the held-out pairs (``data.eval_data_path``).
    eval_batch_size: int = bounded(16, ge=1)
