"""The registry of evaluation tasks that ``mova eval run --tasks a,b,c`` runs on one loaded checkpoint.

A task is a function of a :class:`TaskContext`: it reads its data, generates through
:mod:`mova.inference` with the context's model, writes its per-sample JSONL under ``ctx.out_dir``, and
returns its summary metrics (flat ``name -> number``; the suite adds them to the comparison table under
``task/name``). The model is loaded once for all tasks. Register with:

    @register_task("gsm8k", "grade-school maths, exact match on the final number")
    def gsm8k_task(ctx: TaskContext) -> dict[str, float]:
        ...

Task options come from the command line as ``--task-option gsm8k.shots=8`` and reach the task as
``ctx.options`` (``{"shots": 8}``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mova.errors import ConfigError
from mova.registry import Registry


@dataclass
class TaskContext:
    """What a task gets: the loaded model and processor, where to write, and the shared run settings."""

    model: Any
    processor: Any
    model_path: str
    out_dir: Path
    batch_size: int = 16
    max_new_tokens: int = 256
    limit: int | None = None
    seed: int = 0
    progress: bool = True
    #: this task's own options (``--task-option TASK.KEY=VALUE``), YAML-typed.
    options: dict[str, Any] = field(default_factory=dict)
    #: chat template override (a name from ``mova.model.templates.TEMPLATES``); None: the model's own.
    template: str | None = None
    #: this process's rank and the number of processes under ``torchrun``. Generation through
    #: :mod:`mova.inference` is sharded and merged for the task already; only rank 0 keeps its files
    #: (other ranks get a scratch ``out_dir``), so a task needs no distributed code of its own.
    rank: int = 0
    world_size: int = 1
    #: the task's registered name (set by the suite).
    task: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def backend(self) -> Any:
        """The context's model behind :class:`mova.inference.GenerationBackend` (prompts in, answers out)."""
        from mova.inference.backends import TransformersBackend

        return TransformersBackend(self.model, self.processor, batch_size=self.batch_size, progress=self.progress,
                                   template=self.template)

    def option(self, key: str, default: Any = None, required: bool = False) -> Any:
        """``options[key]``, or ``default``; a missing required option is an error that says how to set it."""
        if key in self.options:
            return self.options[key]
        if required:
            raise ConfigError(f"this task needs the option {key!r}: pass --task-option "
                              f"{self.task or 'TASK'}.{key}=VALUE")
        return default


TaskFn = Callable[[TaskContext], dict[str, float]]

#: name -> (help line, task function)
EVAL_TASKS: Registry[tuple[str, TaskFn]] = Registry("evaluation task")

#: modules whose import registers tasks; a module that is not installed or not written yet is skipped.
TASK_MODULES: list[str] = ["mova.evaluation.vqa_task", "mova.evaluation.safety_task", "mova.evaluation.gsm8k",
                           "mova.evaluation.trace_task", "mova.evaluation.self_polish_task",
                           "mova.evaluation.benchmark_tasks"]


def register_task(name: str, help_text: str) -> Callable[[TaskFn], TaskFn]:
    """Decorator: add an evaluation task to :data:`EVAL_TASKS`."""

    def wrap(fn: TaskFn) -> TaskFn:
        EVAL_TASKS.register(name, (help_text, fn), replace=True)
        return fn

    return wrap


def load_tasks() -> dict[str, tuple[str, TaskFn]]:
    """Import every task module and return the registry."""
    import importlib
    import importlib.util

    for module in TASK_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    return EVAL_TASKS


def get_task(name: str) -> TaskFn:
    tasks = load_tasks()
    if name not in tasks:
        raise ConfigError(f"unknown evaluation task {name!r}; registered: {sorted(tasks)}")
    return tasks[name][1]
