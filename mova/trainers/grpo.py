"""GRPO and RLOO (critic-free RL) for text LMs and Mova VLMs: ``mova train grpo``.

The PPO loop of :mod:`mova.trainers.ppo` with the critic taken out. One iteration:

1. **rollout** -- ``grpo.rollout_batch_size`` prompts (split over processes, whole groups per process), each
   answered ``grpo.num_generations`` (G) times; a Mova prompt's image goes through the frozen experts once
   and its features serve all G responses and every later pass (:func:`mova.rl.rollout.generate_rollouts`);
2. **scoring** -- the policy's and the reference's log-probs, and each response's score from a reward model
   or a registered reward function, as in PPO;
3. **advantages** -- each response's score against its own group (:mod:`mova.rl.grpo_math`: ``grpo`` group
   normalisation or ``rloo`` leave-one-out), the same value on every token of the response;
4. **training** -- ``grpo.epochs`` passes in minibatches of the clipped surrogate plus ``kl_coef`` times a
   token-level KL estimate to the reference (or the KL folded into the score, ``kl_penalty: reward``).

Everything else -- models, reference (copy or LoRA adapters off), reward models, DeepSpeed engines, schedules,
checkpoints and resume, 2-process statistics, metric names, completions tables, ``summary.json`` and curves
-- is PPO's, inherited.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from mova.config import RunConfig
from mova.model.processing_text import as_processor
from mova.rl import grpo_math as gm
from mova.rl import ppo_math as pm
from mova.rl.engine import TrainEngine
from mova.rl.prompts import PromptRecord
from mova.rl.rollout import RolloutBatch, concat_rollouts, forward_response, generate_rollouts
from mova.trainers.grpo_config import GrpoConfig
from mova.trainers.ppo import PpoTrainer
from mova.trainers.stages import activation_checkpointing, enable_activation_checkpointing


class GrpoTrainer(PpoTrainer):
    """PPO's trainer with a group baseline in place of the critic (``grpo:`` section)."""

    name = "grpo"
    section = "grpo"
    ppo: GrpoConfig

    # --- construction: one engine, no critic ----------------------------------------------------------
    def _build_engines(self, policy: nn.Module) -> None:
        tcfg = self.cfg.train
        if activation_checkpointing(tcfg):
            enable_activation_checkpointing(policy, tcfg)
        steps, _ = self.optimizer_steps()
        self.policy_engine = TrainEngine(policy, tcfg.learning_rate, **self._engine_kwargs(),
                                         **self._optimizer_setup(policy, tcfg.learning_rate, steps))
        self.critic_engine = None

    def optimizer_steps(self) -> tuple[int, int]:
        """Optimizer steps over the run: ``epochs`` passes of (prompts x G) / mini_batch_size per iteration."""
        g = self.ppo
        per_iteration = g.epochs * (g.rollout_batch_size * g.num_generations // g.mini_batch_size)
        steps = self.total_iterations(len(self.load_records_count())) * per_iteration
        return steps, 0

    def samples_per_iteration(self) -> int:
        return self.ppo.rollout_batch_size * self.ppo.num_generations

    # --- one iteration --------------------------------------------------------------------------------
    @torch.no_grad()
    def make_experience(self, records: list[PromptRecord]) -> tuple[RolloutBatch, dict[str, float]]:
        t0 = time.perf_counter()
        with self.policy_engine.gathered(), self.autocast():
            batch = self._sample(records)
        t1 = time.perf_counter()
        with self.autocast():
            batch, metrics = self._score_experience(batch)
        t2 = time.perf_counter()
        self.times.generate += t1 - t0
        self.times.score += t2 - t1
        metrics.update({"time/generate": t1 - t0, "time/score": t2 - t1})
        return batch, metrics

    def _sample(self, records: list[PromptRecord]) -> RolloutBatch:
        """G responses per prompt: one ``generate`` call for the batch, or with ``seed_per_prompt`` one per
        prompt, seeded by the prompt's place in the global batch."""
        g = self.ppo
        options = {"template": self.template, "max_new_tokens": g.max_new_tokens, "temperature": g.temperature,
                   "top_p": g.top_p, "top_k": g.top_k, "device": self.device, "num_generations": g.num_generations}
        if not g.seed_per_prompt:
            return generate_rollouts(self.policy, self.processor, records, **options)
        first = self.iteration * g.rollout_batch_size + self.rank * len(records)
        parts = []
        for i, record in enumerate(records):
            torch.manual_seed(self.cfg.train.seed * 1_000_003 + first + i)
            parts.append(generate_rollouts(self.policy, self.processor, [record], **options))
        return concat_rollouts(parts, as_processor(self.processor).pad_token_id())

    def _score_experience(self, batch: RolloutBatch) -> tuple[RolloutBatch, dict[str, float]]:
        """Log-probs, reference log-probs, scores and group advantages of a rollout batch."""
        g = self.ppo
        self.policy_engine.module.eval()
        logits, _ = forward_response(self.policy, batch)
        old_logp = pm.token_logprobs(logits, batch.response_ids)
        entropy = pm.entropy_from_logits(logits)
        del logits
        ref_logp = self._reference_logprobs(batch)
        scores = self._score_sequences(batch)
        self.policy_engine.module.train()
        mask = batch.response_mask
        kl = pm.token_kl(old_logp, ref_logp, g.kl_estimator) * mask
        shaped = scores - g.kl_coef * kl.sum(1) if g.kl_penalty == "reward" else scores
        advantages = gm.group_advantages(g.advantage, shaped, g.num_generations, scale_by_std=g.scale_by_std)
        batch.extra.update(old_logp=old_logp, ref_logp=ref_logp, advantages=advantages,
                           scores=scores.detach().float())
        metrics = self.objective_metrics(len(batch), scores, shaped, kl, old_logp, ref_logp, entropy, mask,
                                         g.kl_coef)
        n_rows = pm.all_sum(torch.tensor(float(len(batch)), device=self.device))
        groups = scores.float().view(-1, g.num_generations)

        def mean_over(x: torch.Tensor, n: torch.Tensor) -> float:
            return float(pm.all_sum(x.sum().float()) / n)

        # how much signal the groups carry: the spread of scores within a group, and the share of groups whose
        # responses all scored alike (their advantages are 0: nothing to learn from them)
        n_groups = n_rows / g.num_generations
        metrics.update({
            "group/reward_std": mean_over(groups.std(dim=1, unbiased=True), n_groups),
            "group/all_equal": mean_over((groups.max(1).values - groups.min(1).values <= 1e-8).float(), n_groups),
            "group/advantage_abs": mean_over(advantages.abs(), n_rows),
        })
        return batch, metrics

    def minibatch_losses(self, mb: RolloutBatch, critic_only: bool,
                         step: int) -> tuple[torch.Tensor | None, Any, dict[str, float]]:
        """The loss of one minibatch (clipped surrogate + KL term + entropy bonus + PPO-ptx) and its
        statistics, scaled for gradients every wrapper averages over ranks."""
        g = self.ppo
        mask = mb.response_mask
        logits, _ = forward_response(self.policy_engine.model, mb)
        logp = pm.token_logprobs(logits, mb.response_ids)
        in_loss = g.kl_penalty == "loss" and g.kl_coef > 0
        gl = gm.grpo_loss(logp, mb.extra["old_logp"], mb.extra["ref_logp"], mb.extra["advantages"], mask,
                          cliprange=g.cliprange, kl_coef=g.kl_coef if in_loss else 0.0, kl_estimator=g.kl_estimator,
                          aggregation=g.loss_aggregation, global_stats=True)
        entropy = pm.masked_mean(pm.entropy_from_logits(logits), mask, True)
        loss = gl.loss * self.world - g.entropy_coef * entropy * self.world
        stats: dict[str, float] = {}
        if self.ptx is not None:
            ptx = self._ptx_loss(self.iteration * 1000 + step)
            loss = loss + g.ptx_coef * ptx
            stats["loss/ptx"] = float(ptx.detach())
        stats.update({"loss/policy": float(gl.policy_loss), "loss/kl": float(gl.kl),
                      "loss/total": float(gl.loss.detach()), "policy/clipfrac": float(gl.clipfrac),
                      "policy/approxkl": float(gl.approxkl), "policy/ratio": float(gl.ratio_mean),
                      "policy/entropy": float(entropy.detach())})
        return loss, None, stats

    def train_on(self, batch: RolloutBatch, critic_only: bool = False) -> dict[str, float]:
        """``grpo.epochs`` passes over the rollouts in minibatches; returns the averaged training metrics."""
        g = self.ppo
        t0 = time.perf_counter()
        n_local = len(batch)
        per_step = g.mini_batch_size // self.world
        sums: dict[str, float] = {}
        count = 0
        for epoch in range(g.epochs):
            order = torch.arange(n_local)
            if g.shuffle:
                gen = torch.Generator().manual_seed(self.cfg.train.seed * 1000003 + self.iteration * 101 + epoch)
                order = torch.randperm(n_local, generator=gen)
            for start in range(0, n_local, per_step):
                mb = batch.select(order[start:start + per_step])
                with self.autocast():
                    loss, _, stats = self.minibatch_losses(mb, False, count)
                self.policy_engine.backward(loss)
                stats["grad_norm/policy"] = self.policy_engine.step()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        self.times.train += time.perf_counter() - t0
        out = {k: v / max(count, 1) for k, v in sums.items()}
        out["time/train"] = time.perf_counter() - t0
        return out


def run_grpo(cfg: RunConfig) -> dict[str, Any]:
    """Train with GRPO / RLOO as ``cfg`` says; returns the summary (also written to ``output_dir/summary.json``)."""
    return GrpoTrainer(cfg).train()
