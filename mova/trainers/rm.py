"""Reward-model training (``mova train rm``) for text LMs and Mova VLMs, on the shared trainer.

A pair batch is laid out by :mod:`mova.data.pairs` (by default prompt, image and both responses once
per pair, as a tree), so one forward pass gives both rewards of every pair
(:func:`~mova.rl.reward_model.pair_scores`). The loss is one of :mod:`mova.trainers.rm_loss`
(Bradley-Terry, label smoothing, soft labels on negative-strength pairs) with an optional adaptive
margin from each pair's preference strength, plus optional terms: an LM loss on the chosen responses, a
contrastive loss (SimCSE / SwAV) on reward-model features, and MetaRM's ascent step on policy samples
(:mod:`mova.trainers.metarm`). Label flipping edits the data once before training: the
``rm.flip_fraction`` weakest pairs by strength get chosen and rejected swapped.

Checkpoints, resume, the non-finite-loss guard, progress, TensorBoard and ``summary.json`` come from
:class:`~mova.trainers.base.MovaTrainer`, as for every other stage.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import set_seed

from mova.config import RunConfig, to_dict
from mova.data.batch import to_device
from mova.data.pairs import PairDataset, PairEncoder, pair_collator
from mova.data.preference import load_pairs_with_eval
from mova.errors import ConfigError
from mova.model.policy import load_policy, policy_kind, unwrap
from mova.rl.reward_model import RewardModel, pair_scores
from mova.trainers.base import MovaTrainer, resolve_resume, write_report
from mova.trainers.optim import part_options
from mova.trainers.rm_config import RmConfig
from mova.trainers.rm_loss import check_rm_loss_options, rm_loss, simcse_loss, swav_loss, weakest_pairs

logger = logging.getLogger(__name__)



def check_rm_config(rm: RmConfig, has_strength: bool) -> None:
    """Combinations the types and ranges of :class:`RmConfig` cannot refuse on their own."""
    check_rm_loss_options(rm.loss, rm.label_smoothing, rm.margin_scale, has_strength, rm.flip_fraction)


# --- data ----------------------------------------------------------------------------------------------
class PairView:
    """Some positions of a preference dataset (``keep``, default all), with chosen and rejected swapped at
    the ``flipped`` positions (label flipping). Positions are those of the underlying dataset."""

    def __init__(self, pairs: Any, flipped: set[int] | None = None, keep: list[int] | None = None):
        self.pairs = pairs
        self.flipped = set(flipped or ())
        self.positions = list(range(len(pairs))) if keep is None else list(keep)
        self.skipped = list(getattr(pairs, "skipped", []))

    def __len__(self) -> int:
        return len(self.positions)

    def _swap(self, pair: Any, i: int) -> Any:
        if i in self.flipped:
            pair.chosen, pair.rejected = pair.rejected, pair.chosen
            pair.meta = {**pair.meta, "label_flipped": True}
        return pair

    def __getitem__(self, k: int) -> Any:
        i = self.positions[k]
        return self._swap(self.pairs[i], i)

    def without_image(self, k: int) -> Any:
        i = self.positions[k]
        pair = self.pairs.without_image(i) if hasattr(self.pairs, "without_image") else self.pairs[i]
        return self._swap(pair, i)

    @property
    def has_image(self) -> list[bool]:
        flags = list(self.pairs.has_image) if hasattr(self.pairs, "has_image") else \
            [p.image is not None for p in self.pairs]
        return [flags[i] for i in self.positions]

    def summary(self) -> dict[str, Any]:
        base = self.pairs.summary() if hasattr(self.pairs, "summary") else {}
        return {**base, "flipped": len(self.flipped), "used": len(self.positions)}


def pair_strength(cfg: RunConfig, pairs: Any) -> torch.Tensor | None:
    """Each pair's strength mean (``[len(pairs)]``), from ``rm.strength_path`` or the pairs' own column."""
    from mova.data.strength import load_strength

    rm = cfg.section("rm")
    if rm.strength_path:
        return load_strength(rm.strength_path, pairs)["strength_mean"]
    records = getattr(pairs, "records", None)
    metas = [r.meta for r in records] if records is not None else [p.meta for p in pairs]
    present = ["strength_mean" in m for m in metas]
    if not any(present):
        return None
    if not all(present):
        missing = present.index(False)
        raise ConfigError(f"pair {missing} of {cfg.data.data_path} has no strength_mean column while others do")
    return torch.tensor([float(m["strength_mean"]) for m in metas], dtype=torch.float64)


# --- trainer -------------------------------------------------------------------------------------------
class RmTrainer(MovaTrainer):
    """``compute_loss`` is the reward-model loss; the loop, checkpoints and logging are the shared base."""

    def __init__(self, *args: Any, rm_options: RmConfig, strength: torch.Tensor | None = None,
                 meta: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rm_options = rm_options
        self.strength = strength
        self.meta = meta
        # compute_loss returns a per-pair mean: the base divides by gradient accumulation itself.
        self.model_accepts_loss_kwargs = False

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        if self.meta is None or self.state.global_step % self.rm_options.metarm_every:
            return super().training_step(model, inputs, num_items_in_batch)
        # MetaRM: step to theta' by ascending the difference loss on policy samples, take the BT gradient
        # there, and come back to theta before the optimizer applies that gradient to theta.
        before, after = self.meta.ascend(unwrap(model))
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            self.meta.restore()
        self._metrics["meta/difference_loss"].append(before)
        self._metrics["meta/difference_loss_after_ascent"].append(after)
        return loss

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        opts = self.rm_options
        n = int(inputs["pair_index"].numel())
        keep: Any = 1
        chosen_tokens = None
        if opts.lm_loss_weight:
            chosen_tokens = inputs["score_owner"] < n
            keep, where = torch.unique(inputs["score_pred"][chosen_tokens], return_inverse=True)
        r_c, r_r, out, (rows, cols) = pair_scores(model, inputs, n, logits_to_keep=keep)
        strength = None
        if self.strength is not None:
            strength = self.strength[inputs["pair_index"].cpu()].to(r_c.device, r_c.dtype)
        res = rm_loss(r_c, r_r, loss=opts.loss, label_smoothing=opts.label_smoothing, strength=strength,
                      margin_scale=opts.margin_scale)
        loss = res.losses.mean()
        metrics = res.metrics()
        metrics["loss/preference"] = loss.detach()
        if opts.lm_loss_weight:
            logits = out.logits[inputs["score_rows"][chosen_tokens], where]
            nll = F.cross_entropy(logits.float(), inputs["score_targets"][chosen_tokens])
            loss = loss + opts.lm_loss_weight * nll
            metrics["nll/chosen"] = nll.detach()
        if opts.contrastive != "none":
            aux = self.contrastive_loss(model, out.hidden_states[rows, cols], n)
            loss = loss + opts.contrastive_weight * aux
            metrics[f"loss/{opts.contrastive}"] = aux.detach()
        self.record_metrics(metrics)
        return (loss, out) if return_outputs else loss

    def contrastive_loss(self, model: torch.nn.Module, features: torch.Tensor, n: int) -> torch.Tensor:
        opts = self.rm_options
        feats = features[:n] - features[n:] if opts.contrastive_features == "difference" else features
        v1 = F.dropout(feats, opts.contrastive_dropout, training=True)
        v2 = F.dropout(feats, opts.contrastive_dropout, training=True)
        if opts.contrastive == "simcse":
            return simcse_loss(v1, v2, opts.contrastive_temperature)
        prototypes = unwrap(model).aux["swav"].weight
        return swav_loss(v1, v2, prototypes, opts.contrastive_temperature, opts.swav_epsilon, opts.swav_iterations)


# --- evaluation ----------------------------------------------------------------------------------------
@torch.no_grad()
def score_pair_dataset(rm: RewardModel, dataset: PairDataset, collator: Any, batch_size: int = 16,
                       device: Any = None, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards ``(r_c, r_r)`` of every pair of ``dataset``, by dataset position (one pass, no grad)."""
    device = device or rm.device
    was_training = rm.training
    rm.eval().to(device)
    r_c = torch.full((len(dataset),), float("nan"), dtype=torch.float64)
    r_r = torch.full((len(dataset),), float("nan"), dtype=torch.float64)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    for batch in tqdm(loader, desc="score pairs", disable=not progress):
        idx = batch["pair_index"]
        c, r, _, _ = pair_scores(rm, to_device(batch, device), len(idx))
        r_c[idx], r_r[idx] = c.double().cpu(), r.double().cpu()
    rm.train(was_training)
    return r_c, r_r


def preference_metrics(r_c: torch.Tensor, r_r: torch.Tensor) -> dict[str, float]:
    """Accuracy (chosen scored higher), mean margin and score means of scored pairs."""
    return {"accuracy": float((r_c > r_r).double().mean()), "margin": float((r_c - r_r).mean()),
            "chosen": float(r_c.mean()), "rejected": float(r_r.mean()), "pairs": int(r_c.numel())}


def build_pair_dataset(cfg: RunConfig, processor: Any, pairs: Any, template: str) -> PairDataset:
    encoder = PairEncoder(processor, template, max_length=cfg.data.max_length)
    return PairDataset(pairs, encoder, skip_invalid=cfg.data.skip_bad_records)


# --- entry point ---------------------------------------------------------------------------------------
def run_rm(cfg: RunConfig, train_positions: list[int] | None = None) -> dict[str, Any]:
    """Train a reward model end to end; returns the run summary (also written to ``output_dir``).

    ``train_positions`` trains on those pairs of the source only (the strength ensemble's held-out folds).
    """
    from mova.trainers.stages import check_eval, check_training_options, policy_dtype, training_arguments, zero_stage

    opts: RmConfig = cfg.section("rm")
    if zero_stage(cfg.train.deepspeed) == 3:
        raise ConfigError("reward-model training supports ZeRO-2 (scripts/zero2.json), not ZeRO-3: the final "
                          "save writes the head and backbone from full weights")
    check_training_options(cfg)  # before anything loads: a bad option fails at once
    set_seed(cfg.train.seed)
    pairs, eval_pairs = load_pairs_with_eval(cfg.data, cfg.train.seed)
    check_eval(cfg, eval_pairs is not None)
    strength_all = pair_strength(cfg, pairs)
    check_rm_config(opts, strength_all is not None)
    flipped: list[int] = []
    if opts.flip_fraction > 0:
        flipped = weakest_pairs(strength_all, opts.flip_fraction).tolist()
        strength_all = strength_all.clone()
        strength_all[flipped] = -strength_all[flipped]  # r_c - r_r under the swapped labels
    if flipped or train_positions is not None:
        pairs = PairView(pairs, set(flipped), train_positions)
        if strength_all is not None:
            strength_all = strength_all[torch.tensor(pairs.positions, dtype=torch.long)]
    backbone, processor = load_policy(cfg.init_from, cfg.model, dtype=policy_dtype(cfg))
    args = training_arguments(cfg)
    kind = policy_kind(backbone)
    backbone, trainable = kind.make_trainable(backbone, lora=cfg.train.lora, train_fusion=opts.train_fusion,
                                              unfreeze_experts=cfg.train.unfreeze_experts)
    model = RewardModel.from_backbone(backbone)
    hidden = model.score_head.in_features
    if opts.contrastive == "swav":
        model.aux["swav"] = torch.nn.Linear(hidden, opts.swav_prototypes, bias=False)
    trainable["score_head"] = hidden + 1
    template = cfg.data.template or kind.default_template(backbone, processor)
    dataset = build_pair_dataset(cfg, processor, pairs, template)
    strength = strength_all[torch.tensor(dataset.keep)].float() if strength_all is not None else None
    collator = pair_collator(opts.pair_encoding, processor.pad_token_id(), opts.max_tokens_per_row)
    eval_ds = build_pair_dataset(cfg, processor, eval_pairs, template) if eval_pairs is not None else None
    meta = None
    if opts.metarm_path:
        from mova.trainers.metarm import MetaRmStep, load_meta_set

        meta_set = load_meta_set(opts.metarm_path, PairEncoder(processor, template, max_length=cfg.data.max_length))
        meta = MetaRmStep(meta_set, collator, lr=opts.metarm_lr, batch_size=opts.metarm_batch_size,
                          seed=cfg.train.seed)
    trainer = RmTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_ds, data_collator=collator,
                        max_nonfinite_in_a_row=cfg.train.max_nonfinite_in_a_row,
                        group_by_modality_length=cfg.data.group_by_modality_length,
                        part_options=part_options(cfg.train),
                        rm_options=opts, strength=strength, meta=meta)
    resume = resolve_resume(args.output_dir, cfg.train.resume_from_checkpoint)
    trainer.train(resume_from_checkpoint=resume)
    if cfg.train.lora.r > 0 and cfg.train.lora.merge:
        model.backbone = kind.merge_adapters(model.backbone)
    final = Path(args.output_dir) / "final"
    extra: dict[str, Any] = {"stage": "rm", "template": template, "data": dataset.summary(),
                             "trainable_params": trainable, "final_model": str(final), "flipped_pairs": len(flipped)}
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        model.save_pretrained(final, processor, extra={"template": template})
    if eval_ds is not None:
        r_c, r_r = score_pair_dataset(model, eval_ds, collator, opts.eval_batch_size, args.device,
                                      progress=trainer.is_world_process_zero())
        extra["eval"] = preference_metrics(r_c, r_r)
    logged = [h for h in trainer.state.log_history if "rewards/margins" in h]
    extra["first_metrics"] = _rm_metrics(logged[0]) if logged else {}
    extra["last_metrics"] = _rm_metrics(logged[-1]) if logged else {}
    extra["config"] = to_dict(cfg)
    return write_report(trainer, args.output_dir, extra)


def _rm_metrics(entry: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in entry.items() if k.startswith(("rewards/", "loss/", "nll/", "meta/"))
            or k in ("loss", "step")}
