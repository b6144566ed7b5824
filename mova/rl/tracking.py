"""Where an RL run's metrics and sample completions go: ``train.report_to`` as the supervised stages read it.

transformers' Trainer reports the supervised stages through its callbacks; the RL loops (PPO, R3, and
trainers built on them) run outside it, so :class:`RunTracker` does the same job for them: scalars per
iteration to TensorBoard and/or Weights & Biases, and every ``train.logging_steps`` iterations a table of
sample completions (prompt, completion, score) -- to W&B as a ``wandb.Table``, to TensorBoard as a Markdown
text panel, and always to ``completions.jsonl`` in the run folder, which needs no tracker to read.

W&B follows its own environment (``WANDB_MODE=offline``, ``WANDB_DIR``, ``WANDB_PROJECT``); the project is
``train.project`` (transformers' field) unless ``WANDB_PROJECT`` says otherwise, the run name
``train.run_name`` or the output folder's name. Only the main process reports. A ``report_to`` entry this
tracker does not know is named in a warning once, never dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mova.errors import ConfigError

logger = logging.getLogger(__name__)

#: the report_to names the RL trainers honour.
KNOWN = ("tensorboard", "wandb")


class RunTracker:
    """Scalars and completion tables of one RL run, on the main process (a no-op on the others)."""

    def __init__(self, report_to: Sequence[str], out_dir: str | Path, *, main: bool = True,
                 config: dict[str, Any] | None = None, project: str | None = None, run_name: str | None = None):
        self.out_dir = Path(out_dir)
        self.main = main
        targets = [t for t in (report_to or []) if t not in ("none", "")]
        if "all" in targets:
            targets = list(KNOWN)
        unknown = sorted(set(targets) - set(KNOWN))
        if unknown and main:
            logger.warning("train.report_to %s: the RL trainers report to %s only; %s get nothing", targets,
                           list(KNOWN), unknown)
        self.targets = [t for t in targets if t in KNOWN]
        self.tb: Any = None
        self.wandb: Any = None
        if not main:
            return
        if "tensorboard" in self.targets:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out_dir / "runs"))
        if "wandb" in self.targets:
            try:
                import wandb
            except ImportError as e:
                raise ConfigError("train.report_to names wandb, which is not installed (pip install wandb)") from e
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT") or project or "mova",
                                    name=run_name or self.out_dir.name, config=config or {},
                                    dir=os.environ.get("WANDB_DIR") or str(self.out_dir), reinit="finish_previous")

    def log(self, metrics: dict[str, float], step: int) -> None:
        """One iteration's scalars."""
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def log_completions(self, rows: list[dict[str, Any]], step: int) -> None:
        """A table of sample completions (each row: ``prompt``, ``completion``, ``score`` ...)."""
        if not self.main or not rows:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / "completions.jsonl").open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}, default=str) + "\n")
        columns = list(rows[0])
        if self.tb is not None:
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
            self.tb.add_text("completions", "\n".join(lines), step)
        if self.wandb is not None:
            import wandb

            table = wandb.Table(columns=["step", *columns], data=[[step, *(r.get(c) for c in columns)] for r in rows])
            self.wandb.log({"completions": table}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")
