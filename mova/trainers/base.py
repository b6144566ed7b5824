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

#: a method's own state inside a checkpoint folder (:meth:`MovaTrainer.extra_state`).
EXTRA_STATE = "mova_extra_state.json"

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


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


class MovaTrainer(Trainer):
    def __init__(self, *args: Any, max_nonfinite_in_a_row: int = 5, group_by_modality_length: bool = True,
                 part_options: dict[str, dict[str, float]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._check_fsdp_applied()
        #: learning rate and weight decay per model part (:func:`mova.trainers.optim.part_options`).
        self.part_options = part_options or {}
        self.group_names: list[str] = []
        self.max_nonfinite_in_a_row = max_nonfinite_in_a_row
        self.group_by_modality_length = group_by_modality_length
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.tokens_seen = 0
        self._staging = False
        #: per-step metrics of a method's loss (``rewards/margins`` ...), averaged into each logged row.
        self._metrics: dict[str, list[float]] = defaultdict(list)
        #: the same metrics of evaluation batches (``eval_strategy``), logged with the eval loss as ``eval_*``.
        self._eval_metrics: dict[str, list[float]] = defaultdict(list)
        self.remove_callback(PrinterCallback)
        self.remove_callback(ProgressCallback)
        self.add_callback(MovaProgressCallback(self))
        if self.args.should_save:
            shutil.rmtree(os.path.join(self.args.output_dir, STAGING), ignore_errors=True)

    def _check_fsdp_applied(self) -> None:
        """A backstop to :func:`mova.trainers.stages.check_fsdp_launch`: ``train.fsdp`` reached the Trainer, but
        accelerate did not apply FSDP (it silently falls back to plain data parallelism where it cannot). A
        recipe that asked for sharded weights must not train unsharded without a word."""
        if not self.args.fsdp or self.is_fsdp_enabled or getattr(self, "is_fsdp_xla_enabled", False):
            return
        how = str(getattr(self.accelerator.state.distributed_type, "value", self.accelerator.state.distributed_type))
        raise ConfigError(f"train.fsdp is set, but accelerate did not shard this run ({how}, {self.args.world_size} "
                          "process(es)): it applies FSDP only across several GPUs (or other accelerators) launched "
                          "together; leave train.fsdp out to train without sharding")

    # --- metrics of a method's loss -------------------------------------------------------------
    def record_metrics(self, metrics: dict[str, torch.Tensor]) -> None:
        """Average ``metrics`` (scalars) over the processes and keep them for the next logged row."""
        if not metrics:
            return
        values = torch.stack([torch.as_tensor(v).detach().float().reshape(()) for v in metrics.values()])
        values = self.accelerator.reduce(values.to(self.args.device), reduction="mean")
        target = self._metrics if self.model.training else self._eval_metrics
        for name, value in zip(metrics, values.tolist()):
            target[name].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metrics:
            logs.update({k: sum(v) / len(v) for k, v in self._metrics.items()})
            self._metrics.clear()
        if "eval_loss" in logs and self._eval_metrics:
            logs.update({f"eval_{k}": sum(v) / len(v) for k, v in self._eval_metrics.items()})
            self._eval_metrics.clear()
        if "loss" in logs and self.group_names and self.optimizer is not None:
            # ``learning_rate`` is the first group's; with per-part rates log each part's
            for name, group in zip(self.group_names, self.optimizer.param_groups):
                if not name.endswith("/no_decay"):
                    logs[f"lr/{name}"] = float(group["lr"])
        super().log(logs, start_time)

    # --- optimizer: a parameter group per model part -------------------------------------------
    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """transformers' optimizer (``train.optim``), with the groups of :func:`~mova.trainers.optim.parameter_groups`
        when the recipe gives a part its own learning rate or weight decay."""
        if self.optimizer is not None or not self.part_options:
            return super().create_optimizer(model)
        from mova.trainers.optim import parameter_groups

        opt_model = self.model if model is None else model
        groups, self.group_names = parameter_groups(
            opt_model, self.args.learning_rate, self.args.weight_decay, self.part_options,
            no_decay={n for n, _ in opt_model.named_parameters()} - set(self.get_decay_parameter_names(opt_model)))
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        builds_own = sorted({"params", "model", "optimizer_dict"} & set(kwargs))
        if builds_own:
            optim = getattr(self.args.optim, "value", self.args.optim)
            raise ConfigError(f"train.optim={optim} builds its own parameter groups: per-part learning rates "
                              "(train.*_learning_rate, *_weight_decay) cannot be combined with it")
        self.optimizer = cls(groups, **kwargs)
        logger.info("optimizer groups: %s", ", ".join(f"{n} (lr {g['lr']:g}, wd {g['weight_decay']:g}, "
                                                       f"{sum(p.numel() for p in g['params'])} params)"
                                                       for n, g in zip(self.group_names, groups)))
        return self.optimizer

    # --- the language-modelling loss: LM head at label positions only ---------------------------
    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """Batches with ``labels`` (align, sft, text SFT) get :func:`~mova.model.label_loss.label_loss`: the
        same loss as ``model(**inputs).loss`` without logits (and their float32 log-softmax) for prompts and
        visual tokens. Callers that want the outputs (evaluation's ``return_outputs``) and trainers with their
        own loss function or label smoothing take transformers' path."""
        if ("labels" not in inputs or return_outputs or self.compute_loss_func is not None
                or self.label_smoother is not None):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        from mova.model.label_loss import label_loss

        n = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss = label_loss(model, inputs, n)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and n is not None:
            # as transformers' Trainer.compute_loss: the gradient all-reduce averages what each rank divided
            loss = loss * (self.accelerator.num_processes // self.get_tp_size()
                           if self.args.n_gpu <= 1 else self.args.n_gpu)
        return loss

    # --- evaluation: the method's own loss on held-out batches -----------------------------------
    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[torch.Tensor | None, Any, Any]:
        """Batches with ``labels`` (LLaVA stages) are transformers' own; a method's batches (preference pairs)
        are scored with its ``compute_loss``, whose metrics are reported as ``eval_*``."""
        if "labels" in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach().mean(), None, None

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

    # --- state of a method's own, saved in checkpoints -----------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """JSON-able state a method keeps beside the model and optimizer (e.g. where its instruction-data
        stream is), written into every checkpoint; empty: nothing."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved (called when a run resumes from a checkpoint)."""

    def _load_rng_state(self, checkpoint: Any) -> None:
        super()._load_rng_state(checkpoint)
        path = os.path.join(checkpoint, EXTRA_STATE) if checkpoint else None
        if path and os.path.isfile(path):
            with open(path) as f:
                self.load_extra_state(json.load(f))

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """A wrapper that is not a ``PreTrainedModel`` (a reward model, a DPO policy pair) is saved as a bare
        state dict, which safetensors refuses when two names share one tensor: tied input and output
        embeddings, as in SmolLM2. Each shared tensor is written once; loading (not strict) fills the tie."""
        from transformers import PreTrainedModel

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if state_dict is None and not isinstance(model, PreTrainedModel) and not _is_peft(model):
            state_dict, seen = {}, set()
            for name, tensor in self.model.state_dict().items():
                key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)) \
                    if tensor.device.type != "meta" else None
                if key is not None and key in seen:
                    continue
                seen.add(key)
                state_dict[name] = tensor
        super()._save(output_dir, state_dict=state_dict)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Resuming a wrapper saved by :meth:`_save`: a tied name is missing from the file by design (its tensor
        was loaded under the other name). transformers' own check reads attributes only a ``PreTrainedModel``
        has, so wrappers get this one; anything else missing or unexpected is still reported."""
        if hasattr(self.model, "_keys_to_ignore_on_save"):
            return super()._issue_warnings_after_load(load_result)
        by_storage: dict[Any, list[str]] = defaultdict(list)
        for name, tensor in self.model.state_dict().items():
            by_storage[(tensor.untyped_storage().data_ptr(), tensor.storage_offset())].append(name)
        tied = {n for names in by_storage.values() if len(names) > 1 for n in names}
        missing = [k for k in load_result.missing_keys if k not in tied]
        if missing:
            logger.warning("keys missing from the checkpoint, left as initialised: %s", missing)
        if load_result.unexpected_keys:
            logger.warning("keys in the checkpoint that the model does not have: %s", load_result.unexpected_keys)

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
            extra = self.extra_state()
            if extra:  # inside the staged folder, so it is published with the rest or not at all
                with open(os.path.join(run_dir, STAGING, name, EXTRA_STATE), "w") as f:
                    json.dump(extra, f)
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
        # how the run was spread, from the trainer itself (not the recipe): a run that asked for FSDP or
        # DeepSpeed and silently ran without it shows here
        "world_size": trainer.args.world_size,
        "sharding": "fsdp" if trainer.is_fsdp_enabled else "deepspeed" if trainer.is_deepspeed_enabled else None,
        **({"eval_losses": {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}}
           if any("eval_loss" in h for h in history) else {}),
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
