"""The training stages: ``align`` (fusion network only) and ``sft`` (fusion + LLM, full or LoRA).

A stage is a :class:`StageSpec` in :data:`STAGES`: which parts train and which template is the default.
``run_stage`` builds (or loads) the model, freezes what the stage keeps frozen, reads the data, and
hands everything to :class:`~mova.trainers.base.MovaTrainer`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed

from mova.config import RunConfig, to_dict
from mova.data.llava import LlavaDataset, MovaCollator, PackedCollator, dataset_summary, read_records
from mova.errors import ConfigError, UnknownNameError
from mova.model.builder import build_model, load_pretrained
from mova.model.modeling_mova import MovaForCausalLM
from mova.model.policy import policy_kind
from mova.trainers.base import MovaTrainer, resolve_resume, write_report

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    train_fusion: bool
    train_llm: bool
    #: template when the data config names none; ``None``: the model's own (``MovaConfig.template``).
    default_template: str | None
    #: text-only records train nothing when only the fusion network learns: leave them out.
    drop_text_only: bool = False


STAGES: dict[str, StageSpec] = {
    "align": StageSpec(train_fusion=True, train_llm=False, default_template="plain", drop_text_only=True),
    "sft": StageSpec(train_fusion=True, train_llm=True, default_template=None),
}


def stage_spec(name: str) -> StageSpec:
    if name not in STAGES:
        raise UnknownNameError("stage", name, STAGES)
    return STAGES[name]


def configure_trainable(model: MovaForCausalLM, spec: StageSpec, cfg: RunConfig) -> dict[str, int]:
    """Freeze everything, then unfreeze what the stage trains; returns trainable counts per part."""
    _, counts = policy_kind(model).make_trainable(model, lora=cfg.train.lora, train_llm=spec.train_llm,
                                                  train_fusion=spec.train_fusion,
                                                  unfreeze_experts=cfg.train.unfreeze_experts)
    logger.info("trainable parameters: %s", counts)
    return counts


def zero_stage(deepspeed: str | None) -> int:
    """The ZeRO stage of a DeepSpeed JSON (0 without one)."""
    if not deepspeed:
        return 0
    return int(json.loads(Path(deepspeed).read_text()).get("zero_optimization", {}).get("stage", 0))


def open_feature_cache(root: str, model: MovaForCausalLM) -> Any:
    """Open the cache of every frozen expert that has one; a stale cache raises, a missing one runs live."""
    from mova.data.feature_cache import FeatureCache

    cache = FeatureCache(root)
    frozen = [n for n, e in model.experts.items() if e.cfg.frozen]
    opened = cache.open_model(model, None)
    for name in set(opened) - set(frozen):
        cache.experts.pop(name, None)  # an expert being trained must run live
    logger.info("feature cache %s: cached experts %s; live: %s", root, sorted(cache.experts),
                sorted(set(model.experts) - set(cache.experts)))
    return cache


def training_arguments(cfg: RunConfig) -> TrainingArguments:
    t = cfg.train
    return TrainingArguments(
        output_dir=t.output_dir,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        bf16=t.bf16,
        fp16=t.fp16,
        activation_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=max(t.save_steps, 1),
        save_total_limit=t.save_total_limit,
        deepspeed=t.deepspeed,
        report_to=list(t.report_to),
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=t.use_cpu or not torch.cuda.is_available(),
        ddp_find_unused_parameters=True,
        disable_tqdm=True,
        save_only_model=False,
    )


def data_collator(cfg: RunConfig, pad_token_id: int) -> MovaCollator | PackedCollator:
    """Padded batches, or packed rows when ``data.packing`` (the per-device batch is then samples per batch)."""
    if cfg.data.packing:
        return PackedCollator(pad_token_id=pad_token_id, max_tokens=cfg.data.packing_max_tokens)
    return MovaCollator(pad_token_id=pad_token_id)


def run_stage(cfg: RunConfig) -> dict[str, Any]:
    """Train one stage end to end; returns the run summary (also written to ``output_dir``)."""
    spec = stage_spec(cfg.stage)
    if not cfg.data.data_path:
        raise ConfigError("data.data_path is required")
    set_seed(cfg.train.seed)
    if cfg.init_from:
        model, processor = load_pretrained(cfg.init_from, what="init_from")
    else:
        model, processor = build_model(cfg.model, load_weights=True)
    trainable = configure_trainable(model, spec, cfg)
    template = cfg.data.template or spec.default_template or model.config.template
    records = read_records(cfg.data.data_path)
    cache = open_feature_cache(cfg.data.feature_cache, model) if cfg.data.feature_cache else None
    dataset = LlavaDataset(records, processor, cfg.data, template, feature_cache=cache,
                           leave_out_text_only=spec.drop_text_only)
    if dataset.text_only_left_out:
        logger.info("%s: leaving out %d text-only record(s): nothing trains on them", cfg.stage,
                    dataset.text_only_left_out)
    args = training_arguments(cfg)
    trainer = MovaTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=data_collator(cfg, processor.tokenizer.pad_token_id),
        max_nonfinite_in_a_row=cfg.train.max_nonfinite_in_a_row,
        group_by_modality_length=cfg.data.group_by_modality_length,
    )
    resume = resolve_resume(args.output_dir, cfg.train.resume_from_checkpoint)
    trainer.train(resume_from_checkpoint=resume)
    final = Path(args.output_dir) / "final"
    if cfg.train.lora.r > 0 and cfg.train.lora.merge and spec.train_llm:
        policy_kind(model).merge_adapters(model)
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        processor.save_pretrained(final)
    data = dataset_summary(dataset)
    if data["skipped"]:
        logger.warning("%d record(s) skipped: %s", data["skipped"], data["skipped_by_reason"])
    return write_report(trainer, args.output_dir, {"stage": cfg.stage, "template": template, "data": data,
                                                   "trainable_params": trainable, "final_model": str(final),
                                                   "config": to_dict(cfg)})
