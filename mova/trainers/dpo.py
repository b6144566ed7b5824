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
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import set_seed

from mova.config import RunConfig, to_dict
from mova.data.batch import to_device
from mova.data.pairs import PairDataset, PairEncoder, pair_collator, response_logps
from mova.data.preference import load_pairs_with_eval
from mova.errors import ConfigError
from mova.model.policy import PolicyKind, load_policy, policy_kind
from mova.trainers.base import MovaTrainer, resolve_resume, write_report
from mova.trainers.dpo_config import DpoConfig
from mova.trainers.dpo_loss import check_loss_options, dpo_loss
from mova.trainers.instruction_mix import InstructionMix
from mova.trainers.optim import part_options

logger = logging.getLogger(__name__)


class DpoTrainer(MovaTrainer):
    """``compute_loss`` is DPO; everything else (loop, checkpoints, logging) is the shared base."""

    def __init__(self, *args: Any, dpo: DpoConfig, kind: PolicyKind, ref_model: torch.nn.Module | None = None,
                 ref_logps: tuple[torch.Tensor, torch.Tensor] | None = None, mix: InstructionMix | None = None,
                 eval_ref_logps: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        check_loss_options(dpo.loss_type, dpo.beta, dpo.label_smoothing)
        self.dpo = dpo
        self.kind = kind
        self.ref_model = ref_model
        self.ref_logps = ref_logps
        #: instruction batches whose NLL joins every step (``dpo.sft_data``); None: plain DPO.
        self.mix = mix
        #: precomputed reference log-probs of the held-out pairs (``pair_index`` counts within each dataset).
        self.eval_ref_logps = eval_ref_logps
        # compute_loss returns a per-pair mean: the base must divide by gradient accumulation itself.
        self.model_accepts_loss_kwargs = False

    @torch.no_grad()
    def reference_scores(self, model: torch.nn.Module, inputs: dict[str, Any],
                         n: int) -> tuple[torch.Tensor, torch.Tensor]:
        kind = self.dpo.reference
        if kind == "precomputed":
            idx = inputs["pair_index"].cpu()
            ref_c, ref_r = self.ref_logps if model.training else self.eval_ref_logps
            return ref_c[idx].to(self.args.device), ref_r[idx].to(self.args.device)
        if kind == "copy":
            if next(self.ref_model.parameters()).device != self.args.device:
                self.ref_model.to(self.args.device)
            return response_logps(self.ref_model, inputs, n, self.kind)[:2]
        with self.kind.adapters_disabled(model):
            return response_logps(model, inputs, n, self.kind)[:2]

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        n = int(inputs["pair_index"].numel())
        pi_c, pi_r, n_c, n_r = response_logps(model, inputs, n, self.kind)
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
        if self.mix is not None and self.dpo.sft_weight > 0 and model.training:
            # evaluation scores the preference pairs alone (and leaves the instruction stream where it was)
            instruction = self.mix.loss(model, self.args.device)
            loss = loss + self.dpo.sft_weight * instruction
            metrics["nll/instruction"] = instruction.detach()
        self.record_metrics(metrics)
        return (loss, out) if return_outputs else loss

    def extra_state(self) -> dict[str, Any]:
        return {"instruction_mix": self.mix.state_dict()} if self.mix is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.mix is not None and "instruction_mix" in state:
            self.mix.load_state_dict(state["instruction_mix"])


def check_reference(cfg: RunConfig) -> None:
    if cfg.dpo.reference == "adapters_off":
        if cfg.train.lora.r <= 0:
            raise ConfigError("dpo.reference=adapters_off needs LoRA (train.lora.r > 0): the reference is the "
                              "model with its adapters disabled")
        if cfg.dpo.train_fusion or cfg.train.unfreeze_experts:
            raise ConfigError("dpo.reference=adapters_off cannot train the fusion network or experts (disabling "
                              "the adapters would not undo those updates); use reference=copy or precomputed")


@torch.no_grad()
def precompute_reference(model: torch.nn.Module, dataset: PairDataset, collator: Any, kind: PolicyKind,
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
        lp_c, lp_r, _, _ = response_logps(model, to_device(batch, device), len(idx), kind)
        ref_c[idx], ref_r[idx] = lp_c.float().cpu(), lp_r.float().cpu()
    model.train(was_training)
    return ref_c, ref_r


def run_dpo(cfg: RunConfig) -> dict[str, Any]:
    """Train with DPO end to end; returns the run summary (also written to ``output_dir``)."""
    from mova.trainers.stages import check_eval, check_training_options, policy_dtype, training_arguments

    check_loss_options(cfg.dpo.loss_type, cfg.dpo.beta, cfg.dpo.label_smoothing)
    check_reference(cfg)
    set_seed(cfg.train.seed)
    check_training_options(cfg)  # before the model loads: a bad option fails at once
    model, processor = load_policy(cfg.init_from, cfg.model, dtype=policy_dtype(cfg))
    args = training_arguments(cfg)
    kind = policy_kind(model)
    ref_model = None
    if cfg.dpo.reference == "copy":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    model, trainable = kind.make_trainable(model, lora=cfg.train.lora, train_fusion=cfg.dpo.train_fusion,
                                           unfreeze_experts=cfg.train.unfreeze_experts)
    template = cfg.data.template or kind.default_template(model, processor)
    pairs, eval_pairs = load_pairs_with_eval(cfg.data, cfg.train.seed)
    check_eval(cfg, eval_pairs is not None)
    encoder = PairEncoder(processor, template, max_length=cfg.data.max_length)
    dataset = PairDataset(pairs, encoder, skip_invalid=cfg.data.skip_bad_records)
    eval_dataset = PairDataset(eval_pairs, encoder, skip_invalid=cfg.data.skip_bad_records) \
        if eval_pairs is not None else None
    collator = pair_collator(cfg.dpo.pair_encoding, processor.pad_token_id(), cfg.dpo.max_tokens_per_row)
    mix = None
    if cfg.dpo.sft_data:
        mix = InstructionMix(cfg.dpo.sft_data, model, processor, cfg.dpo.sft_template or template,
                             batch_size=cfg.dpo.sft_batch_size, image_folder=cfg.dpo.sft_image_folder,
                             feature_cache=cfg.dpo.sft_feature_cache, max_length=cfg.data.max_length,
                             seed=cfg.train.seed, where="dpo.sft_data")
    ref_logps = eval_ref_logps = None
    ref_seconds = 0.0
    if cfg.dpo.reference == "precomputed":
        t0 = time.perf_counter()
        ref_logps = precompute_reference(model, dataset, collator, kind, args.per_device_train_batch_size,
                                         args.device)
        if eval_dataset is not None:
            eval_ref_logps = precompute_reference(model, eval_dataset, collator, kind,
                                                  args.per_device_eval_batch_size, args.device)
        ref_seconds = time.perf_counter() - t0
    trainer = DpoTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        max_nonfinite_in_a_row=cfg.train.max_nonfinite_in_a_row,
        group_by_modality_length=cfg.data.group_by_modality_length,
        part_options=part_options(cfg.train),
        dpo=cfg.dpo,
        kind=kind,
        ref_model=ref_model,
        ref_logps=ref_logps,
        mix=mix,
        eval_ref_logps=eval_ref_logps,
    )
    resume = resolve_resume(args.output_dir, cfg.train.resume_from_checkpoint)
    trainer.train(resume_from_checkpoint=resume)
    extra: dict[str, Any] = {"eval": trainer.evaluate()} if eval_dataset is not None else {}
    final = Path(args.output_dir) / "final"
    if cfg.train.lora.r > 0 and cfg.train.lora.merge:
        trainer.model = model = kind.merge_adapters(model)
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        processor.save_pretrained(final)
    logged = [h for h in trainer.state.log_history if "rewards/margins" in h]
    return write_report(trainer, args.output_dir, {
        "stage": "dpo", "template": template, "data": dataset.summary(), "trainable_params": trainable,
        "final_model": str(final), "reference_seconds": round(ref_seconds, 3),
        "first_metrics": _dpo_metrics(logged[0]) if logged else {},
        "last_metrics": _dpo_metrics(logged[-1]) if logged else {}, **extra, "config": to_dict(cfg)})


def _dpo_metrics(entry: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in entry.items() if k.startswith(("rewards/", "logps/", "nll/")) or k in ("loss", "step")}
