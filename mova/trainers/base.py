"""``MovaTrainer``: transformers' Trainer (DeepSpeed / torchrun underneath) with the plumbing runs need.

What it adds to the engine, and why:

* **Checkpoints that survive faults.** A checkpoint is written into ``output_dir/.staging/`` and moved
  into place with one rename once every rank has finished writing, so ``checkpoint-N`` exists only when
  complete; a run killed mid-save leaves debris in ``.staging`` that ``resume_from_checkpoint=latest``
  never sees. The last ``save_total_limit`` checkpoints are kept.
* **Non-finite losses.** A NaN/inf loss (on any rank: the flag is all-reduced so ranks agree) skips
  that micro-batch's backward, so with one micro-batch per step the optimizer step sees no gradient
  and changes nothing; the count goes to the summary, and too many in a row stop the run.
* **Reports.** A progress bar with loss, lr, tokens/s and ETA; TensorBoard by default; at the end a
  PNG of the loss curve and ``summary.json`` in the run folder.
* **Batching** grouped by modality and length (:class:`~mova.data.llava.ModalityLengthGroupedSampler`),
  whose order depends only on the seed and the global batch size: resume and multi-process runs see
  the same global batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints

from mova.data.llava import ModalityLengthGroupedSampler
from mova.errors import ConfigError, MovaError

logger = logging.getLogger(__name__)

STAGING = ".staging"


class NonFiniteLossError(MovaError, RuntimeError):
    """Too many non-finite losses in a row: the run diverged."""


def _publish(src: str, dst: str) -> None:
    """Make a finished checkpoint visible (one rename; atomic on POSIX within a filesystem)."""
    os.replace(src, dst)


def resolve_resume(output_dir: str, resume: str | None) -> str | None:
    """``latest`` -> the newest complete checkpoint in ``output_dir`` (or None when there is none)."""
    if resume in (None, "", "none", False):
        return None
    if resume == "latest":
        found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if found:
            logger.info("resuming from %s", found)
        else:
            logger.info("resume_from_checkpoint=latest: no checkpoint in %s yet, starting from step 0", output_dir)
        return found
    if not os.path.isdir(resume):
        raise ConfigError(f"train.resume_from_checkpoint: no checkpoint folder {resume}")
    logger.info("resuming from %s", resume)
    return resume


class MovaTrainer(Trainer):
    def __init__(self, *args: Any, max_nonfinite_in_a_row: int = 5, group_by_modality_length: bool = True,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_nonfinite_in_a_row = max_nonfinite_in_a_row
        self.group_by_modality_length = group_by_modality_length
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.tokens_seen = 0
        self._staging = False
        #: per-step metrics of a method's loss (``rewards/margins`` ...), averaged into each logged row.
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self.remove_callback(PrinterCallback)
        self.remove_callback(ProgressCallback)
        self.add_callback(MovaProgressCallback(self))
        if self.args.should_save:
            shutil.rmtree(os.path.join(self.args.output_dir, STAGING), ignore_errors=True)

    # --- metrics of a method's loss -------------------------------------------------------------
    def record_metrics(self, metrics: dict[str, torch.Tensor]) -> None:
        """Average ``metrics`` (scalars) over the processes and keep them for the next logged row."""
        if not metrics:
            return
        values = torch.stack([torch.as_tensor(v).detach().float().reshape(()) for v in metrics.values()])
        values = self.accelerator.reduce(values.to(self.args.device), reduction="mean")
        for name, value in zip(metrics, values.tolist()):
            self._metrics[name].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metrics:
            logs.update({k: sum(v) / len(v) for k, v in self._metrics.items()})
            self._metrics.clear()
        super().log(logs, start_time)

    # --- data order -----------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.group_by_modality_length and hasattr(ds, "lengths") and hasattr(ds, "has_image"):
            global_batch = self.args.per_device_train_batch_size * self.args.world_size
            return ModalityLengthGroupedSampler(ds.lengths, ds.has_image, global_batch, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    # --- one step -------------------------------------------------------------------------------
    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        self.tokens_seen += int(inputs["attention_mask"].sum()) * self.args.world_size
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=loss.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad)
        if bad.item() > 0:
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
            logger.warning("non-finite loss at step %d: skipped (%d in a row, %d in total)",
                           self.state.global_step, self.nonfinite_in_a_row, self.nonfinite_total)
            if self.nonfinite_in_a_row >= self.max_nonfinite_in_a_row:
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_a_row} non-finite losses in a row at step {self.state.global_step}; "
                    "lower the learning rate or check the data (train.max_nonfinite_in_a_row)")
            return torch.zeros((), device=loss.device)
        self.nonfinite_in_a_row = 0
        if not loss.requires_grad:
            # A batch that touches no trainable parameter (text-only data while only the fusion network
            # trains): a zero-gradient loss keeps every rank's backward (DDP / ZeRO hooks) in step.
            loss = loss + sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
        if not ((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                or self.compute_loss_func is not None):
            loss = loss / self.current_gradient_accumulation_steps
        kwargs = {"scale_wrt_gas": False} if self.is_deepspeed_enabled else {}
        self.accelerator.backward(loss, **kwargs)
        return loss.detach()

    # --- checkpoints that appear only when complete -------------------------------------------
    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING) if self._staging else run_dir

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        run_dir = self._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            target = os.path.join(run_dir, name)
            if os.path.exists(target):
                shutil.rmtree(target)
            _publish(os.path.join(run_dir, STAGING, name), target)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(run_dir, STAGING))
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit, use_mtime=False)
        self.accelerator.wait_for_everyone()


class MovaProgressCallback(TrainerCallback):
    """One tqdm bar: loss, lr, tokens/s (all ranks), and tqdm's own ETA."""

    def __init__(self, trainer: MovaTrainer):
        self.trainer = trainer
        self.bar: tqdm | None = None
        self.start = 0.0
        self.tokens_at_start = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", dynamic_ncols=True)
        self.start, self.tokens_at_start = time.perf_counter(), self.trainer.tokens_seen

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self.bar is None or not logs or "loss" not in logs:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tok_s = (self.trainer.tokens_seen - self.tokens_at_start) / elapsed
        self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}",
                             tok_s=f"{tok_s:,.0f}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def write_report(trainer: MovaTrainer, out_dir: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``summary.json`` and ``loss_curve.png`` (main process only); returns the summary."""
    out_dir = Path(out_dir)
    history = trainer.state.log_history
    steps = [h["step"] for h in history if "loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    final = next((h for h in reversed(history) if "train_runtime" in h), {})
    runtime = final.get("train_runtime")
    summary = {
        "global_step": trainer.state.global_step,
        "losses": dict(zip(steps, losses)),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_runtime_s": runtime,
        "train_samples_per_second": final.get("train_samples_per_second"),
        "tokens_per_second": trainer.tokens_seen / runtime if runtime else None,
        "nonfinite_steps_skipped": trainer.nonfinite_total,
        **(extra or {}),
    }
    if not trainer.is_world_process_zero():
        return summary
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if losses:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, losses, label="train loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{out_dir.name}: loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "loss_curve.png", dpi=120)
        plt.close(fig)
    return summary
