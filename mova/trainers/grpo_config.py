"""GRPO / RLOO options (the ``grpo:`` section of a stage recipe): critic-free RL with a group baseline.

Names shared with ``ppo:`` (rewards, sampling, clipping, reference, PPO-ptx, monitoring) mean the same there
and here, so a PPO recipe becomes a GRPO one by renaming its section and dropping the critic's keys.
``rollout_batch_size`` counts *prompts*; each gets ``num_generations`` responses, so an iteration holds
``rollout_batch_size * num_generations`` rows, which ``mini_batch_size`` (rows per optimizer step) divides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mova.config import bounded
from mova.errors import ConfigError


def _estimators() -> list[str]:
    from mova.rl.grpo_math import ADVANTAGE_ESTIMATORS

    return sorted(ADVANTAGE_ESTIMATORS)


@dataclass
class GrpoConfig:
    """Options of ``mova train grpo``; ``data.data_path`` names the prompts (JSONL or SPA-VL)."""

    # --- groups and advantages ---
    #: responses sampled per prompt (G); the group is each response's baseline.
    num_generations: int = bounded(4, ge=2)
    #: grpo (group mean and std) | rloo (leave-one-out mean) (mova.rl.grpo_math.ADVANTAGE_ESTIMATORS).
    advantage: str = bounded("grpo", choices=_estimators)
    #: grpo: divide by the group's std (false: only subtract the mean, as Dr. GRPO does).
    scale_by_std: bool = True

    # --- rewards ---
    #: a reward-model folder (``mova train rm``), or null to score with ``reward_fn``.
    reward_model: str | None = None
    #: a registered Python reward function (mova.rl.rewards), used when ``reward_model`` is null.
    reward_fn: str | None = None
    #: keyword options for ``reward_fn``.
    reward_kwargs: dict[str, Any] = field(default_factory=dict)
    #: KL coefficient (beta); 0: no KL term (the KL is still measured).
    kl_coef: float = bounded(0.04, ge=0)
    #: k1 (log-ratio) | k3 (unbiased and non-negative; GRPO's) | k2, per token against the reference.
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    #: loss (GRPO: the token-level KL joins the loss, on the current policy) | reward (RLOO: the response's
    #: summed KL is subtracted from its score before the baseline).
    kl_penalty: Literal["loss", "reward"] = "loss"

    # --- the loss ---
    #: the surrogate's clip range: the ratio to the sampling policy is kept within [1 - c, 1 + c].
    cliprange: float = bounded(0.2, gt=0)
    #: token_mean (every token of the batch weighs alike) | sequence_mean (each response's token mean, then
    #: the mean over responses: GRPO's paper).
    loss_aggregation: Literal["token_mean", "sequence_mean"] = "token_mean"
    #: weight of an entropy bonus (0: none).
    entropy_coef: float = 0.0
    #: weight of the language-modelling loss on ``ptx_data`` (as ``ppo.ptx_*``); 0: off.
    ptx_coef: float = bounded(0.0, ge=0)
    #: PPO-ptx data, its batch size, and for LLaVA-format data its image folder, feature cache and template.
    ptx_data: str | None = None
    ptx_batch_size: int = bounded(4, ge=1)
    ptx_image_folder: str | None = None
    ptx_feature_cache: str | None = None
    ptx_template: str | None = None

    # --- the loop ---
    #: prompts per iteration over all processes (each answered ``num_generations`` times).
    rollout_batch_size: int = bounded(8, ge=1)
    #: rows (responses) per optimizer step over all processes.
    mini_batch_size: int = bounded(16, ge=1)
    #: passes over each iteration's rollouts (1: every step on fresh samples, the ratio starts at 1).
    epochs: int = bounded(1, ge=1)
    #: sampling: response length cap, temperature (> 0: a group of identical greedy answers has no signal),
    #: nucleus and top-k (0: off).
    max_new_tokens: int = bounded(32, ge=1)
    temperature: float = bounded(1.0, gt=0)
    top_p: float = bounded(1.0, gt=0, le=1)
    top_k: int = bounded(0, ge=0)
    #: sample each prompt's group from a seed of its own (run seed, iteration, place in the global batch): the
    #: samples then do not depend on the number of processes or on the other prompts (a 2-process run equals a
    #: 1-process run), at the cost of one ``generate`` call per prompt instead of one per batch.
    seed_per_prompt: bool = False
    #: global gradient-norm clipping; null: ``train.max_grad_norm``; 0: off.
    max_grad_norm: float | None = None
    #: shuffle the rows before cutting minibatches (each epoch).
    shuffle: bool = True

    # --- models and memory ---
    #: copy (a frozen copy of the start policy) | adapters_off (LoRA: the base weights, no copy).
    reference: Literal["copy", "adapters_off"] = "copy"
    #: keep the reference and reward model on CPU outside their scoring passes.
    offload_frozen: bool = False
    #: train the Mova fusion network too (the LLM trains, fully or through LoRA).
    train_fusion: bool = False

    # --- monitoring ---
    #: rows of sample completions reported every ``train.logging_steps`` iterations; 0: none.
    log_completions: int = bounded(4, ge=0)
    #: warn when the mean per-response KL exceeds this (nats).
    collapse_kl: float = 10.0
    #: warn when perplexity or response length leave [1/ratio, ratio] times their first value.
    collapse_ratio: float = 3.0

    def __post_init__(self) -> None:
        rows = self.rollout_batch_size * self.num_generations
        if rows % self.mini_batch_size:
            raise ConfigError(f"grpo.rollout_batch_size x grpo.num_generations ({rows} responses) must be a "
                              f"multiple of grpo.mini_batch_size ({self.mini_batch_size})")

    @property
    def ppo_epochs(self) -> int:
        """``epochs`` under the name the shared PPO loop reads."""
        return self.epochs

    @property
    def critic_pretrain_iterations(self) -> int:
        """No critic, so nothing to pre-train (read by the shared loop)."""
        return 0
