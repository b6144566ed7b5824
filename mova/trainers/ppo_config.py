"""PPO options (the ``ppo:`` section of a stage recipe) and the two presets.

Every trick of PPO-max is a switch here, so an ablation is a ``key=value`` override. A recipe picks a
preset with ``ppo.preset: ppo_max`` (or ``vanilla``); the preset fills the switches the recipe leaves
unset, and anything the recipe sets wins.

``ppo_max`` follows Secrets of RLHF part I: token-level KL penalty to the reference, score normalisation
and clipping with running moments, advantage whitening, value-loss clipping, the critic initialised from
the reward model and pre-trained before the policy moves, GAE with gamma 1 and lambda 0.95, global
gradient clipping, and a small experience buffer (one PPO epoch over it). ``vanilla`` is the plain
algorithm: clipped surrogate, GAE and an unclipped value loss, with none of the above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mova.config import bounded
from mova.errors import ConfigError


@dataclass
class PpoConfig:
    """Options of ``mova train ppo``; ``data.data_path`` names the prompts (JSONL or SPA-VL)."""

    #: ppo_max | vanilla | null: fills the options this section leaves unset.
    preset: Literal["ppo_max", "vanilla"] | None = None

    # --- rewards ---
    #: a reward-model folder (``mova train rm``), or null to score with ``reward_fn``.
    reward_model: str | None = None
    #: a registered Python reward function (mova.rl.rewards), used when ``reward_model`` is null.
    reward_fn: str | None = None
    #: keyword options for ``reward_fn``.
    reward_kwargs: dict[str, Any] = field(default_factory=dict)
    #: token-level KL penalty coefficient (0: none; the KL is still measured).
    kl_coef: float | None = None
    #: k1 (log-ratio) | k2 | k3 (unbiased and non-negative) for the penalty.
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    #: none | scale (divide by the running std) | normalize (subtract the running mean too).
    score_norm: Literal["none", "scale", "normalize"] | None = None
    #: clip the (normalised) score to [-score_clip, score_clip]; null: no clip.
    score_clip: float | None = None

    # --- advantages ---
    gamma: float = bounded(1.0, ge=0, le=1)
    lam: float = bounded(0.95, ge=0, le=1)
    whiten_advantages: bool | None = None
    advantage_clip: float | None = None

    # --- losses ---
    cliprange: float = bounded(0.2, gt=0)
    #: value-loss clipping range around the rollout's values; null: unclipped.
    cliprange_value: float | None = None
    #: use a clipped value loss (the value of cliprange_value, 0.2 when unset).
    clip_value_loss: bool | None = None
    vf_coef: float = 0.5
    entropy_coef: float = 0.0
    #: weight of the language-modelling loss on ``ptx_data`` (PPO-ptx); 0: off.
    ptx_coef: float = bounded(0.0, ge=0)
    #: a JSONL of ``{"text"}`` or ``{"prompt", "answer"}`` (loss on every token), or LLaVA-format records
    #: (``conversations``, images included; loss on the assistant turns: mova.trainers.instruction_mix).
    ptx_data: str | None = None
    ptx_batch_size: int = bounded(4, ge=1)
    #: for LLaVA-format ``ptx_data``: the folder its image paths are relative to (default: the file's), a
    #: feature cache of those images, and their chat template (default: the policy's).
    ptx_image_folder: str | None = None
    ptx_feature_cache: str | None = None
    ptx_template: str | None = None

    # --- the loop ---
    #: prompts per iteration over all processes.
    rollout_batch_size: int = bounded(16, ge=1)
    #: rows per optimizer step over all processes.
    mini_batch_size: int = bounded(8, ge=1)
    ppo_epochs: int | None = None
    max_new_tokens: int = bounded(32, ge=1)
    temperature: float = bounded(1.0, ge=0)
    top_p: float = bounded(1.0, gt=0, le=1)
    top_k: int = bounded(0, ge=0)
    #: iterations at the start that train only the critic (the policy does not move).
    critic_pretrain_iterations: int | None = None
    #: global gradient-norm clipping for policy and critic; null: ``train.max_grad_norm``; 0: off.
    max_grad_norm: float | None = None
    #: shuffle the buffer before cutting minibatches (each epoch).
    shuffle: bool = True

    # --- models and memory ---
    #: separate (a critic model of its own) | shared (a value head on the policy's trunk).
    critic: Literal["separate", "shared"] = "separate"
    #: reward_model (copy the reward model, head included) | policy (the policy's backbone, head at 0).
    critic_init: Literal["reward_model", "policy"] | None = None
    critic_learning_rate: float | None = None
    #: copy (a frozen copy of the start policy) | adapters_off (LoRA: the base weights, no copy).
    reference: Literal["copy", "adapters_off"] = "copy"
    #: keep the reference and reward model on CPU outside their scoring passes.
    offload_frozen: bool = False
    #: train the Mova fusion network too (the LLM trains, fully or through LoRA).
    train_fusion: bool = False

    # --- monitoring ---
    #: rows of sample completions (prompt, completion, score) reported every ``train.logging_steps``
    #: iterations to ``completions.jsonl`` and the ``train.report_to`` trackers; 0: none.
    log_completions: int = bounded(4, ge=0)
    #: warn when the mean per-response KL exceeds this (nats).
    collapse_kl: float = 10.0
    #: warn when perplexity or response length leave [1/ratio, ratio] times their first value.
    collapse_ratio: float = 3.0

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"ppo.preset: unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
        for key, value in PRESETS.get(self.preset or "vanilla", {}).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        for key, value in FALLBACK.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.clip_value_loss and self.cliprange_value is None:
            self.cliprange_value = 0.2
        if not self.clip_value_loss:
            self.cliprange_value = None
        if self.critic not in ("separate", "shared"):
            raise ConfigError(f"ppo.critic must be 'separate' or 'shared', got {self.critic!r}")
        if self.critic_init not in ("reward_model", "policy"):
            raise ConfigError(f"ppo.critic_init must be 'reward_model' or 'policy', got {self.critic_init!r}")
        if self.reference not in ("copy", "adapters_off"):
            raise ConfigError(f"ppo.reference must be 'copy' or 'adapters_off', got {self.reference!r}")
        if self.score_norm not in ("none", "scale", "normalize"):
            raise ConfigError(f"ppo.score_norm must be none | scale | normalize, got {self.score_norm!r}")
        if self.rollout_batch_size % self.mini_batch_size:
            raise ConfigError(f"ppo.rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                              f"ppo.mini_batch_size ({self.mini_batch_size})")


#: the switches each preset turns on or off (only where a recipe leaves them unset).
PRESETS: dict[str, dict[str, Any]] = {
    "ppo_max": {
        "kl_coef": 0.05, "score_norm": "normalize", "score_clip": 5.0, "whiten_advantages": True,
        "advantage_clip": 5.0, "clip_value_loss": True, "critic_init": "reward_model",
        "critic_pretrain_iterations": 2, "ppo_epochs": 1, "max_grad_norm": 1.0,
    },
    "vanilla": {
        "kl_coef": 0.0, "score_norm": "none", "score_clip": None, "whiten_advantages": False,
        "advantage_clip": None, "clip_value_loss": False, "critic_init": "policy",
        "critic_pretrain_iterations": 0, "ppo_epochs": 4, "max_grad_norm": 0.0,
    },
}

#: values for what neither the recipe nor a preset sets.
FALLBACK: dict[str, Any] = {"kl_coef": 0.05, "score_norm": "none", "whiten_advantages": True,
                            "clip_value_loss": True, "critic_init": "reward_model", "critic_pretrain_iterations": 0,
                            "ppo_epochs": 1}


