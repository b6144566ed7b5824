"""``ContinualConfig``: everything ``mova train continual`` needs, typed, from YAML plus ``key=value`` overrides.

One config can run several strategies over the same task sequence (``strategies: [seqft, replay, rcl]``);
each gets its own folder under ``output_dir`` and the report compares them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mova.config import TrainConfig, apply_overrides, from_dict, load_yaml
from mova.errors import ConfigError


@dataclass
class ReplayOptions:
    """Replay: each task trains on its own data plus a share of every earlier task's training data."""

    #: share of each earlier task's training set mixed in (0.1: 10 % of each).
    fraction: float = 0.1
    #: a general instruction set (JSON list of ``{"prompt", "answer"}``) mixed into every task.
    general_path: str | None = None
    #: how many general records per task (0: none; -1: all).
    general_count: int = 0


@dataclass
class EwcOptions:
    """Elastic weight consolidation: a quadratic penalty that keeps weights the earlier tasks rely on."""

    #: penalty weight lambda in ``lambda / 2 * sum F (theta - theta*)^2``.
    weight: float = 100.0
    #: training samples per task used to estimate the diagonal Fisher (squared gradients).
    fisher_samples: int = 64
    fisher_batch_size: int = 8


@dataclass
class RclOptions:
    """Reasoning-augmented continual learning: train on teacher reasoning paths verified by the gold answer."""

    #: the teacher: a local causal LM folder, a hub id, or a Mova checkpoint.
    teacher: str | None = None
    #: the teacher prompt's first line (a task folder's ``rcl_prompt.txt`` replaces it for that task).
    instruction: str = "Think step by step, then give the answer after 'Answer:'."
    #: a JSON file in each task folder with demonstrations ``{"prompt", "reasoning", "answer"}``.
    demos_file: str = "rcl_demos.json"
    num_demos: int = 2
    #: the marker before the final answer, in teacher outputs and in the student's targets.
    answer_marker: str = "Answer:"
    batch_size: int = 16
    max_new_tokens: int = 128
    #: the metric that decides whether a path's answer matches the gold one (default: the task's own)
    #: and the sentence score it must reach (1.0: an exact match).
    match_metric: str | None = None
    min_score: float = 1.0
    #: examples whose path was not kept: ``drop`` them, or train on the plain ``answer``.
    unverified: str = "drop"
    #: where generated paths go (default: ``output_dir/rcl_paths``; shared by strategies of one run).
    paths_dir: str | None = None

    def __post_init__(self) -> None:
        if self.unverified not in ("drop", "answer"):
            raise ConfigError(f"rcl.unverified must be 'drop' or 'answer', got {self.unverified!r}")


@dataclass
class Probe:
    """A held-out general-ability set: a JSON list of ``{"prompt", "answer"}`` and a metric name."""

    name: str
    path: str
    metric: str = "accuracy"
    max_new_tokens: int = 64
    limit: int | None = None
    #: put each prompt to the model as one user turn of its own chat template: an instruct model reads a raw
    #: "Question: ... Answer:" as text to continue, so its general ability is only seen through its template.
    #: Task prompts stay raw (the continual loop trains on them as they are).
    chat_template: bool = False


@dataclass
class EvalOptions:
    split: str = "test"
    #: score only the first N records of each task's split.
    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 64
    #: score every task after each task (full matrix), not only the seen ones (+ the next, for FWT).
    all_tasks: bool = False
    #: score task t+1 after task t too (FWT needs R[t][t+1]).
    eval_next: bool = True
    #: score the starting model on every task first (FWT's b_i and the probes' reference).
    baseline: bool = True
    #: general-ability probes scored at the start and after each task (reported as deltas from the start).
    probes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ContinualConfig:
    #: the starting model: a causal LM folder / hub id or a Mova checkpoint (used text-only).
    model: str = ""
    #: a folder with one sub-folder per task (TRACE layout).
    tasks_dir: str = ""
    #: task names in training order (default: TRACE's order, or ``order.json``, or alphabetical).
    order: list[str] = field(default_factory=list)
    #: strategies to run, each in ``output_dir/<name>``: seqft, lora, replay, ewc, rcl.
    strategies: list[str] = field(default_factory=lambda: ["seqft"])
    #: per-task epochs (task name -> epochs); others use ``train.num_train_epochs``.
    epochs: dict[str, float] = field(default_factory=dict)
    #: use only the first N training records of each task.
    train_limit: int | None = None
    #: longest training sample in tokens (prompts are cut from the left).
    max_length: int | None = None
    #: text between the prompt and the answer in training samples.
    separator: str = " "
    output_dir: str = "runs/continual"
    #: stop after this many tasks (a partial run; running again resumes where it stopped).
    stop_after: int | None = None
    #: keep ``all`` per-task model checkpoints or only the ``last``.
    keep_checkpoints: str = "all"
    device: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    replay: ReplayOptions = field(default_factory=ReplayOptions)
    ewc: EwcOptions = field(default_factory=EwcOptions)
    rcl: RclOptions = field(default_factory=RclOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)

    def __post_init__(self) -> None:
        if self.keep_checkpoints not in ("all", "last"):
            raise ConfigError(f"keep_checkpoints must be 'all' or 'last', got {self.keep_checkpoints!r}")
        if isinstance(self.strategies, str):
            self.strategies = [self.strategies]

    def probes(self) -> list[Probe]:
        return [from_dict(Probe, p, f"eval.probes[{i}]") for i, p in enumerate(self.eval.probes)]


def load_continual_config(path: str | Path | None, overrides: list[str] | None = None) -> ContinualConfig:
    """The YAML at ``path`` (optional) plus overrides; relative paths resolve against the YAML's folder
    when they exist there."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(json.loads(json.dumps(data)), overrides or [])
    cfg = from_dict(ContinualConfig, data, "continual")
    base = Path(path).resolve().parent if path else Path.cwd()
    for attr in ("model", "tasks_dir"):
        value = getattr(cfg, attr)
        if value and not Path(value).is_absolute() and (base / value).exists():
            setattr(cfg, attr, str(base / value))
    if cfg.rcl.teacher and not Path(cfg.rcl.teacher).is_absolute() and (base / cfg.rcl.teacher).exists():
        cfg.rcl.teacher = str(base / cfg.rcl.teacher)
    if not cfg.model:
        raise ConfigError("model is required (a causal LM folder or a Mova checkpoint)")
    if not cfg.tasks_dir:
        raise ConfigError("tasks_dir is required (a folder with one sub-folder per task)")
    return cfg


__all__ = ["ContinualConfig", "EvalOptions", "EwcOptions", "Probe", "RclOptions", "ReplayOptions",
           "load_continual_config"]
