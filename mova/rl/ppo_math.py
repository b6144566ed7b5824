"""The arithmetic of PPO for language models, as plain tensor functions.

Every function works on ``[batch, response_length]`` tensors with a ``mask`` that is 1 on response tokens
(the EOS included) and 0 on the padding after a response ends. Keeping them free of models and trainers
lets the tests check each one against a plain loop, and lets PPO, R3 and any later RL method share them.

Statistics that PPO takes over a batch (whitening, running moments, the means behind the losses) take a
``group``: with ``torch.distributed`` initialised they are computed over the tokens of *all* ranks, so a
2-process run sees the same numbers as a 1-process run of the same global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (``x`` itself when not distributed); differentiable only locally."""
    if not _distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum()


def masked_mean(x: torch.Tensor, mask: torch.Tensor, global_stats: bool = False) -> torch.Tensor:
    """Mean of ``x`` over the tokens where ``mask`` is 1 (over all ranks' tokens with ``global_stats``)."""
    mask = mask.to(x.dtype)
    total, count = masked_sum(x, mask), mask.sum()
    if global_stats and _distributed():
        # The value is the mean over every rank's tokens; the gradient flows through this rank's tokens
        # only (``local_sum / global_count``): with gradients averaged over ranks and the loss scaled by
        # the world size, the update equals a 1-process step on the global batch.
        count = all_sum(count).clamp(min=1)
        return (all_sum(total) + (total - total.detach())) / count
    return total / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, global_stats: bool = False) -> torch.Tensor:
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask, global_stats)
    sq = masked_sum((x - mean) ** 2, mask)
    count = mask.sum()
    if global_stats:
        sq, count = all_sum(sq), all_sum(count)
    if unbiased:
        if count <= 1:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        return sq / (count - 1)
    return sq / count.clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, global_stats: bool = False,
                  eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over the masked tokens (mean kept when ``shift_mean`` is False); masked-out
    positions come back as 0."""
    mean = masked_mean(x, mask, global_stats)
    var = masked_var(x, mask, unbiased=True, global_stats=global_stats)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


# --- KL estimators ------------------------------------------------------------------------------------
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``log pi(a) - log ref(a)``: unbiased for KL(pi || ref) on samples of pi, but negative per token."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``0.5 (log pi - log ref)^2``: biased, low variance, never negative."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``(r - 1) - log r`` with ``r = ref(a) / pi(a)``: unbiased for KL(pi || ref), never negative."""
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3,
}


def token_kl(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; known: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](logp, ref_logp)


# --- rewards --------------------------------------------------------------------------------------------
def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * kl`` on every response token, plus the sequence score on its last
    token (the EOS, or the last generated token of a cut response)."""
    rewards = -kl_coef * kl * mask
    last = last_token_index(mask)
    rows = torch.arange(mask.shape[0], device=mask.device)
    has_tokens = mask.sum(1) > 0
    rewards[rows[has_tokens], last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of ``mask`` (left or right padding alike; 0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values


@dataclass
class RunningMoments:
    """Mean and standard deviation of every value seen so far, updated a batch at a time (Chan et al.'s
    parallel combination of counts, means and sums of squared deviations: exact, not an EMA)."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 1e-24

    def update(self, x: torch.Tensor, global_stats: bool = True) -> tuple[float, float]:
        """Fold the values of ``x`` (over all ranks with ``global_stats``) in; returns the batch's mean and
        (population) standard deviation."""
        x = x.detach().double().flatten()
        count = torch.tensor(float(x.numel()), dtype=torch.float64)
        total = x.sum()
        if global_stats:
            count, total = all_sum(count), all_sum(total)
        batch_mean = total / count.clamp(min=1)
        sq = ((x - batch_mean) ** 2).sum()
        if global_stats:
            sq = all_sum(sq)
        n_b, m_b, m2_b = float(count), float(batch_mean), float(sq)
        n_a, m_a, m2_a = self.count, self.mean, self.var * self.count
        n = n_a + n_b
        delta = m_b - m_a
        self.mean = m_a + delta * n_b / n
        self.var = (m2_a + m2_b + delta ** 2 * n_a * n_b / n) / n
        self.count = n
        return m_b, math.sqrt(m2_b / max(n_b, 1.0))

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


def normalize_scores(scores: torch.Tensor, moments: RunningMoments, mode: str, clip: float | None,
                     eps: float = 1e-8) -> torch.Tensor:
    """Sequence scores before they enter the rewards.

    ``mode``: ``none``; ``scale`` divides by the running std (reward scaling); ``normalize`` subtracts the
    running mean and divides by the running std (PPO-max's score normalisation). The running moments are
    updated with this batch first. ``clip`` then bounds the result to ``[-clip, clip]``.
    """
    if mode not in ("none", "scale", "normalize"):
        raise ValueError(f"unknown score normalisation {mode!r}; known: none, scale, normalize")
    out = scores.float()
    if mode != "none":
        moments.update(out)
        if mode == "normalize":
            out = (out - moments.mean) / (moments.std + eps)
        else:
            out = out / (moments.std + eps)
    if clip is not None:
        out = out.clamp(-clip, clip)
    return out


# --- advantages -----------------------------------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response; returns ``(advantages, returns)``.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` zero after the last response token (the episode
    ends there), ``A_t = delta_t + gamma * lam * A_{t+1}``, returns ``A_t + V_t``. Padding gives 0.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    returns = (advantages + values) * mask
    return advantages, returns


def process_advantages(advantages: torch.Tensor, mask: torch.Tensor, whiten: bool, clip: float | None,
                       global_stats: bool = True) -> torch.Tensor:
    """Advantage normalisation (whitening over the batch's tokens) and clipping to ``[-clip, clip]``."""
    if whiten:
        advantages = masked_whiten(advantages, mask, global_stats=global_stats)
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    return advantages * mask.to(advantages.dtype)


# --- losses ----------------------------------------------------------------------------------------------
@dataclass
class PolicyLoss:
    loss: torch.Tensor
    clipfrac: torch.Tensor
    approxkl: torch.Tensor
    ratio_mean: torch.Tensor


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float | None = 0.2, global_stats: bool = False) -> PolicyLoss:
    """PPO's clipped surrogate, as a loss: ``mean(max(-A r, -A clip(r, 1-c, 1+c)))`` with
    ``r = exp(logp - old_logp)``; ``cliprange=None`` gives the unclipped policy gradient. ``approxkl`` is
    ``0.5 * mean((logp - old_logp)^2)``; ``clipfrac`` the share of tokens where the clip was active."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    if cliprange is None:
        losses = unclipped
        clipped_active = torch.zeros_like(unclipped)
    else:
        clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
        losses = torch.maximum(unclipped, clipped)
        clipped_active = (clipped > unclipped).to(logp.dtype)
    with torch.no_grad():
        stats = (masked_mean(clipped_active, mask, global_stats), masked_mean(0.5 * log_ratio ** 2, mask, global_stats),
                 masked_mean(ratio, mask, global_stats))
    return PolicyLoss(masked_mean(losses, mask, global_stats), *stats)


@dataclass
class ValueLoss:
    loss: torch.Tensor
    clipfrac: torch.Tensor


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float | None = 0.2, global_stats: bool = False) -> ValueLoss:
    """``0.5 * mean((V - R)^2)``; with ``cliprange_value`` the pessimistic max of that and the loss of
    ``old_V + clip(V - old_V, -c, c)`` (value-function clipping)."""
    unclipped = (values - returns) ** 2
    if cliprange_value is None:
        losses = unclipped
        active = torch.zeros_like(unclipped)
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
        clipped = (v_clipped - returns) ** 2
        losses = torch.maximum(unclipped, clipped)
        active = (clipped > unclipped).to(values.dtype)
    with torch.no_grad():
        clipfrac = masked_mean(active, mask, global_stats)
    return ValueLoss(0.5 * masked_mean(losses, mask, global_stats), clipfrac)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution: ``logsumexp(z) - sum softmax(z) z``."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (F.softmax(logits, dim=-1) * logits).sum(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[token]`` per position, in float32 (``logits`` ``[B, T, V]``, tokens ``[B, T]``)."""
    logits = logits.float()
    return torch.gather(logits, 2, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


__all__ = [
    "KL_ESTIMATORS", "PolicyLoss", "RunningMoments", "ValueLoss", "all_sum", "entropy_from_logits", "gae",
    "kl_k1", "kl_k2", "kl_k3", "last_token_index", "masked_mean", "masked_var", "masked_whiten",
    "normalize_scores", "policy_loss", "process_advantages", "token_kl", "token_logprobs", "token_rewards",
    "value_loss",
]
