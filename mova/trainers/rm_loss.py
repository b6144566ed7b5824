"""Reward-model losses: Bradley-Terry and its noisy-preference variants, plus contrastive auxiliaries.

Every preference loss is a function of ``d = r_c - r_r`` (the reward gap of a pair, chosen minus
rejected) and optionally of the pair's preference strength ``u`` (the mean of ``d`` over an ensemble of
reward models, :mod:`mova.trainers.rm_strength`). With ``p = sigmoid(d - m)``:

* ``bt`` -- Bradley-Terry: ``-log p``.
* ``label_smoothing`` -- ``-(1 - a) log p - a log(1 - p)``: never fully trusts a label, so a wrong one
  costs at most a bounded push and strong pairs are not over-fitted.
* ``soft_negative`` -- label smoothing only on pairs whose strength is negative (the ensemble thinks
  the label is wrong), plain BT on the rest ("soft label" in Secrets of RLHF part II).

``m`` is the adaptive margin ``margin_scale * u`` (0 when ``margin_scale`` is 0): pairs the ensemble
finds clearly separated must be separated by more, ambiguous ones by less (``-log sigmoid(d - u)``).
Label flipping is not a loss but a data edit, done once before training: :func:`weakest_pairs` picks
the pairs whose labels are swapped.

The contrastive auxiliaries work on reward-model features (last-token hidden states, or their
chosen-minus-rejected difference) seen through two random views:

* ``simcse`` -- InfoNCE between the views: a feature's other view is its positive, every other
  feature in the batch a negative (Gao et al., 2021).
* ``swav`` -- swapped prediction of cluster codes: each view's soft assignment to learned prototypes,
  balanced by Sinkhorn-Knopp, is the target for the other view's prediction (Caron et al., 2020).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mova.errors import ConfigError, UnknownNameError
from mova.registry import Registry

PairLossFn = Callable[[torch.Tensor, torch.Tensor | None, float], torch.Tensor]
RM_LOSSES: Registry[PairLossFn] = Registry("reward-model loss")
#: losses that cannot run without each pair's preference strength.
NEEDS_STRENGTH = {"soft_negative"}


register_rm_loss = RM_LOSSES.register


@register_rm_loss("bt")
def _bt(z: torch.Tensor, strength: torch.Tensor | None, alpha: float) -> torch.Tensor:
    return -F.logsigmoid(z)


@register_rm_loss("label_smoothing")
def _smoothed(z: torch.Tensor, strength: torch.Tensor | None, alpha: float) -> torch.Tensor:
    return -(1 - alpha) * F.logsigmoid(z) - alpha * F.logsigmoid(-z)


@register_rm_loss("soft_negative")
def _soft_negative(z: torch.Tensor, strength: torch.Tensor | None, alpha: float) -> torch.Tensor:
    a = torch.where(strength < 0, alpha, 0.0).to(z.dtype)
    return -(1 - a) * F.logsigmoid(z) - a * F.logsigmoid(-z)


def check_rm_loss_options(loss: str, label_smoothing: float, margin_scale: float, has_strength: bool,
                          flip_fraction: float = 0.0) -> None:
    """Refuse meaningless combinations, naming the option."""
    if loss not in RM_LOSSES:
        raise UnknownNameError("rm.loss", loss, RM_LOSSES)
    if not 0 <= label_smoothing < 0.5:
        raise ConfigError(f"rm.label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss in ("label_smoothing", "soft_negative") and label_smoothing == 0:
        raise ConfigError(f"rm.loss={loss} needs rm.label_smoothing > 0")
    if not 0 <= flip_fraction < 1:
        raise ConfigError(f"rm.flip_fraction must be in [0, 1), got {flip_fraction}")
    needs = [name for name, on in (("rm.loss=soft_negative", loss in NEEDS_STRENGTH),
                                   ("rm.margin_scale", margin_scale != 0), ("rm.flip_fraction", flip_fraction > 0))
             if on]
    if needs and not has_strength:
        raise ConfigError(f"{', '.join(needs)} need each pair's preference strength: score the data first "
                          "(`mova rm-strength`) and set rm.strength_path, or give data rows strength_mean")


@dataclass
class RmLossOutput:
    """Per-pair losses and the rewards they came from (all ``[num_pairs]``)."""

    losses: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    def metrics(self) -> dict[str, torch.Tensor]:
        """Batch means: accuracy (chosen scored higher), mean margin, chosen and rejected score means."""
        c, r = self.chosen.detach().float(), self.rejected.detach().float()
        return {"rewards/accuracies": (c > r).float().mean(), "rewards/margins": (c - r).mean(),
                "rewards/chosen": c.mean(), "rewards/rejected": r.mean()}


def rm_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, loss: str = "bt", label_smoothing: float = 0.0,
            strength: torch.Tensor | None = None, margin_scale: float = 0.0) -> RmLossOutput:
    """The per-pair reward-model loss of rewards ``chosen`` / ``rejected`` (``[num_pairs]`` each)."""
    check_rm_loss_options(loss, label_smoothing, margin_scale, strength is not None)
    z = chosen - rejected
    if margin_scale:
        z = z - margin_scale * strength.to(z.dtype)
    return RmLossOutput(RM_LOSSES[loss](z, strength, label_smoothing), chosen, rejected)


def weakest_pairs(strength: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ``round(fraction * N)`` pairs of lowest preference strength (ties: lower index first).

    Their labels are the likeliest to be wrong; flipping them swaps chosen and rejected (and negates
    their strength, which is ``r_c - r_r`` under the old labels).
    """
    if not 0 <= fraction < 1:
        raise ConfigError(f"flip fraction must be in [0, 1), got {fraction}")
    k = int(round(fraction * strength.numel()))
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(strength.flatten().double().cpu(), stable=True).indices
    return order[:k]


# --- contrastive auxiliaries -------------------------------------------------------------------------
def simcse_loss(view1: torch.Tensor, view2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE over cosine similarities: row i of ``view1`` should match row i of ``view2`` among all rows."""
    a = F.normalize(view1.float(), dim=-1)
    b = F.normalize(view2.float(), dim=-1)
    logits = a @ b.T / temperature
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft codes ``[N, K]`` (rows sum to 1) from prototype scores, prototypes used equally across the batch.

    ``Q = exp(scores / epsilon)`` is alternately normalised so that every prototype gets ``1/K`` of the
    mass and every sample ``1/N``; the result is rescaled so that each sample's row sums to one.
    """
    q = torch.exp((scores.float() - scores.float().max()) / epsilon).T  # [K, N]
    q = q / q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / n
    return (q * n).T


def swav_loss(view1: torch.Tensor, view2: torch.Tensor, prototypes: torch.Tensor, temperature: float = 0.1,
              epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Swapped prediction: ``-(q2 . log softmax(s1 / t) + q1 . log softmax(s2 / t)) / 2`` averaged over rows.

    ``s = normalize(view) @ normalize(prototypes).T``; the codes ``q`` come from :func:`sinkhorn` on the
    other view's scores, without gradient.
    """
    c = F.normalize(prototypes.float(), dim=-1)
    s1 = F.normalize(view1.float(), dim=-1) @ c.T
    s2 = F.normalize(view2.float(), dim=-1) @ c.T
    q1, q2 = sinkhorn(s1, epsilon, iterations), sinkhorn(s2, epsilon, iterations)
    loss = -(q2 * F.log_softmax(s1 / temperature, dim=-1)).sum(-1) \
        - (q1 * F.log_softmax(s2 / temperature, dim=-1)).sum(-1)
    return loss.mean() / 2


CONTRASTIVE = ("none", "simcse", "swav")
