"""Direct preference optimisation losses over per-response log-probabilities.

Every loss is a function of ``delta = (pi_c - pi_r) - (ref_c - ref_r)``, the policy's log-ratio
margin over the reference's, where each term is a response's summed token log-probability (or its
mean per token, when the trainer length-normalises). Losses register in :data:`DPO_LOSSES` so that a
new variant is one decorated function, and the trainer's ``dpo.loss_type`` names it.

* ``sigmoid`` -- DPO (Rafailov et al., 2023, eq. 7): ``-log sigmoid(beta * delta)``. With
  ``label_smoothing`` eps > 0 it is the conservative cDPO mixture
  ``-(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta delta)``.
* ``robust`` -- the unbiased noisy-label estimator of Chowdhury et al. (2024, "Provably robust DPO"):
  ``(-(1 - eps) log sigmoid(beta delta) + eps log sigmoid(-beta delta)) / (1 - 2 eps)``, eps < 1/2 being
  the assumed rate of flipped preference labels.
* ``hinge`` -- SLiC-style ``max(0, 1 - beta * delta)``.
* ``ipo`` -- IPO (Azar et al., 2023, eq. 17): ``(delta - 1 / (2 beta))^2``, computed on per-token mean
  log-probs (always length-normalised for IPO, as its authors' results assume).

Implicit rewards are ``beta * (pi - ref)`` per response; their gap and the fraction of pairs where the
chosen reward is higher are the ``rewards/margins`` and ``rewards/accuracies`` metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mova.errors import ConfigError, UnknownNameError
from mova.registry import Registry

LossFn = Callable[[torch.Tensor, float, float], torch.Tensor]
DPO_LOSSES: Registry[LossFn] = Registry("DPO loss type")
#: loss types whose log-probs are always per-token means (see the module docstring).
LENGTH_NORMALISED = {"ipo"}


register_dpo_loss = DPO_LOSSES.register


@register_dpo_loss("sigmoid")
def _sigmoid(delta: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    loss = -F.logsigmoid(beta * delta)
    if eps > 0:
        loss = (1 - eps) * loss - eps * F.logsigmoid(-beta * delta)
    return loss


@register_dpo_loss("robust")
def _robust(delta: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)


@register_dpo_loss("hinge")
def _hinge(delta: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return torch.relu(1 - beta * delta)


@register_dpo_loss("ipo")
def _ipo(delta: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return (delta - 1 / (2 * beta)) ** 2


def check_loss_options(loss_type: str, beta: float, label_smoothing: float) -> None:
    """Refuse option combinations that make a loss meaningless, naming the option."""
    if loss_type not in DPO_LOSSES:
        raise UnknownNameError("dpo.loss_type", loss_type, DPO_LOSSES)
    if beta <= 0:
        raise ConfigError(f"dpo.beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ConfigError(f"dpo.label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ConfigError(f"dpo.label_smoothing applies to the sigmoid and robust losses, not {loss_type!r}")


@dataclass
class DpoOutput:
    """Per-pair loss and implicit rewards (all ``[num_pairs]``)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    def metrics(self, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch means under the metric names TRL users read."""
        return {
            "rewards/chosen": self.chosen_rewards.mean(),
            "rewards/rejected": self.rejected_rewards.mean(),
            "rewards/margins": (self.chosen_rewards - self.rejected_rewards).mean(),
            "rewards/accuracies": (self.chosen_rewards > self.rejected_rewards).float().mean(),
            "logps/chosen": chosen_logps.mean(),
            "logps/rejected": rejected_logps.mean(),
        }


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None, length_normalize: bool = False) -> DpoOutput:
    """The per-pair DPO-family loss of summed response log-probs, and the implicit rewards.

    With ``length_normalize`` (always for ``ipo``) the loss sees each log-ratio divided by its
    response's token count (``chosen_tokens`` / ``rejected_tokens``); the rewards stay
    ``beta * (summed log-ratio)``, the implicit reward of DPO's derivation (and what TRL reports).
    """
    check_loss_options(loss_type, beta, label_smoothing)
    chosen_ratio = policy_chosen - ref_chosen.to(policy_chosen.dtype)
    rejected_ratio = policy_rejected - ref_rejected.to(policy_rejected.dtype)
    c, r = chosen_ratio, rejected_ratio
    if length_normalize or loss_type in LENGTH_NORMALISED:
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError(f"length-normalised {loss_type!r} loss needs the responses' token counts")
        c = c / chosen_tokens.clamp(min=1).to(c.dtype)
        r = r / rejected_tokens.clamp(min=1).to(r.dtype)
    losses = DPO_LOSSES[loss_type](c - r, beta, label_smoothing)
    return DpoOutput(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
