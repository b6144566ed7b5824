"""Continual-learning strategies: what a task trains on, with which options, and what it keeps afterwards.

A strategy is a class in :data:`STRATEGIES` (``@register_strategy("name")``); the loop calls, for each task:
``records_for(t)`` (the training data), ``train_config(base)`` (e.g. LoRA on), ``extra_loss()`` (a
regulariser), ``after_task(t, model, records)`` (e.g. EWC's Fisher) and ``answer_marker`` (how evaluation
reads answers). State a strategy must carry across a restart is saved by ``save_state``/``load_state``.

* ``seqft`` -- sequential full fine-tuning, the baseline;
* ``lora`` -- sequential LoRA fine-tuning: fresh adapters per task, merged into the weights after it;
* ``replay`` -- mixes ``replay.fraction`` of each earlier task's training set (and optionally a general
  instruction set) into each task's data;
* ``ewc`` -- elastic weight consolidation (Kirkpatrick et al., 2017) with the diagonal empirical Fisher,
  summed over tasks, and the weights after the latest task as the anchor;
* ``rcl`` -- trains on teacher reasoning paths kept only when their answer is right (:mod:`.rcl`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mova.config import TrainConfig
from mova.continual.config import ContinualConfig
from mova.data.trace import TraceTask, read_split
from mova.errors import ConfigError
from mova.registry import Registry

logger = logging.getLogger(__name__)

STRATEGIES: Registry[type[Strategy]] = Registry("continual strategy")


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def wrap(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        return STRATEGIES.register(name, cls)

    return wrap


def build_strategy(name: str, cfg: ContinualConfig, tasks: list[TraceTask], run_dir: Path) -> Strategy:
    return STRATEGIES[name](cfg, tasks, run_dir)


class Strategy:
    """Sequential fine-tuning; subclasses change one thing each."""

    name = "base"
    answer_marker: str | None = None

    def __init__(self, cfg: ContinualConfig, tasks: list[TraceTask], run_dir: Path):
        self.cfg, self.tasks, self.run_dir = cfg, tasks, run_dir
        self.notes: dict[str, Any] = {}

    def train_split(self, t: int) -> list[dict[str, Any]]:
        return self.tasks[t].records("train", self.cfg.train_limit)

    def records_for(self, t: int) -> list[dict[str, Any]]:
        return self.train_split(t)

    def train_config(self, base: TrainConfig) -> TrainConfig:
        return base

    def extra_loss(self) -> Callable[[torch.nn.Module], torch.Tensor] | None:
        return None

    def before_run(self) -> None:
        """Once per run, before the first task to train (e.g. RCL's teacher paths)."""

    def after_task(self, t: int, model: Any, tokenizer: Any, records: list[dict[str, Any]]) -> None:
        """After task ``t`` trained (the model is in its trained state)."""

    def save_state(self) -> None:
        """Persist what a restart needs (called after each task, before the task counts as done)."""

    def load_state(self) -> None:
        """Restore :meth:`save_state`'s files on a restart."""


@register_strategy("seqft")
class SeqFT(Strategy):
    """Full fine-tuning on each task in turn."""


@register_strategy("lora")
class LoraSeqFT(Strategy):
    """LoRA on each task in turn (``train.lora``; r defaults to 8 when the config leaves it 0), merged
    after each task so the next task's adapters start from the updated weights."""

    def train_config(self, base: TrainConfig) -> TrainConfig:
        lora = dataclasses.replace(base.lora, r=base.lora.r or 8, merge=True)
        return dataclasses.replace(base, lora=lora)


@register_strategy("replay")
class Replay(Strategy):
    """The task's data plus a seeded sample of each earlier task's training set (and general data)."""

    def records_for(self, t: int) -> list[dict[str, Any]]:
        opts = self.cfg.replay
        if not 0.0 <= opts.fraction <= 1.0:
            raise ConfigError(f"replay.fraction must be in [0, 1], got {opts.fraction}")
        rng = random.Random(f"{self.cfg.train.seed}-replay-{t}")
        records = list(self.train_split(t))
        replayed: dict[str, int] = {}
        for i in range(t):
            past = self.train_split(i)
            k = round(opts.fraction * len(past))
            records += rng.sample(past, k)
            replayed[self.tasks[i].name] = k
        if opts.general_path and opts.general_count:
            general = read_split(Path(opts.general_path))
            k = len(general) if opts.general_count < 0 else min(opts.general_count, len(general))
            records += rng.sample(general, k)
            replayed["general"] = k
        rng.shuffle(records)
        self.notes.setdefault("replayed", {})[self.tasks[t].name] = replayed
        return records


@register_strategy("ewc")
class Ewc(Strategy):
    """Penalty ``weight / 2 * sum_j F_j (theta_j - theta*_j)^2`` from the second task on."""

    STATE = "ewc_state.safetensors"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def extra_loss(self) -> Callable[[torch.nn.Module], torch.Tensor] | None:
        if not self.fisher:
            return None
        weight = self.cfg.ewc.weight

        def penalty(model: torch.nn.Module) -> torch.Tensor:
            total = torch.zeros((), device=next(model.parameters()).device)
            for name, p in model.named_parameters():
                if name in self.fisher:
                    f = self.fisher[name].to(p.device)
                    a = self.anchor[name].to(p.device)
                    total = total + (f * (p - a) ** 2).sum()
            return 0.5 * weight * total

        return penalty

    def after_task(self, t: int, model: Any, tokenizer: Any, records: list[dict[str, Any]]) -> None:
        fisher = diagonal_fisher(model, tokenizer, self.train_split(t), self.cfg)
        for name, f in fisher.items():
            self.fisher[name] = self.fisher[name] + f if name in self.fisher else f
        self.anchor = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if n in self.fisher}

    def save_state(self) -> None:
        from safetensors.torch import save_file

        if self.fisher:
            tensors = {f"fisher.{k}": v.contiguous() for k, v in self.fisher.items()}
            tensors.update({f"anchor.{k}": v.contiguous() for k, v in self.anchor.items()})
            save_file(tensors, str(self.run_dir / self.STATE))

    def load_state(self) -> None:
        from safetensors.torch import load_file

        path = self.run_dir / self.STATE
        if path.is_file():
            tensors = load_file(str(path))
            self.fisher = {k[7:]: v for k, v in tensors.items() if k.startswith("fisher.")}
            self.anchor = {k[7:]: v for k, v in tensors.items() if k.startswith("anchor.")}


def diagonal_fisher(model: Any, tokenizer: Any, records: list[dict[str, Any]], cfg: ContinualConfig
                    ) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the answer loss over mini-batches of ``ewc.fisher_samples`` records."""
    from mova.model.processing_text import as_processor
    from mova.trainers.text_sft import PromptAnswerCollator, PromptAnswerDataset

    tok = as_processor(tokenizer).tokenizer
    rng = random.Random(f"{cfg.train.seed}-fisher")
    sample = rng.sample(records, min(cfg.ewc.fisher_samples, len(records)))
    data = PromptAnswerDataset(sample, tok, separator=cfg.separator, max_length=cfg.max_length)
    collate = PromptAnswerCollator(tok.pad_token_id if tok.pad_token_id is not None else 0)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        model.requires_grad_(True)
        params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(p, device="cpu") for n, p in params.items()}
    was_training = model.training
    model.eval()
    bs = max(cfg.ewc.fisher_batch_size, 1)
    batches = 0
    for start in range(0, len(data), bs):
        rows = [data[i] for i in range(start, min(start + bs, len(data)))]
        batch = {k: v.to(model.device) for k, v in collate(rows).items()}
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach().float().cpu() ** 2
        batches += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {n: f / max(batches, 1) for n, f in fisher.items()}


@register_strategy("rcl")
class Rcl(Strategy):
    """Trains each task on verified teacher reasoning paths (generated for all tasks before the first)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.answer_marker = self.cfg.rcl.answer_marker
        self.paths: dict[str, list[dict[str, Any]]] = {}

    def paths_dir(self) -> Path:
        return Path(self.cfg.rcl.paths_dir) if self.cfg.rcl.paths_dir else Path(self.cfg.output_dir) / "rcl_paths"

    def before_run(self) -> None:
        from mova.continual.evaluate import model_generate_fn
        from mova.continual.rcl import generate_paths
        from mova.inference.generation import load_model

        opts = self.cfg.rcl
        if not opts.teacher:
            raise ConfigError("strategy rcl needs rcl.teacher (a causal LM folder or a Mova checkpoint)")
        model = tokenizer = None
        kept: dict[str, dict[str, int]] = {}
        for task in self.tasks:
            records = self.train_split(self.tasks.index(task))
            folder = self.paths_dir() / task.name
            done = folder / "paths.jsonl"
            n_done = sum(1 for line in done.open() if line.strip()) if done.is_file() else 0
            if n_done < len(records) and model is None:
                model, tokenizer = load_model(opts.teacher, device=self.cfg.device)
            gen = model_generate_fn(model, tokenizer, opts.batch_size) if model is not None else None

            def teacher(prompts: list[str], gen: Any = gen) -> list[str]:
                return gen(prompts, opts.max_new_tokens)

            self.paths[task.name] = generate_paths(task, records, teacher, opts, folder, teacher_name=opts.teacher)
            kept[task.name] = sum(p["kept"] for p in self.paths[task.name])
        del model
        self.notes["teacher"] = opts.teacher
        logger.info("RCL paths kept per task: %s", kept)

    def records_for(self, t: int) -> list[dict[str, Any]]:
        from mova.continual.rcl import rcl_records

        task = self.tasks[t]
        records, counts = rcl_records(self.train_split(t), self.paths[task.name], self.cfg.rcl)
        self.notes.setdefault("kept", {})[task.name] = counts
        if not records:
            raise ConfigError(f"RCL: the teacher's paths for task {task.name} were all wrong (0 of "
                              f"{counts['total']} kept); use a stronger teacher or rcl.unverified=answer")
        (self.paths_dir() / "kept.json").write_text(json.dumps(self.notes["kept"], indent=1) + "\n")
        return records


__all__ = ["STRATEGIES", "Strategy", "build_strategy", "diagonal_fisher", "register_strategy"]
