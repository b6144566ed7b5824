"""Options of ``mova train dpo`` (the ``dpo:`` section of a stage recipe); which pairs to read is ``data:``'s.

``data.data_path`` is a SPA-VL source (the hub id ``sqrti/SPA-VL`` or a local folder with its parquet
layout, subset by ``data.spavl_config`` / ``split`` / ``class1..3`` / ``limit``) or a JSONL file of text
pairs ``{"prompt", "chosen", "rejected"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mova.config import bounded


def _loss_types() -> list[str]:
    from mova.trainers.dpo_loss import DPO_LOSSES

    return sorted(DPO_LOSSES)


@dataclass
class DpoConfig:
    """Preference optimisation of a Mova VLM or a plain causal LM."""

    beta: float = bounded(0.1, gt=0)
    #: sigmoid (DPO) | robust | hinge | ipo (mova.trainers.dpo_loss).
    loss_type: str = bounded("sigmoid", choices=_loss_types)
    #: sigmoid: conservative (cDPO) smoothing; robust: the assumed rate of flipped labels.
    label_smoothing: float = bounded(0.0, ge=0, lt=0.5)
    #: score responses by mean token log-prob instead of the sum (ipo always does).
    length_normalize: bool = False
    #: weight of an added negative log-likelihood of the chosen response, per token (RPO; TRL's rpo_alpha):
    #: keeps the chosen answers likely while their margin over the rejected ones grows. 0: plain DPO.
    rpo_alpha: float = bounded(0.0, ge=0)
    #: copy (a frozen copy of the start model) | adapters_off (LoRA base, no second copy) |
    #: precomputed (reference log-probs computed in one pass before training).
    reference: Literal["copy", "adapters_off", "precomputed"] = "copy"
    #: shared (prompt and image encoded once per pair, responses packed as a tree) | padded.
    pair_encoding: Literal["shared", "padded"] = "shared"
    #: longest packed row in tokens for pair_encoding=shared (a longer pair gets a row of its own). Under sdpa
    #: attention runs pair by pair (mova.model.packing), so long rows cost no attention and save padding; the
    #: bound keeps the row's dense fallback mask (rows x length^2 booleans) small. Under eager attention the
    #: dense mask is what attention computes: short rows are faster there (`python benchmarks/dpo.py --only
    #: rows` measures the trade-off).
    max_tokens_per_row: int = bounded(4096, ge=16)
    #: train the fusion network too (the LLM always trains, fully or through LoRA).
    train_fusion: bool = False

    # --- instruction data mixed in (mova.trainers.instruction_mix) ---
    #: LLaVA-format records (JSON / JSONL, images relative to ``sft_image_folder`` or the file's folder) whose
    #: language-modelling loss is added to every step: keeps the instruction data's answers (short VQA
    #: answers, say) while the preference loss moves the model. null: plain DPO.
    sft_data: str | None = None
    #: weight of that loss (per-token mean NLL of a batch of ``sft_batch_size`` records).
    sft_weight: float = bounded(1.0, ge=0)
    sft_batch_size: int = bounded(8, ge=1)
    sft_image_folder: str | None = None
    #: a feature cache of the instruction images (``mova cache-features``), as the sft stage used.
    sft_feature_cache: str | None = None
    #: chat template of the instruction records (null: the policy's own).
    sft_template: str | None = None
