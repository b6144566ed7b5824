"""DPO for Mova VLMs and plain text LMs, on the shared trainer (:class:`~mova.trainers.base.MovaTrainer`).

One trainer serves both: a pair with an image goes through the experts and the fusion network once
(:mod:`mova.data.pairs`), a text pair goes straight to the LLM. Checkpoints, resume, the non-finite-loss
guard, progress, TensorBoard and the run report are the base trainer's, so a DPO run is launched,
resumed and read exactly like ``align`` and ``sft``.

The reference policy is one of (``dpo.reference``):

* ``copy`` -- a frozen copy of the starting model (twice the weights in memory);
* ``adapters_off`` -- with LoRA, the same model with its adapters disabled (no second copy);
* ``precomputed`` -- the starting model's log-probs for every pair, computed in one pass before
  training (images included); training then runs no reference at all. Every process scores all pairs
  (simple and exact; on N GPUs the pass costs N times what a sharded one would).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import set_seed

from mova.config import RunConfig, to_dict
from mova.data.pairs import PaddedPairCollator, PairDataset, PairEncoder, SharedPromptCollator, response_logps
from mova.data.preference import load_pairs
from mova.errors import ConfigError, UnknownNameError
from mova.trainers.base import MovaTrainer, resolve_resume, write_report
from mova.trainers.dpo_loss import check_loss_options, dpo_loss

logger = logging.getLogger(__name__)

REFERENCES = ("copy", "adapters_off", "precomputed")
PAIR_ENCODINGS = {"shared": SharedPromptCollator, "padded": PaddedPairCollator}


def pair_collator(encoding: str, pad_token_id: int, max_tokens: int = 512) -> Any:
    if encoding not in PAIR_ENCODINGS:
        raise UnknownNameError("dpo.pair_encoding", encoding, PAIR_ENCODINGS)
    if encoding == "shared":
        return SharedPromptCollator(pad_token_id, max_tokens)
    return PaddedPairCollator(pad_token_id)


def _base(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP / DeepSpeed wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


class DpoTrainer(MovaTrainer):
    """``compute_loss`` is DPO; everything else (loop, checkpoints, logging) is the shared base."""

    def __init__(self, *args: Any, dpo: Any, is_mova: bool, ref_model: torch.nn.Module | None = None,
                 ref_logps: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        check_loss_options(dpo.loss_type, dpo.beta, dpo.label_smoothing)
        self.dpo = dpo
        self.is_mova = is_mova
        self.ref_model = ref_model
        self.ref_logps = ref_logps
        # compute_loss returns a per-pair mean: the base must divide by gradient accumulation itself.
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def _scores(self, model: torch.nn.Module, inputs: dict[str, Any], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        lp_c, lp_r, _, _ = response_logps(model, inputs, n, self.is_mova)
        return lp_c, lp_r

    @torch.no_grad()
    def reference_scores(self, model: torch.nn.Module, inputs: dict[str, Any],
                         n: int) -> tuple[torch.Tensor, torch.Tensor]:
        kind = self.dpo.reference
        if kind == "precomputed":
            idx = inputs["pair_index"].cpu()
            ref_c, ref_r = self.ref_logps
            return ref_c[idx].to(self.args.device), ref_r[idx].to(self.args.device)
        if kind == "copy":
            if next(self.ref_model.parameters()).device != self.args.device:
                self.ref_model.to(self.args.device)
            return self._scores(self.ref_model, inputs, n)
        inner = _base(model)
        lm = inner.language_model if self.is_mova else inner
        with lm.disable_adapter():
            return self._scores(inner, inputs, n)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        n = int(inputs["pair_index"].numel())
        pi_c, pi_r, n_c, n_r = response_logps(model, inputs, n, self.is_mova)
        ref_c, ref_r = self.reference_scores(model, inputs, n)
        out = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=self.dpo.beta, loss_type=self.dpo.loss_type,
                       label_smoothing=self.dpo.label_smoothing, chosen_tokens=n_c, rejected_tokens=n_r,
                       length_normalize=self.dpo.length_normalize)
        loss = out.losses.mean()
        metrics = out.metrics(pi_c.detach(), pi_r.detach())
        if self.dpo.rpo_alpha:
            nll = -(pi_c / n_c.clamp(min=1)).mean()
            loss = loss + self.dpo.rpo_alpha * nll
            metrics["nll/chosen"] = nll.detach()
        values = torch.stack(list(metrics.values())).float()
        values = self.accelerator.reduce(values, reduction="mean")
        for name, value in zip(metrics, values.tolist()):
            self._metrics[name].append(value)
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metrics:
            logs.update({k: sum(v) / len(v) for k, v in self._metrics.items()})
            self._metrics.clear()
        super().log(logs, start_time)


# --- model loading -----------------------------------------------------------------------------------
def load_policy(cfg: RunConfig) -> tuple[torch.nn.Module, Any, bool]:
    """``(model, processor_or_tokenizer, is_mova)``: a Mova checkpoint, a text LM, or a fresh Mova model."""
    from mova.model.builder import build_model, load_pretrained

    if not cfg.init_from:
        model, processor = build_model(cfg.model, load_weights=True)
        return model, processor, True
    from mova.model.checkpoints import resolve_checkpoint

    path = Path(resolve_checkpoint(cfg.init_from, "init_from"))
    config_file = path / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "mova":
        model, processor = load_pretrained(str(path))
        return model, processor, True
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.init_from)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
    return model, tokenizer, False


def configure_policy(model: torch.nn.Module, cfg: RunConfig,
                     is_mova: bool) -> tuple[torch.nn.Module, dict[str, int]]:
    """Freeze what DPO keeps fixed: the experts always (unless unfrozen), the fusion network unless asked."""
    from mova.trainers.stages import configure_llm_training

    return configure_llm_training(model, cfg, is_mova, cfg.dpo.train_fusion)


def check_reference(cfg: RunConfig) -> None:
    ref = cfg.dpo.reference
    if ref not in REFERENCES:
        raise UnknownNameError("dpo.reference", ref, REFERENCES)
    if ref == "adapters_off":
        if cfg.train.lora.r <= 0:
            raise ConfigError("dpo.reference=adapters_off needs LoRA (train.lora.r > 0): the reference is the "
                              "model with its adapters disabled")
        if cfg.dpo.train_fusion or cfg.train.unfreeze_experts:
            raise ConfigError("dpo.reference=adapters_off cannot train the fusion network or experts (disabling "
                              "the adapters would not undo those updates); use reference=copy or precomputed")


@torch.no_grad()
def precompute_reference(model: torch.nn.Module, dataset: PairDataset, collator: Any, is_mova: bool,
                         batch_size: int, device: torch.device | str,
                         progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting model's summed response log-probs for every pair, by dataset position (one pass)."""
    was_training = model.training
    model.eval().to(device)
    ref_c = torch.zeros(len(dataset))
    ref_r = torch.zeros(len(dataset))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    for batch in tqdm(loader, desc="reference log-probs", disable=not progress):
        idx = batch["pair_index"]
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else
                 ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v)
                 for k, v in batch.items()}
        lp_c, lp_r, _, _ = response_logps(model, batch, len(idx), is_mova)
        ref_c[idx], ref_r[idx] = lp_c.float().cpu(), lp_r.float().cpu()
    model.train(was_training)
    return ref_c, ref_r


def run_dpo(cfg: RunConfig) -> dict[str, Any]:
    """Train with DPO end to end; returns the run summary (also written to ``output_dir``)."""
    from mova.trainers.stages import training_arguments

    check_loss_options(cfg.dpo.loss_type, cfg.dpo.beta, cfg.dpo.label_smoothing)
    check_reference(cfg)
    set_seed(cfg.train.seed)
    model, processor, is_mova = load_policy(cfg)
    ref_model = None
    if cfg.dpo.reference == "copy":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    model, trainable = configure_policy(model, cfg, is_mova)
    template = cfg.data.template or (model.config.template if is_mova else
                                     ("tokenizer" if getattr(processor, "chat_template", None) else "raw"))
    pairs = load_pairs(cfg.data)
    encoder = PairEncoder(processor, template, max_length=cfg.data.max_length)
    dataset = PairDataset(pairs, encoder, skip_invalid=cfg.data.skip_bad_records)
    tokenizer = processor.tokenizer if is_mova else processor
    collator = pair_collator(cfg.dpo.pair_encoding, tokenizer.pad_token_id, cfg.dpo.max_tokens_per_row)
    args = training_arguments(cfg)
    ref_logps = None
    ref_seconds = 0.0
    if cfg.dpo.reference == "precomputed":
        t0 = time.perf_counter()
        ref_logps = precompute_reference(model, dataset, collator, is_mova, args.per_device_train_batch_size,
                                         args.device)
        ref_seconds = time.perf_counter() - t0
    trainer = DpoTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        max_nonfinite_in_a_row=cfg.train.max_nonfinite_in_a_row,
        group_by_modality_length=cfg.data.group_by_modality_length,
        dpo=cfg.dpo,
        is_mova=is_mova,
        ref_model=ref_model,
        ref_logps=ref_logps,
    )
    resume = resolve_resume(args.output_dir, cfg.train.resume_from_checkpoint)
    trainer.train(resume_from_checkpoint=resume)
    final = Path(args.output_dir) / "final"
    if cfg.train.lora.r > 0 and cfg.train.lora.merge:
        if is_mova:
            model.language_model = model.language_model.merge_and_unload()
        else:
            trainer.model = model = model.merge_and_unload()
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        processor.save_pretrained(final)
    logged = [h for h in trainer.state.log_history if "rewards/margins" in h]
    return write_report(trainer, args.output_dir, {
        "stage": "dpo", "template": template, "data": dataset.summary(), "trainable_params": trainable,
        "final_model": str(final), "reference_seconds": round(ref_seconds, 3),
        "first_metrics": _dpo_metrics(logged[0]) if logged else {},
        "last_metrics": _dpo_metrics(logged[-1]) if logged else {}, "config": to_dict(cfg)})


def _dpo_metrics(entry: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in entry.items() if k.startswith(("rewards/", "logps/", "nll/")) or k in ("loss", "step")}
