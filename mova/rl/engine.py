"""One optimizer step for one trained model, on a single process, torch DDP, or DeepSpeed.

PPO trains two models (actor and critic) from its own loop rather than through transformers' Trainer, so
it needs what the Trainer otherwise provides: wrapping for data parallelism, the optimizer, global
gradient clipping, and checkpoints of the optimizer state. :class:`TrainEngine` is that, and no more:

* one process: the module and a torch AdamW;
* ``torch.distributed`` initialised, no DeepSpeed config: ``DistributedDataParallel`` (gradients averaged);
* a DeepSpeed JSON (``train.deepspeed``): ``deepspeed.initialize`` with the JSON's ``"auto"`` values
  filled from the run (micro batch, clipping, learning rate), so the ZeRO-2/3 files under ``scripts/``
  work unchanged. Two engines (actor and critic) live side by side, as in DeepSpeed-Chat.

Gradients are averaged over ranks by every wrapper, so a loss that should be a mean over the *global*
batch is computed as ``local_sum / global_count * world_size`` by the caller (see ``mova.rl.ppo_math``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_distributed() -> None:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def _fill_auto(cfg: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out[key] = _fill_auto(value, values.get(key, {}) if isinstance(values.get(key), dict) else values)
        elif value == "auto":
            if key not in values:
                raise ValueError(f"DeepSpeed config key {key!r} is 'auto' but PPO has no value for it")
            out[key] = values[key]
        else:
            out[key] = value
    return out


def deepspeed_config(path: str | Path, micro_batch: int, lr: float, weight_decay: float, max_grad_norm: float,
                     bf16: bool = False, fp16: bool = False) -> dict[str, Any]:
    """A DeepSpeed JSON with its ``"auto"`` entries filled for one PPO model."""
    cfg = json.loads(Path(path).read_text())
    values = {
        "train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch * world_size(), "gradient_clipping": max_grad_norm or 0.0,
        "enabled": False, "lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.999], "eps": 1e-8,
        "reduce_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e8, "stage3_param_persistence_threshold": 1e5,
    }
    cfg = _fill_auto(cfg, values)
    cfg.setdefault("bf16", {})["enabled"] = bf16
    cfg.setdefault("fp16", {})["enabled"] = fp16
    return cfg


class TrainEngine:
    """A model, its optimizer, its learning-rate schedule and its wrapper; ``backward`` then ``step`` once per
    minibatch.

    ``param_groups`` (optimizer groups, e.g. one per model part with its own rate) replace the plain list of
    trainable parameters. ``scheduler`` makes the schedule: a function of the optimizer (transformers'
    ``get_scheduler`` with the run's warmup and length), stepped after every optimizer step (by DeepSpeed
    when it owns the optimizer). Without DeepSpeed, ``fp16`` scales the loss (``torch.amp.GradScaler``) so
    that small fp16 gradients do not flush to zero; bf16 needs no scaling.
    """

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float = 0.0, max_grad_norm: float = 0.0,
                 deepspeed: str | None = None, micro_batch: int = 1, bf16: bool = False, fp16: bool = False,
                 param_groups: list[dict[str, Any]] | None = None,
                 scheduler: Callable[[torch.optim.Optimizer], Any] | None = None):
        self.module = model
        self.max_grad_norm = max_grad_norm
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("TrainEngine got a model with no trainable parameters")
        groups: Any = param_groups if param_groups is not None else self.params
        self.ds = None
        self.scheduler: Any = None
        self.scaler: Any = None
        self.zero_stage = 0
        if deepspeed:
            import deepspeed as ds

            config = deepspeed_config(deepspeed, micro_batch, lr, weight_decay, max_grad_norm, bf16, fp16)
            self.zero_stage = int(config.get("zero_optimization", {}).get("stage", 0))
            self.ds, self.optimizer, _, self.scheduler = ds.initialize(model=model, model_parameters=groups,
                                                                       config=config, lr_scheduler=scheduler)
            self.model: torch.nn.Module = self.ds
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
            self.scheduler = scheduler(self.optimizer) if scheduler is not None else None
            if fp16:
                self.scaler = torch.amp.GradScaler(next(model.parameters()).device.type)
            if world_size() > 1:
                self.model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
            else:
                self.model = model
        self.last_grad_norm = 0.0

    def gathered(self) -> Any:
        """A context in which every rank holds the module's whole weights and runs it as a plain module: under
        ZeRO-3 the partitions are gathered (read-only) for the block and DeepSpeed's per-module fetch hooks are
        taken off, then put back. Sampling needs this: it runs the model token by token outside the engine, a
        different number of times on each rank (responses end at different lengths), which the hooks' collective
        fetches would deadlock on. Otherwise nothing happens."""
        if self.ds is None or self.zero_stage < 3:
            return contextlib.nullcontext()
        return self._gathered_zero3()

    @contextlib.contextmanager
    def _gathered_zero3(self) -> Iterator[None]:
        import deepspeed as ds

        offload = getattr(self.ds.optimizer, "parameter_offload", None) or self.ds.optimizer
        with ds.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            for param in self.module.parameters():
                param.ds_active_sub_modules.clear()
            for hook in [*offload.forward_hooks, *offload.backward_hooks]:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
            try:
                yield
            finally:
                coordinator = getattr(offload, "param_coordinator", None)
                if coordinator is not None and not coordinator.is_invalid_trace():
                    coordinator._invalidate_trace()  # the fetch order it recorded no longer holds
                offload._register_deepspeed_module(offload.module)

    @property
    def lr(self) -> float:
        """The first parameter group's current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    def backward(self, loss: torch.Tensor) -> None:
        if self.ds is not None:
            self.ds.backward(loss)
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self) -> float:
        """Clip the gradients' global norm (when ``max_grad_norm`` > 0), step, advance the schedule, zero;
        returns the norm (before clipping)."""
        if self.ds is not None:
            self.ds.step()
            norm = self.ds.get_global_grad_norm()
            self.last_grad_norm = float(norm) if norm is not None else 0.0
            return self.last_grad_norm
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm and self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([
                torch.linalg.vector_norm(p.grad) for p in self.params if p.grad is not None])) \
                if any(p.grad is not None for p in self.params) else torch.zeros(())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_grad_norm = float(norm)
        return self.last_grad_norm

    def zero_grad(self) -> None:
        if self.ds is not None:
            self.ds.zero_grad()
        else:
            self.optimizer.zero_grad(set_to_none=True)

    # --- checkpoints ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """The trainable weights and optimizer state (every rank calls this; DeepSpeed writes shards)."""
        folder = Path(folder)
        if self.ds is not None:
            self.ds.save_checkpoint(str(folder), tag="engine")
            return
        if rank() == 0:
            folder.mkdir(parents=True, exist_ok=True)
            from safetensors.torch import save_file

            trainable = {n: p.detach().cpu().contiguous() for n, p in self.module.named_parameters() if p.requires_grad}
            save_file(trainable, str(folder / "trainable.safetensors"))
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            if self.scheduler is not None:
                torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
            if self.scaler is not None:
                torch.save(self.scaler.state_dict(), folder / "scaler.pt")

    def load(self, folder: str | Path) -> None:
        folder = Path(folder)
        if self.ds is not None:
            self.ds.load_checkpoint(str(folder), tag="engine")
            return
        from safetensors.torch import load_file

        weights = load_file(str(folder / "trainable.safetensors"))
        missing = [n for n, p in self.module.named_parameters() if p.requires_grad and n not in weights]
        if missing:
            raise ValueError(f"checkpoint {folder} lacks trainable weights {missing[:3]}...")
        named = dict(self.module.named_parameters())
        with torch.no_grad():
            for n, w in weights.items():
                named[n].copy_(w)
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        if self.scheduler is not None and (folder / "scheduler.pt").is_file():
            self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        if self.scaler is not None and (folder / "scaler.pt").is_file():
            self.scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=True))
