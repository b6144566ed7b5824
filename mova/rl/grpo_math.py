"""The arithmetic of critic-free RL (GRPO, RLOO): group baselines and the clipped surrogate with a KL term.

A rollout holds ``G`` responses to each prompt, consecutive rows of one group: rows ``g*G .. g*G+G-1``
answer prompt ``g``. The group replaces PPO's critic as the baseline: a response's advantage is its score
measured against the other responses to the same prompt, and every token of the response gets it.

Estimators (:data:`ADVANTAGE_ESTIMATORS`, picked by name from ``grpo.advantage``):

* ``grpo`` -- ``(r_i - mean(r)) / (std(r) + eps)`` over the group (DeepSeekMath's GRPO; ``std`` the sample
  standard deviation); ``scale_by_std=False`` keeps ``r_i - mean(r)`` (Dr. GRPO: no per-prompt
  difficulty weighting);
* ``rloo`` -- ``r_i - mean_{j != i} r_j``, the leave-one-out baseline (REINFORCE Leave-One-Out), unbiased
  because a response's own score is not in its baseline.

The loss (:func:`grpo_loss`) is PPO's clipped surrogate on those advantages plus ``beta`` times a
token-level KL estimate between the current policy and the reference (``k1`` or ``k3`` of
:mod:`mova.rl.ppo_math`), averaged per token over the batch (``token_mean``) or per response first and then
over responses (``sequence_mean``, GRPO's paper). Like :mod:`mova.rl.ppo_math`, everything here is a plain
tensor function, so tests can check it against a loop written from the formulas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mova.registry import Registry
from mova.rl import ppo_math as pm

#: ``fn(scores [num_prompts, G], **options) -> advantages [num_prompts, G]``.
AdvantageEstimator = Callable[..., torch.Tensor]
ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")
register_advantage = ADVANTAGE_ESTIMATORS.register


@register_advantage("grpo")
def grpo_advantages(scores: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4,
                    **_: Any) -> torch.Tensor:
    """Group-normalised scores: ``r - mean`` over each row, divided by the row's sample std (+ ``eps``)
    when ``scale_by_std``. A group whose responses all score alike gets zeros (no signal, no noise)."""
    centred = scores - scores.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (scores.std(dim=1, keepdim=True, unbiased=True) + eps)


@register_advantage("rloo")
def rloo_advantages(scores: torch.Tensor, **_: Any) -> torch.Tensor:
    """Leave-one-out: each score minus the mean of the other ``G - 1`` scores of its group."""
    G = scores.shape[1]
    others = (scores.sum(dim=1, keepdim=True) - scores) / (G - 1)
    return scores - others


def group_advantages(name: str, scores: torch.Tensor, group_size: int, **options: Any) -> torch.Tensor:
    """Per-response advantages ``[N]`` of flat scores ``[N]`` in consecutive groups of ``group_size``."""
    if group_size < 2:
        raise ValueError(f"a group baseline needs at least 2 responses per prompt, got {group_size}")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    grouped = scores.float().view(-1, group_size)
    return ADVANTAGE_ESTIMATORS[name](grouped, **options).reshape(-1)


@dataclass
class GrpoLoss:
    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    clipfrac: torch.Tensor
    approxkl: torch.Tensor
    ratio_mean: torch.Tensor


def aggregate(losses: torch.Tensor, mask: torch.Tensor, how: str, global_stats: bool = False) -> torch.Tensor:
    """``token_mean``: mean over every response token of the batch; ``sequence_mean``: each response's mean
    over its tokens, then the mean over responses. ``global_stats``: over all ranks (gradient through this
    rank's rows, as in :func:`mova.rl.ppo_math.masked_mean`)."""
    mask = mask.to(losses.dtype)
    if how == "token_mean":
        return pm.masked_mean(losses, mask, global_stats)
    if how == "sequence_mean":
        per_row = (losses * mask).sum(1) / mask.sum(1).clamp(min=1)
        return pm.masked_mean(per_row, torch.ones_like(per_row), global_stats)
    raise ValueError(f"unknown loss aggregation {how!r}; known: token_mean, sequence_mean")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, cliprange: float | None = 0.2,
              kl_coef: float = 0.0, kl_estimator: str = "k3", aggregation: str = "token_mean",
              global_stats: bool = False) -> GrpoLoss:
    """``aggregate(max(-A r, -A clip(r, 1-c, 1+c)) + kl_coef * KL_est(pi, ref))`` with ``r = exp(logp -
    old_logp)``, ``A`` one value per response (``[B]``) broadcast over its tokens, and the KL estimate taken
    per token on the current log-probs (``ref_logp`` None or ``kl_coef`` 0: no KL term)."""
    adv = advantages.to(logp.dtype).unsqueeze(1).expand_as(logp)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    if cliprange is None:
        surrogate = unclipped
        active = torch.zeros_like(unclipped)
    else:
        clipped = -adv * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
        surrogate = torch.maximum(unclipped, clipped)
        active = (clipped > unclipped).to(logp.dtype)
    kl = pm.token_kl(logp, ref_logp, kl_estimator) if ref_logp is not None else torch.zeros_like(logp)
    per_token = surrogate + kl_coef * kl if kl_coef else surrogate
    with torch.no_grad():
        stats = (aggregate(surrogate, mask, aggregation, global_stats), aggregate(kl, mask, aggregation, global_stats),
                 pm.masked_mean(active, mask, global_stats), pm.masked_mean(0.5 * log_ratio ** 2, mask, global_stats),
                 pm.masked_mean(ratio, mask, global_stats))
    return GrpoLoss(aggregate(per_token, mask, aggregation, global_stats), *stats)


__all__ = ["ADVANTAGE_ESTIMATORS", "GrpoLoss", "aggregate", "group_advantages", "grpo_advantages", "grpo_loss",
           "register_advantage", "rloo_advantages"]
