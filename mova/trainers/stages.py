"""The training stages: ``align`` (fusion network only) and ``sft`` (fusion + LLM, full or LoRA).

A stage is a :class:`StageSpec` in :data:`STAGES`: which parts train and which template is the default.
``run_stage`` builds (or loads) the model, freezes what the stage keeps frozen, reads the data, and
hands everything to :class:`~mova.trainers.base.MovaTrainer`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed

from mova.config import RunConfig, to_dict
from mova.data.llava import MovaCollator, PackedCollator, dataset_summary, load_llava_data
from mova.errors import ConfigError, UnknownNameError
from mova.model.builder import build_model, load_pretrained
from mova.model.modeling_mova import MovaForCausalLM
from mova.model.policy import policy_kind
from mova.trainers.base import MovaTrainer, resolve_resume, write_report
from mova.trainers.optim import has_part_options, part_options

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


def training_arguments(cfg: RunConfig, deepspeed: bool = True) -> TrainingArguments:
    """transformers' ``TrainingArguments`` for a stage: Mova's fields (with their defaults and meanings), then
    every pass-through field the recipe sets (``optim``, ``fsdp``, ``eval_strategy`` ...), which wins.

    A value ``TrainingArguments`` itself refuses is a ConfigError naming the ``train.`` key it came from.
    ``deepspeed=False`` leaves ``train.deepspeed`` out (see :func:`check_training_options`)."""
    check_quantization(cfg)
    t = cfg.train
    base: dict[str, Any] = dict(
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
        deepspeed=deepspeed_for_trainer(cfg) if deepspeed else None,
        report_to=list(t.report_to),
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=t.use_cpu or not torch.cuda.is_available(),
        ddp_find_unused_parameters=True,
        disable_tqdm=True,
        save_only_model=False,
    )
    extra = dict(t.training_args)
    if extra.get("activation_checkpointing") is None and "activation_checkpointing" in extra:
        extra.pop("activation_checkpointing")
    if t.gradient_checkpointing and "activation_checkpointing" in extra:
        extra["activation_checkpointing"] = True  # either name turns it on
    extra = fsdp_current_form(extra)
    if extra.get("eval_strategy", "no") != "no" and "eval_steps" not in extra:
        extra["eval_steps"] = t.logging_steps  # transformers' own fallback; said here so the report shows it
    return build_training_arguments({**base, **extra}, extra)


#: transformers' older ``fsdp`` words as the FSDP2 ``fsdp_config`` entries that replace them (its own
#: translation, which it warns is deprecated; ``auto_wrap`` is FSDP2's default and needs no entry).
FSDP2_WORDS: dict[str, dict[str, Any]] = {"full_shard": {"reshard_after_forward": True},
                                          "shard_grad_op": {"reshard_after_forward": False},
                                          "offload": {"cpu_offload": True}, "auto_wrap": {}}


def fsdp_current_form(extra: dict[str, Any]) -> dict[str, Any]:
    """``train.fsdp: full_shard`` (the form most recipes and guides still use) as transformers' current one,
    ``fsdp: true`` plus ``fsdp_config`` entries, so the run does not lean on a path transformers deprecates.
    Entries the recipe sets in ``fsdp_config`` win. An FSDP1 setup (``fsdp_config.version: 1``, or a
    ``fsdp_config`` file) is left for transformers to read; an FSDP1-only strategy under FSDP2 is refused."""
    words = extra.get("fsdp")
    config = extra.get("fsdp_config")
    if not isinstance(words, str) or not (config is None or isinstance(config, dict)):
        return extra
    config = dict(config or {})
    if not words.split():
        return {k: v for k, v in extra.items() if k != "fsdp"}  # "" is transformers' "off"
    if int(config.get("version", 2)) != 2:
        return extra
    entries: dict[str, Any] = {}
    for word in words.split():
        if word not in FSDP2_WORDS:
            raise ConfigError(f"train.fsdp: {word!r} is an FSDP1 sharding strategy; FSDP2 (transformers' default) "
                              "takes full_shard or shard_grad_op. Set train.fsdp_config.version=1 to use FSDP1")
        entries.update(FSDP2_WORDS[word])
    return {**extra, "fsdp": True, "fsdp_config": {**entries, **config}}


def check_training_options(cfg: RunConfig) -> None:
    """Build the stage's ``TrainingArguments`` once before anything loads, so that a bad ``train.*`` option (or an
    FSDP launch that cannot shard) fails at once instead of after the model and data have loaded.

    Without ``train.deepspeed``: ``TrainingArguments`` with a DeepSpeed config registers it for the whole process,
    and a model built afterwards from a config would then be created under ZeRO-3's partitioned init before the
    process group exists (each rank would size its batch for a world of one). The stages build the real
    arguments after the model has loaded, as transformers' own scripts do."""
    check_fsdp_launch(training_arguments(cfg, deepspeed=False))


def check_fsdp_launch(args: TrainingArguments) -> None:
    """``train.fsdp`` works only where accelerate applies it: several processes launched together, on GPUs (or
    other accelerators). Elsewhere transformers refuses a lone process only once the model is loaded, and
    accelerate turns CPU processes into plain data parallelism without a word (each holding the whole model).
    Say so before anything loads, naming the key. Called by each stage right after :func:`training_arguments`
    (which, being pure config, stays callable anywhere)."""
    from transformers.training_args import ParallelMode

    if not args.fsdp or (args.fsdp_config or {}).get("xla"):
        return
    if args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise ConfigError("train.fsdp shards the model across processes, and this run is a single one: launch it "
                          "with torchrun --nproc_per_node N (or accelerate launch), or leave train.fsdp out")
    if args.device.type == "cpu":
        raise ConfigError(f"train.fsdp: accelerate applies FSDP only across GPUs (or other accelerators); these "
                          f"{args.world_size} CPU processes would train unsharded, each holding the whole model. "
                          "Leave train.fsdp out to train with plain data parallelism")


def check_quantization(cfg: RunConfig) -> None:
    """QLoRA's 4-bit weights cannot be sharded by ZeRO-3 or FSDP (they are packed bytes with quantization
    state, not tensors those engines can split and gather): refuse the combination before anything loads."""
    if not cfg.train.lora.quantization_bit:
        return
    if zero_stage(cfg.train.deepspeed) >= 3:
        raise ConfigError(f"train.lora.quantization_bit=4 with train.deepspeed={cfg.train.deepspeed} (ZeRO-3): 4-bit "
                          "weights cannot be partitioned; use ZeRO-2 (scripts/zero2.json) or no DeepSpeed")
    if cfg.train.training_args.get("fsdp"):
        raise ConfigError("train.lora.quantization_bit=4 with train.fsdp: 4-bit weights cannot be sharded by FSDP "
                          "here; use DDP or DeepSpeed ZeRO-2")


def build_training_arguments(kwargs: dict[str, Any], from_recipe: dict[str, Any]) -> TrainingArguments:
    """``TrainingArguments(**kwargs)``; when transformers refuses, the error names the recipe's key at fault
    (found by adding the recipe's pass-through keys one at a time to the rest), not only its own message."""
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError, ImportError) as e:
        culprit = None
        base = {k: v for k, v in kwargs.items() if k not in from_recipe}
        for key in from_recipe:
            try:
                TrainingArguments(**{**base, key: kwargs[key]})
            except (ValueError, TypeError, ImportError):
                culprit = key
                break
        where = f"train.{culprit}={kwargs[culprit]!r}" if culprit else \
            f"train ({', '.join(f'{k}={v!r}' for k, v in from_recipe.items()) or 'Mova fields'})"
        raise ConfigError(f"{where}: transformers' TrainingArguments refused it: {e}") from e


def deepspeed_for_trainer(cfg: RunConfig) -> str | dict[str, Any] | None:
    """The DeepSpeed JSON for transformers' Trainer. With per-part learning rates, a JSON that declares its own
    ``optimizer`` is given without it (as a dict): DeepSpeed would otherwise build one flat group and drop
    the parts' rates; the Trainer's optimizer (``train.optim``, with the parts' groups) is used instead."""
    t = cfg.train
    if not t.deepspeed or not has_part_options(t):
        return t.deepspeed
    ds = json.loads(Path(t.deepspeed).read_text())
    if "optimizer" in ds:
        logger.info("per-part learning rates: %s's optimizer block is left out; train.optim=%s builds the "
                    "optimizer with one parameter group per part", t.deepspeed,
                    t.training_args.get("optim", "adamw_torch_fused"))
        ds.pop("optimizer")
    return ds


def policy_dtype(cfg: RunConfig) -> str | None:
    """The dtype a method loads its policy in: ``model.dtype`` when the recipe sets it to something other than
    its default (float32), else None, which keeps :func:`~mova.model.policy.load_policy`'s rule (a Mova
    checkpoint's own dtype, float32 for a plain LM)."""
    default = next(f.default for f in dataclasses.fields(type(cfg.model)) if f.name == "dtype")
    return None if cfg.model.dtype == default else cfg.model.dtype


def activation_checkpointing(train: Any) -> bool:
    """Whether the recipe asks for activation (gradient) checkpointing, by either of transformers' names."""
    return bool(train.gradient_checkpointing or train.training_args.get("activation_checkpointing"))


def enable_activation_checkpointing(model: torch.nn.Module, train: Any = None) -> None:
    """Recompute activations in the backward pass for loops that drive the model themselves, as transformers'
    Trainer does for the stages. Non-reentrant by default (frozen inputs, LoRA and no-grad scoring passes all
    work); ``train.activation_checkpointing_kwargs`` (or the older ``gradient_checkpointing_kwargs``) wins."""
    from mova.model.policy import unwrap

    inner = unwrap(model)
    target = next((m for m in inner.modules() if hasattr(m, "activation_checkpointing_enable")), None)
    if target is None:
        raise ConfigError(f"train.gradient_checkpointing: {type(inner).__name__} cannot checkpoint activations")
    extra = getattr(train, "training_args", {}) if train is not None else {}
    kwargs = extra.get("activation_checkpointing_kwargs") or extra.get("gradient_checkpointing_kwargs") or \
        {"use_reentrant": False}
    target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)


def data_collator(cfg: RunConfig, pad_token_id: int) -> MovaCollator | PackedCollator:
    """Padded batches, or packed rows when ``data.packing`` (the per-device batch is then samples per batch)."""
    if cfg.data.packing:
        return PackedCollator(pad_token_id=pad_token_id, max_tokens=cfg.data.packing_max_tokens)
    return MovaCollator(pad_token_id=pad_token_id)


def check_eval(cfg: RunConfig, has_eval_data: bool) -> None:
    """``train.eval_strategy`` other than ``no`` needs held-out data; say which keys give it."""
    strategy = str(cfg.train.training_args.get("eval_strategy", "no"))
    if strategy != "no" and not has_eval_data:
        raise ConfigError(f"train.eval_strategy={strategy} needs held-out data: set data.eval_size (a share of the "
                          "training records), data.eval_data_path, or data.eval_split (each source's split)")


def run_stage(cfg: RunConfig) -> dict[str, Any]:
    """Train one stage end to end; returns the run summary (also written to ``output_dir``)."""
    spec = stage_spec(cfg.stage)
    if not cfg.data.data_path and not cfg.data.sources:
        raise ConfigError("data.data_path (or data.sources) is required")
    if cfg.data.streaming and cfg.train.max_steps <= 0:
        raise ConfigError("data.streaming: a stream has no length, so set train.max_steps (a number of steps)")
    check_training_options(cfg)  # before the model loads: a bad option fails at once
    set_seed(cfg.train.seed)
    if cfg.init_from:
        model, processor = load_pretrained(cfg.init_from, what="init_from")
    else:
        model, processor = build_model(cfg.model, load_weights=True)
    trainable = configure_trainable(model, spec, cfg)
    template = cfg.data.template or spec.default_template or model.config.template
    cache = open_feature_cache(cfg.data.feature_cache, model) if cfg.data.feature_cache else None
    data = load_llava_data(cfg.data, processor, template, seed=cfg.train.seed, feature_cache=cache,
                           leave_out_text_only=spec.drop_text_only)
    dataset = data.train
    check_eval(cfg, data.eval is not None)
    if getattr(dataset, "text_only_left_out", 0):
        logger.info("%s: leaving out %d text-only record(s): nothing trains on them", cfg.stage,
                    dataset.text_only_left_out)
    args = training_arguments(cfg)
    trainer = MovaTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=data.eval,
        data_collator=data_collator(cfg, processor.tokenizer.pad_token_id),
        max_nonfinite_in_a_row=cfg.train.max_nonfinite_in_a_row,
        group_by_modality_length=cfg.data.group_by_modality_length,
        part_options=part_options(cfg.train),
    )
    resume = resolve_resume(args.output_dir, cfg.train.resume_from_checkpoint)
    trainer.train(resume_from_checkpoint=resume)
    extra: dict[str, Any] = {}
    if data.eval is not None:
        extra["eval"] = trainer.evaluate()
    final = Path(args.output_dir) / "final"
    if cfg.train.lora.r > 0 and cfg.train.lora.merge and spec.train_llm:
        policy_kind(model).merge_adapters(model)
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        processor.save_pretrained(final)
    summary = dataset_summary(dataset)
    summary["sources"] = data.sources
    if summary["skipped"]:
        logger.warning("%d record(s) skipped: %s", summary["skipped"], summary["skipped_by_reason"])
    return write_report(trainer, args.output_dir, {"stage": cfg.stage, "template": template, "data": summary,
                                                   "trainable_params": trainable, "final_model": str(final),
                                                   **extra, "config": to_dict(cfg)})
