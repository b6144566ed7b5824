"""PPO (with the PPO-max recipe) for text LMs and Mova VLMs: ``mova train ppo``.

One iteration:

1. **rollout** -- ``ppo.rollout_batch_size`` prompts (split over processes) are answered by sampling
   from the policy with its KV cache (:func:`mova.rl.rollout.generate_rollouts`); a Mova prompt's image
   goes through the frozen experts once and its features serve every later pass;
2. **scoring** -- in one no-grad pass each: the policy's log-probs of its own tokens, the reference's,
   the critic's values, and the sequence score (a reward model, or a registered Python reward function);
   the score is normalised and clipped with running moments, and a token-level KL penalty is added
   (:mod:`mova.rl.ppo_math`);
3. **advantages** -- GAE, then whitening and clipping over the whole global batch;
4. **training** -- ``ppo.ppo_epochs`` passes over the buffer in minibatches: clipped surrogate, (clipped)
   value loss, entropy bonus, PPO-ptx language-model loss, global gradient clipping.

The loop is written out rather than bent into transformers' Trainer (which assumes one model and one
loss per batch); what runs share with the other stages is kept: the ``RunConfig`` recipe and overrides,
DeepSpeed JSONs through :class:`~mova.rl.engine.TrainEngine`, atomic checkpoints and
``resume_from_checkpoint=latest``, a progress bar, TensorBoard, ``summary.json`` and curves.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mova.config import RunConfig, to_dict
from mova.errors import ConfigError
from mova.model.policy import load_policy, policy_kind, unwrap
from mova.model.processing_text import as_processor
from mova.rl import ppo_math as pm
from mova.rl.engine import TrainEngine, init_distributed, rank, world_size
from mova.rl.prompts import PromptRecord, load_prompts
from mova.rl.rollout import RolloutBatch, forward_response, generate_rollouts, position_ids_for
from mova.rl.tracking import RunTracker
from mova.trainers.base import STAGING, resolve_resume
from mova.trainers.instruction_mix import InstructionMix, is_conversation_file
from mova.trainers.optim import parameter_groups, part_options
from mova.trainers.ppo_config import PpoConfig
from mova.trainers.stages import (
    activation_checkpointing,
    check_quantization,
    enable_activation_checkpointing,
    policy_dtype,
)

logger = logging.getLogger(__name__)

#: transformers' Trainer options (pass-through ``train.`` keys) the RL loop reads; others are named as ignored.
RL_TRAINING_ARGS = {"warmup_steps", "lr_scheduler_kwargs", "activation_checkpointing", "gradient_checkpointing_kwargs",
                    "activation_checkpointing_kwargs", "project", "run_name"}


# --- models ---------------------------------------------------------------------------------------------
class PolicyWithValueHead(nn.Module):
    """The ``shared`` critic: a value head on the policy's last hidden states (one trunk, one engine)."""

    def __init__(self, policy: nn.Module, hidden_size: int):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, **kwargs: Any) -> Any:
        return self.policy(**kwargs)


def _hidden_size(model: nn.Module) -> int:
    from mova.rl.reward_model import hidden_size

    return hidden_size(model)


# --- the loop -----------------------------------------------------------------------------------------------
@dataclass
class IterationTimes:
    generate: float = 0.0
    score: float = 0.0
    train: float = 0.0


class CollapseDetector:
    """Warns when the signs of PPO collapse appear: KL to the reference runs away, or the responses'
    perplexity or length leave a band around their first value (Secrets of RLHF I, section 5.2)."""

    def __init__(self, max_kl: float, ratio: float):
        self.max_kl, self.ratio = max_kl, ratio
        self.first: dict[str, float] = {}
        self.warnings: list[dict[str, Any]] = []
        #: signals outside their band now (a warning is raised when one leaves, not every iteration after).
        self.active: set[str] = set()

    def observe(self, iteration: int, metrics: dict[str, float]) -> list[str]:
        """Check one iteration's metrics; returns (and logs) the warnings of signals that just left their band."""
        outside: dict[str, str] = {}
        kl = metrics.get("objective/kl", 0.0)
        if kl > self.max_kl:
            outside["objective/kl"] = f"KL to the reference {kl:.2f} > {self.max_kl}"
        for key in ("objective/ppl", "response_length"):
            value = metrics.get(key)
            if value is None or not math.isfinite(value):
                continue
            first = self.first.setdefault(key, value)
            if first > 0 and not (first / self.ratio <= value <= first * self.ratio):
                outside[key] = f"{key} {value:.3g} left [{first / self.ratio:.3g}, {first * self.ratio:.3g}]"
        found = [text for key, text in outside.items() if key not in self.active]
        self.active = set(outside)
        for text in found:
            self.warnings.append({"iteration": iteration, "warning": text})
            logger.warning("PPO iteration %d: possible collapse: %s", iteration, text)
        return found


class PpoTrainer:
    """Builds the models from a :class:`RunConfig` (``ppo:`` section) and runs the iterations."""

    #: the method's name in reports (progress bar, summary, curves file) and the recipe section it reads.
    name = "ppo"
    section = "ppo"

    def __init__(self, cfg: RunConfig):
        init_distributed()
        self.cfg, self.ppo = cfg, cfg.section(self.section)
        self.ppo: PpoConfig
        self.world, self.rank = world_size(), rank()
        if self.ppo.rollout_batch_size % self.world or self.ppo.mini_batch_size % self.world:
            raise ConfigError(f"ppo.rollout_batch_size ({self.ppo.rollout_batch_size}) and ppo.mini_batch_size "
                              f"({self.ppo.mini_batch_size}) must be multiples of the {self.world} processes")
        if not cfg.data.data_path:
            raise ConfigError("data.data_path: name the prompts (a JSONL file or a SPA-VL source)")
        check_quantization(cfg)
        ignored = sorted(set(cfg.train.training_args) - RL_TRAINING_ARGS)
        if ignored and rank() == 0:
            logger.warning("train.%s: transformers' Trainer options the RL loop does not use; they are ignored",
                           ", train.".join(ignored))
        if self.ppo.reward_model is None and self.ppo.reward_fn is None:
            raise ConfigError("ppo: set reward_model (a folder) or reward_fn (a registered reward function)")
        torch.manual_seed(cfg.train.seed)
        use_cuda = torch.cuda.is_available() and not cfg.train.use_cpu
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        self.out_dir = Path(cfg.train.output_dir)
        #: mixed precision without DeepSpeed: forward passes under autocast (DeepSpeed casts the weights itself).
        self.amp_dtype = (torch.bfloat16 if cfg.train.bf16 else torch.float16 if cfg.train.fp16 else None) \
            if not cfg.train.deepspeed else None
        self.records = None
        self._build_models()
        self.records = self.load_records_count()
        self.template = cfg.data.template
        self.ptx = self._load_ptx()
        self.moments = pm.RunningMoments()
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.collapse = CollapseDetector(self.ppo.collapse_kl, self.ppo.collapse_ratio)
        self.times = IterationTimes()

    # --- hooks for trainers built on this one (R3) --------------------------------------------------
    def load_records(self) -> list[PromptRecord]:
        """The prompt pool (``data.data_path``: JSONL prompts or SPA-VL)."""
        cfg = self.cfg
        spavl = {} if Path(cfg.data.data_path).suffix in (".jsonl", ".json") else \
            {"config": cfg.data.spavl_config, "split": cfg.data.split}
        return load_prompts(cfg.data.data_path, cfg.data.image_folder, cfg.data.limit, **spavl)

    def samples_per_iteration(self) -> int:
        """Responses sampled per iteration over all processes (one per prompt for PPO)."""
        return self.ppo.rollout_batch_size

    def on_iteration_end(self, metrics: dict[str, float]) -> None:
        """Called with each iteration's metrics before they are logged (add to them in place)."""

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state a subclass saves in checkpoints."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    # --- construction ---------------------------------------------------------------------------------
    def _build_models(self) -> None:
        cfg, ppo = self.cfg, self.ppo
        policy, self.processor = load_policy(cfg.init_from, cfg.model, dtype=policy_dtype(cfg))
        self.kind = policy_kind(policy)
        if ppo.reference == "copy":
            self.reference: nn.Module | None = copy.deepcopy(policy).eval().requires_grad_(False)
        else:
            self.reference = None
        policy, _ = self.kind.make_trainable(policy, lora=cfg.train.lora, train_fusion=ppo.train_fusion,
                                             unfreeze_experts=cfg.train.unfreeze_experts)
        if ppo.reference == "adapters_off" and not self.kind.has_adapters(policy):
            raise ConfigError("ppo.reference=adapters_off needs LoRA (train.lora.r > 0); use reference=copy")
        policy.to(self.device)
        if self.reference is not None:
            self.reference.to("cpu" if ppo.offload_frozen else self.device)

        self.reward_model = None
        self.reward_processor = None
        if ppo.reward_model:
            from mova.rl.reward_model import load_reward_model

            rm, self.reward_processor = load_reward_model(ppo.reward_model)
            self.reward_model = rm.eval().requires_grad_(False)
            self.reward_model.to("cpu" if ppo.offload_frozen else self.device)
            self._check_tokenizers()
        self._build_engines(policy)

    def _build_engines(self, policy: nn.Module) -> None:
        """The trained models' engines: the policy's and the critic's (or one, with a shared value head).
        Critic-free trainers (GRPO) override this."""
        cfg, ppo = self.cfg, self.ppo
        tcfg = cfg.train
        engine_kw = self._engine_kwargs()
        critic_lr = ppo.critic_learning_rate or tcfg.learning_rate
        # The critic is copied from the policy (or the reward model) before any engine partitions weights.
        critic = self._build_critic(policy).to(self.device) if ppo.critic != "shared" else None
        if activation_checkpointing(tcfg):
            for model in (policy, critic):
                if model is not None:
                    enable_activation_checkpointing(model, tcfg)
        policy_steps, critic_steps = self.optimizer_steps()
        if ppo.critic == "shared":
            module = PolicyWithValueHead(policy, _hidden_size(unwrap(policy))).to(self.device)
            self.policy_engine = TrainEngine(module, tcfg.learning_rate, **engine_kw,
                                             **self._optimizer_setup(module, tcfg.learning_rate, critic_steps))
            self.critic_engine = None
        else:
            self.policy_engine = TrainEngine(policy, tcfg.learning_rate, **engine_kw,
                                             **self._optimizer_setup(policy, tcfg.learning_rate, policy_steps))
            self.critic_engine = TrainEngine(critic, critic_lr, **engine_kw,
                                             **self._optimizer_setup(critic, critic_lr, critic_steps))

    def _engine_kwargs(self) -> dict[str, Any]:
        """What every :class:`TrainEngine` of the run shares: decay, clipping, DeepSpeed, micro batch, precision."""
        tcfg, ppo = self.cfg.train, self.ppo
        max_norm = ppo.max_grad_norm if ppo.max_grad_norm is not None else tcfg.max_grad_norm
        return {"weight_decay": tcfg.weight_decay, "max_grad_norm": max_norm, "deepspeed": tcfg.deepspeed,
                "micro_batch": ppo.mini_batch_size // self.world, "bf16": tcfg.bf16, "fp16": tcfg.fp16}

    def total_iterations(self, n_records: int | None = None) -> int:
        """Iterations the run makes: ``train.max_steps``, or enough to pass ``num_train_epochs`` times over the
        prompts."""
        cfg = self.cfg
        if cfg.train.max_steps and cfg.train.max_steps > 0:
            return cfg.train.max_steps
        n = n_records if n_records is not None else len(self.records)
        return math.ceil(cfg.train.num_train_epochs * n / self.ppo.rollout_batch_size)

    def optimizer_steps(self) -> tuple[int, int]:
        """Optimizer steps of the policy and of the critic over the run (what the schedule spans): one per
        minibatch, ``ppo_epochs`` passes per iteration; the policy makes none during critic pre-training."""
        ppo = self.ppo
        per_iteration = ppo.ppo_epochs * (ppo.rollout_batch_size // ppo.mini_batch_size)
        iterations = self.total_iterations(len(self.load_records_count()))
        return max(iterations - ppo.critic_pretrain_iterations, 1) * per_iteration, iterations * per_iteration

    def load_records_count(self) -> list[Any]:
        """The prompt pool before the models exist (the schedule's length needs its size)."""
        if getattr(self, "records", None) is None:
            self.records = self.load_records()
        return self.records

    def _optimizer_setup(self, model: nn.Module, lr: float, steps: int) -> dict[str, Any]:
        """Parameter groups (per-part rates, no decay on biases and norms) and the learning-rate schedule of
        ``train.lr_scheduler_type`` with its warmup, over ``steps`` optimizer steps."""
        from transformers import get_scheduler

        tcfg = self.cfg.train
        options = part_options(tcfg)
        groups, _ = parameter_groups(model, lr, tcfg.weight_decay, options)
        warmup = tcfg.training_args.get("warmup_steps", tcfg.warmup_ratio)
        warmup_steps = int(warmup) if warmup >= 1 else math.ceil(steps * warmup)
        kwargs = tcfg.training_args.get("lr_scheduler_kwargs") or {}

        def scheduler(optimizer: torch.optim.Optimizer) -> Any:
            return get_scheduler(tcfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup_steps,
                                 num_training_steps=steps, scheduler_specific_kwargs=kwargs)

        return {"param_groups": groups, "scheduler": scheduler}

    def _build_critic(self, policy: nn.Module) -> nn.Module:
        from mova.rl.reward_model import RewardModel

        init = self.ppo.critic_init
        if init == "reward_model" and self.reward_model is None:
            logger.info("ppo.critic_init=reward_model without a reward model: the critic starts from the policy")
            init = "policy"
        if init == "reward_model":
            critic = copy.deepcopy(self.reward_model).to(self.device)
        else:
            start = self.reference if self.reference is not None else policy
            backbone = self.kind.merged_copy(start)  # a model of its own, adapters merged
            critic = RewardModel.from_backbone(backbone)
            nn.init.zeros_(critic.score_head.weight)
            nn.init.zeros_(critic.score_head.bias)
        critic.requires_grad_(True)
        self.kind.freeze_frozen_experts(critic.backbone)  # the critic's experts stay frozen like the policy's
        return critic.train()

    def _check_tokenizers(self) -> None:

        mine, theirs = self.processor.tokenizer, as_processor(self.reward_processor).tokenizer
        if mine.get_vocab() != theirs.get_vocab():
            raise ConfigError("the reward model's tokenizer differs from the policy's: PPO scores the policy's "
                              "token ids directly, so the reward model must share the policy's vocabulary")

    def _load_ptx(self) -> list[str] | InstructionMix | None:
        """PPO-ptx data: plain texts (loss on every token), or LLaVA-format records served by an
        :class:`InstructionMix` (loss on the assistant turns, images through the policy's experts)."""
        ppo = self.ppo
        if not ppo.ptx_coef:
            return None
        if not ppo.ptx_data:
            raise ConfigError("ppo.ptx_coef > 0 needs ppo.ptx_data (a JSONL of {'text'} or {'prompt','answer'}, "
                              "or LLaVA-format records)")
        path = Path(ppo.ptx_data)
        if not path.is_file():
            raise ConfigError(f"ppo.ptx_data: {path} not found")
        if is_conversation_file(path):
            template = ppo.ptx_template or self.cfg.data.template or self.kind.default_template(self.policy,
                                                                                               self.processor)
            return InstructionMix(path, self.policy, self.processor, template, batch_size=ppo.ptx_batch_size,
                                  image_folder=ppo.ptx_image_folder, feature_cache=ppo.ptx_feature_cache,
                                  seed=self.cfg.train.seed + self.rank, where="ppo.ptx_data")
        texts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            text = row.get("text") or (f"{row['prompt']} {row['answer']}" if "prompt" in row and "answer" in row
                                       else None)
            if not isinstance(text, str):
                raise ConfigError(f"{path}:{n}: needs 'text' or 'prompt' and 'answer'")
            texts.append(text)
        return texts

    # --- helpers --------------------------------------------------------------------------------------
    @property
    def policy(self) -> nn.Module:
        """The policy module (inside the shared-trunk wrapper when there is one)."""
        module = self.policy_engine.module
        return module.policy if isinstance(module, PolicyWithValueHead) else module

    def _frozen_on_device(self, model: nn.Module | None) -> Any:
        if model is None or not self.ppo.offload_frozen or self.device.type == "cpu":
            return nullcontext()
        return _OnDevice(model, self.device)

    def prompt_batch(self, iteration: int) -> list[PromptRecord]:
        """This rank's share of iteration ``iteration``'s global batch (a seeded reshuffle each pass)."""
        n, per_rank = len(self.records), self.ppo.rollout_batch_size // self.world
        start = iteration * self.ppo.rollout_batch_size
        out = []
        for k in range(start + self.rank * per_rank, start + (self.rank + 1) * per_rank):
            epoch, pos = divmod(k, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.train.seed + epoch))
            out.append(self.records[int(perm[pos])])
        return out

    def _score_sequences(self, batch: RolloutBatch) -> torch.Tensor:
        if self.reward_model is not None:
            with self._frozen_on_device(self.reward_model):
                rm = self.reward_model
                ids, mask = batch.input_ids, batch.attention_mask
                kwargs: dict[str, Any] = {"position_ids": position_ids_for(rm.backbone, ids, mask, batch.images)}
                if batch.images:
                    kwargs["images"] = batch.images
                return rm(input_ids=ids, attention_mask=mask, **kwargs).scores.float().to(self.device)
        from mova.rl.rewards import score

        columns = batch.columns
        values = score(self.ppo.reward_fn, batch.prompts, batch.completions, **columns, **self.ppo.reward_kwargs)
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def _values(self, batch: RolloutBatch, hidden: torch.Tensor | None = None) -> torch.Tensor:
        if self.critic_engine is None:
            head = self.policy_engine.module.value_head
            if hidden is None:
                _, hidden = forward_response(self.policy_engine.model, batch, hidden=True)
            return head(hidden.to(head.weight.dtype)).squeeze(-1).float()
        critic = self.critic_engine.model
        ids, mask = batch.input_ids, batch.attention_mask
        P, R = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
        kwargs: dict[str, Any] = {"position_ids": position_ids_for(unwrap(critic).backbone, ids, mask, batch.images)}
        if batch.images:
            kwargs["images"] = batch.images
        return critic(input_ids=ids, attention_mask=mask, **kwargs).values[:, P - 1:P + R - 1].float()

    def _reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        if self.reference is not None:
            with self._frozen_on_device(self.reference):
                logits, _ = forward_response(self.reference, batch)
        else:
            with self.kind.adapters_disabled(self.policy):
                logits, _ = forward_response(self.policy, batch)
        return pm.token_logprobs(logits, batch.response_ids)

    # --- one iteration --------------------------------------------------------------------------------
    @torch.no_grad()
    def make_experience(self, records: list[PromptRecord]) -> tuple[RolloutBatch, dict[str, float]]:
        ppo = self.ppo
        t0 = time.perf_counter()
        with self.policy_engine.gathered(), self.autocast():
            batch = generate_rollouts(self.policy, self.processor, records, template=self.template,
                                      max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature,
                                      top_p=ppo.top_p, top_k=ppo.top_k, device=self.device)
        t1 = time.perf_counter()
        with self.autocast():
            batch, metrics = self._score_experience(batch)
        t2 = time.perf_counter()
        self.times.generate += t1 - t0
        self.times.score += t2 - t1
        metrics.update({"time/generate": t1 - t0, "time/score": t2 - t1})
        return batch, metrics

    def autocast(self) -> Any:
        """Mixed precision for the forward passes (``train.bf16`` / ``fp16`` without DeepSpeed)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _score_experience(self, batch: RolloutBatch) -> tuple[RolloutBatch, dict[str, float]]:
        """Log-probs, reference log-probs, values, scores, rewards and advantages of a rollout batch."""
        ppo = self.ppo
        self.policy_engine.module.eval()
        if self.critic_engine is not None:
            self.critic_engine.module.eval()
        logits, hidden = forward_response(self.policy, batch, hidden=self.critic_engine is None)
        old_logp = pm.token_logprobs(logits, batch.response_ids)
        entropy = pm.entropy_from_logits(logits)
        del logits
        ref_logp = self._reference_logprobs(batch)
        values = self._values(batch, hidden)
        scores = self._score_sequences(batch)
        self.policy_engine.module.train()
        if self.critic_engine is not None:
            self.critic_engine.module.train()
        mask = batch.response_mask
        kl = pm.token_kl(old_logp, ref_logp, ppo.kl_estimator) * mask
        norm_scores = pm.normalize_scores(scores, self.moments, ppo.score_norm, ppo.score_clip)
        rewards = pm.token_rewards(norm_scores, kl, mask, ppo.kl_coef)
        advantages, returns = pm.gae(rewards, values * mask, mask, ppo.gamma, ppo.lam)
        advantages = pm.process_advantages(advantages, mask, ppo.whiten_advantages, ppo.advantage_clip)
        batch.extra.update(old_logp=old_logp, values=values * mask, advantages=advantages, returns=returns,
                           scores=scores.detach().float())
        metrics = self.objective_metrics(len(batch), scores, norm_scores, kl, old_logp, ref_logp, entropy, mask,
                                         ppo.kl_coef)
        metrics.update({"val/mean": float(pm.masked_mean(values, mask, True)),
                        "val/returns": float(pm.masked_mean(returns, mask, True))})
        return batch, metrics

    def objective_metrics(self, rows: int, scores: torch.Tensor, shaped: torch.Tensor, kl: torch.Tensor,
                          old_logp: torch.Tensor, ref_logp: torch.Tensor, entropy: torch.Tensor,
                          mask: torch.Tensor, kl_coef: float) -> dict[str, float]:
        """The ``objective/*`` and ``response_length`` metrics of a rollout, averaged over the rows of every
        process (the names every RL stage reports)."""
        k1 = (old_logp - ref_logp) * mask
        n_rows = pm.all_sum(torch.tensor(float(rows), device=self.device))

        def row_mean(x: torch.Tensor) -> float:
            return float(pm.all_sum(x.sum().float()) / n_rows)

        return {
            "objective/reward": row_mean(scores),
            "objective/scores": row_mean(shaped),
            "objective/kl": row_mean(k1.sum(1)),
            "objective/kl_penalty": row_mean(kl.sum(1)),
            "objective/rlhf_reward": row_mean(scores - kl_coef * kl.sum(1)),
            "objective/entropy": float(pm.masked_mean(entropy, mask, True)),
            "objective/ppl": math.exp(float(pm.masked_mean(-old_logp, mask, True))),
            "response_length": row_mean(mask.sum(1)),
        }

    def _ptx_loss(self, step: int) -> torch.Tensor:
        if isinstance(self.ptx, InstructionMix):
            return self.ptx.loss(self.policy_engine.model, self.device)
        tok = self.processor.tokenizer
        n = len(self.ptx)
        texts = [self.ptx[(step * self.ppo.ptx_batch_size + i) % n] for i in range(self.ppo.ptx_batch_size)]
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=512)
        ids, mask = enc.input_ids.to(self.device), enc.attention_mask.to(self.device)
        labels = ids.masked_fill(mask == 0, -100)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.policy_engine.model(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels).loss

    def minibatch_losses(self, mb: RolloutBatch, critic_only: bool,
                         step: int) -> tuple[torch.Tensor | None, Any, dict[str, float]]:
        """The policy's loss (clipped surrogate, entropy bonus, PPO-ptx; None when only a separate critic
        trains), the value loss, and their statistics, for one minibatch. Losses are scaled for gradients that
        every wrapper averages over ranks (``local_sum / global_count * world``)."""
        ppo = self.ppo
        shared = self.critic_engine is None
        mask = mb.response_mask
        stats: dict[str, float] = {}
        loss = None
        hidden = None
        if not critic_only or shared:
            logits, hidden = forward_response(self.policy_engine.model, mb, hidden=shared)
            logp = pm.token_logprobs(logits, mb.response_ids)
            pl = pm.policy_loss(logp, mb.extra["old_logp"], mb.extra["advantages"], mask, ppo.cliprange,
                                global_stats=True)
            entropy = pm.masked_mean(pm.entropy_from_logits(logits), mask, True)
            loss = pl.loss * self.world - ppo.entropy_coef * entropy * self.world
            if critic_only:
                loss = loss * 0.0
            if self.ptx is not None and not critic_only:
                ptx = self._ptx_loss(self.iteration * 1000 + step)
                loss = loss + ppo.ptx_coef * ptx
                stats["loss/ptx"] = float(ptx.detach())
            stats.update({"loss/policy": float(pl.loss.detach()), "policy/clipfrac": float(pl.clipfrac),
                          "policy/approxkl": float(pl.approxkl), "policy/ratio": float(pl.ratio_mean),
                          "policy/entropy": float(entropy.detach())})
        values = self._values(mb, hidden) if shared else self._values(mb)
        vl = pm.value_loss(values, mb.extra["values"], mb.extra["returns"], mask, ppo.cliprange_value,
                           global_stats=True)
        stats.update({"loss/value": float(vl.loss.detach()), "val/clipfrac": float(vl.clipfrac)})
        return loss, vl, stats

    def train_on(self, batch: RolloutBatch, critic_only: bool) -> dict[str, float]:
        """PPO epochs over the buffer; returns the averaged training metrics."""
        ppo = self.ppo
        t0 = time.perf_counter()
        n_local = len(batch)
        per_step = ppo.mini_batch_size // self.world
        sums: dict[str, float] = {}
        count = 0
        shared = self.critic_engine is None
        for epoch in range(ppo.ppo_epochs):
            order = torch.arange(n_local)
            if ppo.shuffle:
                g = torch.Generator().manual_seed(self.cfg.train.seed * 1000003 + self.iteration * 101 + epoch)
                order = torch.randperm(n_local, generator=g)
            for start in range(0, n_local, per_step):
                mb = batch.select(order[start:start + per_step])
                with self.autocast():
                    loss, vl, stats = self.minibatch_losses(mb, critic_only, count)
                if shared:
                    self.policy_engine.backward(loss + ppo.vf_coef * vl.loss * self.world)
                    stats["grad_norm/policy"] = self.policy_engine.step()
                else:
                    if not critic_only:
                        self.policy_engine.backward(loss)
                        stats["grad_norm/policy"] = self.policy_engine.step()
                    self.critic_engine.backward(vl.loss * self.world)
                    stats["grad_norm/critic"] = self.critic_engine.step()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        self.times.train += time.perf_counter() - t0
        out = {k: v / max(count, 1) for k, v in sums.items()}
        out["time/train"] = time.perf_counter() - t0
        return out

    # --- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        name = f"checkpoint-{self.iteration}"
        staging = self.out_dir / STAGING / name
        if self.rank == 0 and staging.exists():
            shutil.rmtree(staging)
        self._barrier()
        self.policy_engine.save(staging / "policy_engine")
        if self.critic_engine is not None:
            self.critic_engine.save(staging / "critic_engine")
        if isinstance(self.ptx, InstructionMix):  # each rank's own instruction stream
            (staging / f"ptx-rank{self.rank}.json").write_text(json.dumps(self.ptx.state_dict()) + "\n")
        if self.rank == 0:
            state = {"iteration": self.iteration, "moments": self.moments.state_dict(), "history": self.history,
                     "collapse_warnings": self.collapse.warnings, "collapse_first": self.collapse.first,
                     "collapse_active": sorted(self.collapse.active),
                     "extra": self.extra_state()}
            (staging / "trainer_state.json").write_text(json.dumps(state) + "\n")
        self._barrier()
        if self.rank == 0:
            final = self.out_dir / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            kept = sorted((p for p in self.out_dir.glob("checkpoint-*") if p.is_dir()),
                          key=lambda p: int(p.name.split("-")[1]))
            for old in kept[:-max(self.cfg.train.save_total_limit, 1)]:
                shutil.rmtree(old)
        self._barrier()

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        self.policy_engine.load(path / "policy_engine")
        if self.critic_engine is not None:
            self.critic_engine.load(path / "critic_engine")
        state = json.loads((path / "trainer_state.json").read_text())
        self.iteration = int(state["iteration"])
        self.moments.load_state_dict(state["moments"])
        self.history = state["history"]
        self.collapse.warnings = state["collapse_warnings"]
        self.collapse.first = state["collapse_first"]
        self.collapse.active = set(state.get("collapse_active", []))
        self.load_extra_state(state.get("extra", {}))
        ptx_state = path / f"ptx-rank{self.rank}.json"
        if isinstance(self.ptx, InstructionMix) and ptx_state.is_file():
            self.ptx.load_state_dict(json.loads(ptx_state.read_text()))

    def _barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    # --- run ----------------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg, ppo = self.cfg, self.ppo
        iterations = self.total_iterations()
        resume = resolve_resume(str(self.out_dir), cfg.train.resume_from_checkpoint)
        if resume:
            self.load_checkpoint(resume)
            logger.info("resumed from %s at iteration %d", resume, self.iteration)
        tracker = self.tracker()
        start = time.perf_counter()
        bar = tqdm(total=iterations, initial=self.iteration, desc=self.name, unit="it", disable=self.rank != 0)
        while self.iteration < iterations:
            critic_only = self.iteration < ppo.critic_pretrain_iterations
            torch.manual_seed(cfg.train.seed * 7919 + self.iteration * 31 + self.rank)
            batch, metrics = self.make_experience(self.prompt_batch(self.iteration))
            metrics["lr/policy"] = self.policy_engine.lr  # the rate this iteration's first step uses
            if self.critic_engine is not None:
                metrics["lr/critic"] = self.critic_engine.lr
            metrics.update(self.train_on(batch, critic_only))
            samples = self.samples_per_iteration()
            took = metrics["time/generate"] + metrics["time/score"] + metrics["time/train"]
            metrics["samples_per_second"] = samples / took if took else float("nan")
            metrics["critic_pretraining"] = float(critic_only)
            self.iteration += 1
            metrics["iteration"] = self.iteration
            self.on_iteration_end(metrics)
            self.history.append(metrics)
            self.collapse.observe(self.iteration, metrics)
            self.report(tracker, metrics, batch)
            bar.set_postfix({"reward": f"{metrics['objective/reward']:.3f}", "kl": f"{metrics['objective/kl']:.3f}"})
            bar.update(1)
            if cfg.train.save_steps and self.iteration % cfg.train.save_steps == 0:
                self.save_checkpoint()
        bar.close()
        tracker.close()
        final = self.save_final()
        return self.write_summary(time.perf_counter() - start, final)

    # --- reporting (shared with trainers built on this one) ------------------------------------------
    def tracker(self) -> RunTracker:
        """Where metrics go: ``train.report_to`` (TensorBoard, W&B), on the main process."""
        extra = self.cfg.train.training_args
        return RunTracker(self.cfg.train.report_to, self.out_dir, main=self.rank == 0, config=to_dict(self.cfg),
                          project=extra.get("project"), run_name=extra.get("run_name"))

    def completion_rows(self, batch: RolloutBatch) -> list[dict[str, Any]]:
        """The first ``ppo.log_completions`` rows of this rank's rollout batch: prompt, completion, score."""
        scores = batch.extra.get("scores")
        rows = []
        for i in range(min(self.ppo.log_completions, len(batch))):
            rows.append({"prompt": batch.prompts[i], "completion": batch.completions[i],
                         "score": float(scores[i]) if scores is not None else None,
                         "response_tokens": int(batch.response_mask[i].sum())})
        return rows

    def report(self, tracker: RunTracker, metrics: dict[str, float], batch: RolloutBatch) -> None:
        """One iteration's scalars, and every ``train.logging_steps`` iterations (and the first) a table of
        sample completions."""
        tracker.log(metrics, self.iteration)
        every = max(int(self.cfg.train.logging_steps), 1)
        if self.ppo.log_completions and (self.iteration == 1 or self.iteration % every == 0):
            tracker.log_completions(self.completion_rows(batch), self.iteration)

    def save_final(self) -> str:
        final = self.out_dir / "final"
        # Under ZeRO-3 every rank joins the gathering of the partitioned weights; the main process writes.
        with self.policy_engine.gathered():
            if self.rank == 0:
                self.kind.save(self.policy, final, self.processor)
        if self.critic_engine is not None:
            with self.critic_engine.gathered():
                if self.rank == 0:
                    unwrap(self.critic_engine.module).save_pretrained(self.out_dir / "critic",
                                                                      processor=self.processor)
        self._barrier()
        return str(final)

    def write_summary(self, runtime: float, final: str) -> dict[str, Any]:
        history = self.history
        summary = {
            "stage": self.name,
            "global_step": self.iteration,
            "iterations": self.iteration,
            "first_metrics": history[0] if history else {},
            "last_metrics": history[-1] if history else {},
            "history": history,
            "train_runtime_s": runtime,
            "time_generate_s": self.times.generate,
            "time_score_s": self.times.score,
            "time_train_s": self.times.train,
            "collapse_warnings": self.collapse.warnings,
            "world_size": self.world,
            self.section: to_dict(self.ppo),
            "final_model": final,
        }
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            plot_curves({"run": history}, self.out_dir / f"{self.name}_curves.png")
        return summary


class _OnDevice:
    """Move a frozen model to the accelerator for one pass and back to CPU after."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device

    def __enter__(self) -> nn.Module:
        return self.model.to(self.device)

    def __exit__(self, *exc: Any) -> None:
        self.model.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


CURVES = ("objective/reward", "objective/kl", "objective/ppl", "response_length")


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: str | Path, keys: tuple[str, ...] = CURVES) -> None:
    """One panel per metric, one line per run (e.g. ``ppo_max`` and ``vanilla`` side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, key in zip(axes, keys):
        for name, history in runs.items():
            xs = [h["iteration"] for h in history if key in h]
            ax.plot(xs, [h[key] for h in history if key in h], label=name)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_ppo(cfg: RunConfig) -> dict[str, Any]:
    """Train with PPO as ``cfg`` says; returns the summary (also written to ``output_dir/summary.json``)."""
    return PpoTrainer(cfg).train()
