"""The language-modelling loss with the LM head run only where a label is predicted.

Why: a supervised batch's labels cover the answers only. Everything else -- a Mova prompt's visual tokens
(hundreds per image), the question, padding -- still went through the LM head when the model computed the
loss itself (``forward(labels=...)``), which makes ``[batch, length, vocab]`` logits, upcasts them to
float32 for the cross-entropy, and keeps the log-softmax of every position for the backward pass. With a
49k-token vocabulary that is the largest activation of a small model's step. Here the model gets
``logits_to_keep`` = the positions whose next token is a label (in any row of the batch), and the
cross-entropy runs over those logits in chunks whose float32 log-softmax is recomputed in the backward
pass instead of kept (:func:`chunked_cross_entropy`). The loss is the same sum over label tokens divided
by the same count as transformers' ``ForCausalLMLoss`` (``num_items_in_batch`` when the trainer gives it,
else the batch's label tokens), so values and gradients equal the full-logits path up to float rounding.

``forward(labels=...)`` itself is unchanged (it returns the full logits, as Hugging Face models do); the
trainers call :func:`label_loss` instead, and :func:`token_logprobs` serves the preference methods.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mova.errors import ConfigError

IGNORE_INDEX = -100
#: tokens per cross-entropy chunk: ``CHUNK x vocab`` float32 values live at a time (49k vocab: 200 MB).
CHUNK = 1024


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions ``p`` whose next token is a label (``labels[:, p + 1] != -100``) in any row, ascending."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().flatten()


def _ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def _neg_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def _chunks(fn: Any, logits: torch.Tensor, targets: torch.Tensor, chunk: int) -> list[torch.Tensor]:
    grad = logits.requires_grad and torch.is_grad_enabled()
    out = []
    for s in range(0, logits.shape[0], chunk):
        x, t = logits[s:s + chunk], targets[s:s + chunk]
        # checkpointed: the backward recomputes this chunk's float32 log-softmax instead of keeping it
        out.append(checkpoint(fn, x, t, use_reentrant=False) if grad else fn(x, t))
    return out


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Summed cross-entropy (float32) of ``logits [N, V]`` against ``targets [N]`` (``-100`` ignored)."""
    parts = _chunks(_ce_sum, logits, targets, chunk)
    return torch.stack(parts).sum() if parts else logits.new_zeros((), dtype=torch.float32)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """``log_softmax(logits)[i, targets[i]]`` for each row (float32), without keeping a full log-softmax."""
    parts = _chunks(_neg_ce, logits, targets, chunk)
    return torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32)


def _core(model: torch.nn.Module) -> torch.nn.Module:
    from mova.model.policy import policy_kind

    return policy_kind(model).core(model)


def label_loss(model: torch.nn.Module, inputs: dict[str, Any],
               num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """The causal-LM loss of ``inputs`` (with ``labels``), the LM head run at label positions only.

    Equal to ``model(**inputs).loss`` (transformers' ``ForCausalLMLoss``: shifted labels, ``-100`` ignored,
    summed over label tokens and divided by ``num_items_in_batch`` or, without it, by their count); a Mova
    model's image-token slots never count, as in its forward. ``model`` is any causal LM whose forward takes
    a tensor ``logits_to_keep`` (transformers' own models, Mova's), possibly wrapped (DDP, peft).
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    core = _core(model)
    ids = inputs.get("input_ids")
    if ids is not None and hasattr(core, "image_token_mask"):
        labels = labels.masked_fill(core.image_token_mask(ids), IGNORE_INDEX)
    keep = label_positions(labels)
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    logits = out.logits
    if logits.shape[1] != keep.numel():
        raise ConfigError("the model ignored logits_to_keep; this loss needs a causal LM that supports it")
    targets = labels[:, keep + 1].to(logits.device)
    total = chunked_cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    if num_items_in_batch is None:
        return total / (targets != IGNORE_INDEX).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


__all__ = ["CHUNK", "chunked_cross_entropy", "label_loss", "label_positions", "token_logprobs"]
