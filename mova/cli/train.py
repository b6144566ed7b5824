"""``mova train STAGE --config RECIPE [key=value ...]``: train one stage; prints the run summary as JSON.

:data:`STAGES` maps each stage to its help line and runner (``runner(recipe, overrides) -> summary``); runners
import their trainer only when called, so ``mova -h`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from mova.cli.command import Command
from mova.registry import Registry

Runner = Callable[[str | None, list[str]], dict[str, Any]]
#: stage name -> (help line, runner).
STAGES: Registry[tuple[str, Runner]] = Registry("train stage")

#: summary keys ``mova train`` prints when a runner returns them.
SUMMARY_KEYS = ("stage", "global_step", "first_loss", "last_loss", "train_runtime_s", "tokens_per_second",
                "nonfinite_steps_skipped", "data", "final_model", "results")


def stage(name: str, help_text: str) -> Callable[[Runner], Runner]:
    """Decorator: add ``mova train NAME``."""

    def add(run: Runner) -> Runner:
        STAGES.register(name, (help_text, run))
        return run

    return add


def _base_stage(name: str) -> Runner:
    def run(config: str | None, overrides: list[str]) -> dict[str, Any]:
        from mova.config import load_run_config
        from mova.trainers.stages import run_stage

        return run_stage(load_run_config(config, overrides, stage=name))

    return run


stage("align", "train the fusion network on caption data (LLM and experts frozen)")(_base_stage("align"))
stage("sft", "fine-tune the fusion network and the LLM on instruction data")(_base_stage("sft"))


@stage("dpo", "preference optimisation on SPA-VL or text pairs")
def _dpo(config: str | None, overrides: list[str]) -> dict[str, Any]:
    from mova.config import load_run_config
    from mova.trainers.dpo import run_dpo

    return run_dpo(load_run_config(config, overrides, stage="dpo"))


@stage("rm", "reward model (Bradley-Terry; flip / smoothing / margin / contrastive / MetaRM options)")
def _rm(config: str | None, overrides: list[str]) -> dict[str, Any]:
    from mova.config import load_run_config
    from mova.trainers.rm import run_rm

    return run_rm(load_run_config(config, overrides, stage="rm"))


def _rl_result(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """What ``mova train`` prints for an RL stage: the run's size and time, and its last objective metrics."""
    last = summary["last_metrics"]
    return {"stage": name, "iterations": summary["iterations"], "train_runtime_s": summary["train_runtime_s"],
            **{k: last.get(k) for k in ("objective/reward", "objective/kl", "objective/ppl", "response_length")},
            "collapse_warnings": len(summary["collapse_warnings"]), "final_model": summary["final_model"]}


@stage("ppo", "PPO / PPO-max against a reward model or a reward function (text or VLM)")
def _ppo(config: str | None, overrides: list[str]) -> dict[str, Any]:
    from mova.config import load_run_config
    from mova.trainers.ppo import run_ppo

    return _rl_result("ppo", run_ppo(load_run_config(config, overrides, stage="ppo")))


@stage("grpo", "GRPO / RLOO: critic-free RL with a group baseline (reward model or function; text or VLM)")
def _grpo(config: str | None, overrides: list[str]) -> dict[str, Any]:
    from mova.config import load_run_config
    from mova.trainers.grpo import run_grpo

    return _rl_result("grpo", run_grpo(load_run_config(config, overrides, stage="grpo")))


@stage("r3", "R3 reverse-curriculum RL for reasoning on PPO or GRPO (curriculum.optimizer: ppo | grpo; "
       "schedule none: plain outcome-reward RL)")
def _r3(config: str | None, overrides: list[str]) -> dict[str, Any]:
    from mova.config import load_run_config
    from mova.trainers.r3 import run_r3

    summary = run_r3(load_run_config(config, overrides, stage="r3"))
    last = summary["last_metrics"]
    return {"stage": "r3", "iterations": summary["iterations"], "train_runtime_s": summary["train_runtime_s"],
            **{k: last.get(k) for k in ("objective/reward", "objective/kl", "curriculum/stage", "curriculum/mean_k")},
            "final_model": summary["final_model"]}


@stage("continual", "train tasks in sequence (TRACE; seqft / lora / replay / ewc / rcl) and report the score "
       "matrix, OP, BWT and FWT")
def _continual(config: str | None, overrides: list[str]) -> dict[str, Any]:
    from mova.continual.config import load_continual_config
    from mova.continual.loop import run_continual

    summary = run_continual(load_continual_config(config, overrides))
    print(summary["table"])
    return summary


#: the recipe sections whose options ``mova train STAGE --help`` lists.
STAGE_SECTIONS = {"dpo": ("dpo",), "rm": ("rm",), "ppo": ("ppo",), "grpo": ("grpo",),
                  "r3": ("curriculum", "ppo", "grpo", "sandbox")}


def section_options(name: str) -> str:
    """``name.key (default): what the ``#:`` comment above the field says``, one line per option of section
    ``name``, read from the section dataclass's source, so the help and the code cannot drift apart."""
    import dataclasses
    import inspect
    import re

    from mova.config import section_class

    cls = section_class(name)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    lines, comment = [], []
    for raw in inspect.getsource(cls).splitlines():
        line = raw.strip()
        if line.startswith("#:"):
            comment.append(line[2:].strip())
            continue
        field = re.match(r"(\w+): [^=]+?(=|$)", line)
        if field and field.group(1) in defaults:
            default = defaults[field.group(1)]
            lines.append(f"  {name}.{field.group(1)} ({default!r}){': ' + ' '.join(comment) if comment else ''}")
        if not line.startswith("#"):
            comment = []
    return "\n".join(lines)


class _StageHelp(argparse.Action):
    """``-h``: the usual help, and after ``mova train STAGE`` the options of the stage's recipe sections."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.print_help()
        for name in STAGE_SECTIONS.get(getattr(namespace, "stage", None) or "", ()):
            print(f"\n{name}: options (key=value overrides, or the recipe's {name}: section)\n{section_options(name)}")
        parser.exit()


def _add_args(p: argparse.ArgumentParser) -> None:
    # the sub-parser comes with argparse's own -h; ours (which knows the stage) takes its place
    p.conflict_handler = p._optionals.conflict_handler = "resolve"
    p.add_argument("-h", "--help", action=_StageHelp, nargs=0,
                   help="show this help (after a STAGE: also that stage's recipe options) and exit")
    p.add_argument("stage", choices=sorted(STAGES), metavar="STAGE",
                   help=" | ".join(f"{k}: {v[0]}" for k, v in sorted(STAGES.items())))
    p.add_argument("--config", help="a stage YAML (train/configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=50")


def _run(args: argparse.Namespace) -> int:
    summary = STAGES[args.stage][1](args.config, list(args.overrides))
    # the usual keys, plus any other scalar a stage reports (PPO's objective/reward, ...)
    shown = {k: v for k, v in summary.items() if k in SUMMARY_KEYS or isinstance(v, (int, float, str, type(None)))}
    print(json.dumps(shown, indent=2, default=str))
    return 0


COMMAND = Command("train", "train a stage from a YAML recipe with key=value overrides", _add_args, _run)
