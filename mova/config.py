"""Typed configuration dataclasses, loadable from YAML with ``key=value`` command-line overrides.

A model config names its visual experts, its fusion network and its LLM. It is plain data: building a
:class:`~mova.model.modeling_mova.MovaConfig` from it, or reporting its token budget, needs no weights.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_type_hints

import yaml

from mova.errors import ConfigError


def bounded(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, choices: Any = None, **kw: Any) -> Any:
    """A dataclass field whose value :func:`from_dict` checks against a range and/or a set of choices.

    ``choices`` is a collection, or a function returning one (looked up when a value is checked, so a
    library's own list -- transformers' scheduler names -- is used without importing it here). Prefer a
    ``Literal[...]`` type hint for a fixed, short list.
    """
    meta = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices)) if v is not None}
    if "default_factory" in kw:
        return field(metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _scheduler_types() -> list[str]:
    from transformers import SchedulerType

    return [t.value for t in SchedulerType]


@dataclass
class ExpertConfig:
    """One frozen visual expert.

    ``model`` names the architecture in the family's own library (an open_clip model name, a SAM
    ``vit_b``/``vit_l``/``vit_h``, a timm model name, a LayoutLMv3 hub id or folder); ``pretrained``
    names the weights (a local path, a hub id, or an open_clip tag such as ``openai``). With ``tiny``
    the family builds a small randomly initialised encoder for tests and the demo.
    """

    family: str
    name: str | None = None
    model: str | None = None
    pretrained: str | None = None
    tiny: bool = False
    image_size: int | None = None
    #: which transformer layer's tokens to use (-1: last, -2: penultimate as in LLaVA).
    feature_layer: int = -1
    #: apply the encoder's final norm to the chosen layer (open_clip's ``ln_post``).
    final_norm: bool = False
    use_cls: bool = False
    #: k x k average pooling of the patch grid before fusion (1: none).
    pool: int = bounded(1, ge=1)
    position_scheme: str = "full"
    frozen: bool = True
    #: ``ocr_text`` only: at most this many word-piece tokens per image.
    max_tokens: int = bounded(64, ge=1)
    #: extra keyword arguments for the family's model constructor.
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = self.family
        if self.pool < 1:
            raise ConfigError(f"expert {self.name!r}: pool must be >= 1, got {self.pool}")


@dataclass
class FusionConfig:
    """The trainable bridge from expert features to the LLM's embedding space.

    ``mlp``: one 2-layer GELU projector per expert, token groups concatenated in config order.
    ``qformer``: ``num_queries`` learned queries cross-attend over every expert's projected features
    (plus an embedding per expert) and give a fixed number of tokens.
    """

    type: str = "mlp"
    num_queries: int = bounded(32, ge=1)
    num_layers: int = bounded(2, ge=1)
    num_heads: int = bounded(4, ge=1)
    hidden_size: int | None = None  # q-former width; defaults to the LLM width
    #: position scheme of the q-former's output tokens (seen as a 1 x num_queries grid).
    position_scheme: str = "full"


@dataclass
class LLMConfig:
    """The causal LLM: a hub id or local folder (``name_or_path``) and/or an inline config."""

    name_or_path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    #: tokenizer folder or hub id; defaults to ``name_or_path``.
    tokenizer: str | None = None


@dataclass
class ModelConfig:
    """A whole poly-expert VLM: experts, fusion network, LLM and prompt template."""

    experts: list[ExpertConfig] = field(default_factory=list)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    template: str = "vicuna_v1"
    dtype: Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "float32"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] = "sdpa"

    def __post_init__(self) -> None:
        names = [e.name for e in self.experts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"expert names must be unique; repeated: {dupes} (set `name:` on each)")

@dataclass
class DataSource:
    """One source of a data mixture (``data.sources``): a split of a Hub dataset, a local folder laid out like
    one, or a file (see :mod:`mova.data.sources`)."""

    #: a Hub dataset id, a local folder (parquet / JSON files, optionally a README.md ``configs:`` card), or a
    #: ``.json`` / ``.jsonl`` / ``.parquet`` file.
    path: str
    #: the dataset's config (subset) name, as ``datasets.load_dataset(path, name)`` takes it.
    name: str | None = None
    split: str = "train"
    #: this source's share of the mixture (normalised over the sources; null on every source: concatenate).
    ratio: float | None = bounded(None, gt=0)
    #: the folder its records' image paths are relative to; default: the folder, or the file's folder.
    image_folder: str | None = None
    #: rename columns to Mova's names (``{messages: conversations}``).
    columns: dict[str, str] = field(default_factory=dict)
    #: use only the first N rows of this source.
    limit: int | None = bounded(None, ge=1)


@dataclass
class DataConfig:
    """Where the data is and how strictly to treat it."""

    #: a LLaVA JSON / JSONL file, or (sft / align / dpo / rm) a Hub dataset id or a local folder laid out like
    #: one; ``sources`` names several instead.
    data_path: str = ""
    #: several sources, mixed by their ratios (instead of ``data_path``).
    sources: list[DataSource] = field(default_factory=list)
    #: how a ratio mixture ends: ``first_exhausted`` (repeat nothing) or ``all_exhausted`` (use everything,
    #: repeating the smaller sources), as in ``datasets.interleave_datasets``.
    mix_stopping: Literal["first_exhausted", "all_exhausted"] = "first_exhausted"
    #: read the sources as streams (sft / align; needs ``train.max_steps``): records are checked as they come.
    streaming: bool = False
    #: hold out this share (a fraction below 1) or number of the training records for evaluation.
    eval_size: float | None = bounded(None, gt=0)
    #: the folder the records' image paths are relative to; default: the data file's folder.
    image_folder: str | None = None
    #: chat template; ``None`` means the stage's default (``plain`` for align, the model's for sft).
    template: str | None = None
    #: longest sample in tokens (visual tokens included); ``None``: only the LLM's context limits.
    max_length: int | None = bounded(None, ge=1)
    skip_bad_records: bool = False
    #: open every image once before training (catches unreadable files early; costs a pass over images).
    verify_images: bool = True
    group_by_modality_length: bool = True
    #: a feature-cache folder (``mova cache-features``): training then never runs the cached experts.
    feature_cache: str | None = None
    #: pack several samples into each row (no padding; attention kept inside each sample). The per-device
    #: batch size then counts samples per packed batch.
    packing: bool = False
    #: longest packed row in tokens (a longer sample still gets a row of its own).
    packing_max_tokens: int = bounded(4096, ge=1)

    # --- which part of the source (SPA-VL and other hub sources; ``limit`` applies to every source) ---
    #: SPA-VL config and split (default / train; validation / validation).
    spavl_config: str = "default"
    split: str | None = None
    #: keep only rows whose SPA-VL harm classes are among these (empty: all).
    class1: list[str] = field(default_factory=list)
    class2: list[str] = field(default_factory=list)
    class3: list[str] = field(default_factory=list)
    #: use only the first N records (after filtering).
    limit: int | None = bounded(None, ge=1)

    # --- held-out data, scored after (or during, ``train.eval_strategy``) training ---
    #: a file, folder or Hub id of evaluation data; with ``sources`` and no path, ``eval_split`` of each source.
    eval_data_path: str | None = None
    eval_spavl_config: str = "validation"
    eval_split: str | None = None
    eval_limit: int | None = bounded(None, ge=1)



@dataclass
class LoraConfig:
    """LoRA through peft for the LLM in ``sft``; ``r: 0`` means full fine-tuning."""

    r: int = bounded(0, ge=0)
    alpha: int = bounded(16, gt=0)
    dropout: float = bounded(0.05, ge=0, lt=1)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    #: merge the adapters into the LLM when saving the final model.
    merge: bool = True
    #: QLoRA: load the LLM's linear layers in 4 bits through bitsandbytes (null: no quantization); LoRA
    #: adapters then train on the frozen quantized base. Names follow LLaMA-Factory.
    quantization_bit: Literal[4] | None = None
    #: 4-bit data type: nf4 (QLoRA's NormalFloat) or fp4.
    quantization_type: Literal["nf4", "fp4"] = "nf4"
    #: quantize the quantization constants too (about 0.4 bits per parameter saved).
    double_quantization: bool = True


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and reporting; names follow transformers' TrainingArguments.

    The fields below are the ones Mova gives its own default or meaning; any other ``TrainingArguments``
    field may be set too, by its own name (see ``training_args``). ``warmup_ratio`` is Mova's name for
    transformers' fractional ``warmup_steps``; a recipe that sets ``warmup_steps`` (a count, or a fraction
    below 1) overrides it.
    """

    output_dir: str = "runs/tiny"
    num_train_epochs: float = bounded(1.0, ge=0)
    #: -1: train for num_train_epochs instead.
    max_steps: int = bounded(-1, ge=-1)
    per_device_train_batch_size: int = bounded(8, ge=1)
    gradient_accumulation_steps: int = bounded(1, ge=1)
    learning_rate: float = bounded(1e-3, ge=0)
    weight_decay: float = bounded(0.0, ge=0)
    #: any of transformers' scheduler types (linear, cosine, constant, constant_with_warmup, ...).
    lr_scheduler_type: str = bounded("cosine", choices=_scheduler_types)
    warmup_ratio: float = bounded(0.03, ge=0, lt=1)
    max_grad_norm: float = bounded(1.0, ge=0)
    seed: int = 0
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = bounded(10, ge=1)
    #: 0: no intermediate checkpoints (the final model is always saved).
    save_steps: int = bounded(500, ge=0)
    #: keep the last N checkpoints.
    save_total_limit: int = bounded(2, ge=1)
    #: ``latest`` (the newest complete checkpoint in output_dir), a checkpoint path, or null.
    resume_from_checkpoint: str | None = None
    #: a DeepSpeed JSON config (scripts/zero2.json, zero3.json, zero3_offload.json).
    deepspeed: str | None = None
    #: ``tensorboard`` by default; add ``wandb`` to log there too; ``[]`` logs nowhere.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    dataloader_num_workers: int = bounded(0, ge=0)
    #: stop after this many non-finite (NaN/inf) losses in a row; each one's step is skipped.
    max_nonfinite_in_a_row: int = bounded(5, ge=1)
    #: names of experts to train too (they are frozen otherwise).
    unfreeze_experts: list[str] = field(default_factory=list)
    lora: LoraConfig = field(default_factory=LoraConfig)
    use_cpu: bool = False

    # --- per-part optimiser settings (null: ``learning_rate`` / ``weight_decay``), as parameter groups ---
    #: the fusion network (LLaVA's ``mm_projector_lr``).
    fusion_learning_rate: float | None = bounded(None, ge=0)
    #: the LLM (its LoRA adapters under LoRA).
    llm_learning_rate: float | None = bounded(None, ge=0)
    #: the experts named in ``unfreeze_experts``.
    experts_learning_rate: float | None = bounded(None, ge=0)
    fusion_weight_decay: float | None = bounded(None, ge=0)
    llm_weight_decay: float | None = bounded(None, ge=0)
    experts_weight_decay: float | None = bounded(None, ge=0)

    #: every other field of transformers' ``TrainingArguments`` a recipe sets (``optim``, ``fsdp``, ``tf32``,
    #: ``eval_strategy``, ``torch_compile``, ``push_to_hub``, ...). A recipe writes them under ``train:`` by
    #: their own names; they are gathered here, checked against transformers' dataclass, and written back
    #: under ``train:`` by :func:`to_dict`.
    training_args: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # ``cfg.train.optim`` reads a pass-through TrainingArguments field like a Mova one (only reached when
        # normal lookup fails, so the dataclass fields are untouched).
        extra = self.__dict__.get("training_args")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


#: the model parts :class:`TrainConfig` gives their own learning rate and weight decay.
PARTS = ("fusion", "llm", "experts")

#: TrainingArguments fields Mova sets itself, which a recipe may not: the trainers rely on their values.
RESERVED_TRAINING_ARGS: dict[str, str] = {
    "remove_unused_columns": "Mova's batches carry images and tree layouts the model's signature does not name",
    "label_names": "Mova's stages read their labels themselves",
    "disable_tqdm": "Mova draws its own progress bar",
}


def training_args_fields() -> dict[str, Any]:
    """transformers' ``TrainingArguments`` fields, name -> type hint (what a ``train:`` key may name)."""
    from transformers import TrainingArguments

    hints = get_type_hints(TrainingArguments)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(TrainingArguments) if f.init}


def _gather_training_args(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` (a ``train:`` mapping) with every key that is not a Mova field checked against transformers'
    ``TrainingArguments`` and moved under ``training_args``; an unknown or reserved key is a ConfigError."""
    import difflib

    own = {f.name for f in dataclasses.fields(TrainConfig)}
    extra = [k for k in data if k not in own]
    nested = data.get("training_args") or {}
    if not extra and not nested:
        return data
    if not isinstance(nested, dict):
        raise ConfigError(f"{where}.training_args: expected a mapping, got {nested!r}")
    fields = training_args_fields()
    out = {k: v for k, v in data.items() if k in own and k != "training_args"}
    gathered: dict[str, Any] = {}
    for key, value in [*nested.items(), *((k, data[k]) for k in extra)]:
        sub = f"{where}.{key}"
        if key in RESERVED_TRAINING_ARGS:
            raise ConfigError(f"{sub}: set by Mova, not by a recipe ({RESERVED_TRAINING_ARGS[key]})")
        if key in own:
            raise ConfigError(f"{sub}: a Mova field; write it as {where}.{key}, not under training_args")
        if key not in fields:
            near = difflib.get_close_matches(key, sorted(own | set(fields)), n=3)
            raise ConfigError(f"{sub}: unknown key: neither a Mova training option nor a field of transformers' "
                              f"TrainingArguments" + (f"; did you mean {', '.join(near)}?" if near else
                                                     " (docs/training_options.md lists them)"))
        gathered[key] = check_training_arg(key, fields[key], value, sub)
    out["training_args"] = gathered
    return out


def check_training_arg(name: str, hint: Any, value: Any, where: str) -> Any:
    """``value`` checked against TrainingArguments' hint for ``name``. A union with an Enum (``optim``,
    ``eval_strategy``, ``lr_scheduler_type`` ...) takes only the Enum's values, although the hint also says
    ``str``: transformers converts the string to the Enum and would refuse anything else later, less clearly."""
    import enum

    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
    if enums and isinstance(value, str):
        allowed = [e.value for e in enums[0]]
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if name == "fsdp" and isinstance(value, bool):
        return value  # transformers' current form (``fsdp: true`` + ``fsdp_config``), though its hint says str
    if name == "fsdp" and isinstance(value, list):
        value = " ".join(map(str, value))  # ``fsdp: [full_shard, auto_wrap]`` as TRL / accelerate users write it
    if name == "fsdp" and isinstance(value, str):
        from transformers.trainer_utils import FSDPOption

        known = [o.value for o in FSDPOption]
        bad = [w for w in value.split() if w not in known]
        if bad:
            raise ConfigError(f"{where}: {', '.join(map(repr, bad))} is not an FSDP option; the options are "
                              f"{', '.join(known)} (or true, with train.fsdp_config)")
    return check_value(hint, value, where)


#: The method sections a stage recipe may carry (``dpo:``, ``ppo:``, ...), each read into the config
#: dataclass that lives beside its trainer. Named here as ``module:class`` and imported only when a recipe
#: uses the section, so loading a recipe needs no import side effect and this module imports no trainer.
SECTIONS: dict[str, str] = {
    "dpo": "mova.trainers.dpo_config:DpoConfig",
    "rm": "mova.trainers.rm_config:RmConfig",
    "ppo": "mova.trainers.ppo_config:PpoConfig",
    "grpo": "mova.trainers.grpo_config:GrpoConfig",
    "curriculum": "mova.trainers.r3_config:CurriculumConfig",
    "sandbox": "mova.rl.sandbox:SandboxConfig",
}

#: Keys that moved, so an old recipe is told where its key went.
MOVED: dict[str, str] = {
    **{f"{section}.{key}": f"data.{key}" for section in ("dpo", "rm", "ppo")
       for key in ("spavl_config", "split", "class1", "class2", "class3", "limit")},
    **{f"rm.{key}": f"data.{key}" for key in ("eval_data_path", "eval_spavl_config", "eval_split", "eval_limit")},
}


def section_class(name: str) -> type:
    """The dataclass of method section ``name`` (imported on first use)."""
    if name not in SECTIONS:
        raise ConfigError(f"no config section {name!r}; known: {sorted(SECTIONS)}")
    module, _, attr = SECTIONS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class RunConfig:
    """One training stage: the model (a config, or ``init_from`` a saved checkpoint), data, training, and the
    method's own section (``cfg.dpo``, ``cfg.ppo``, ... -- see :data:`SECTIONS`)."""

    stage: str = "align"
    model: ModelConfig = field(default_factory=ModelConfig)
    #: a saved model to start from: a Mova checkpoint (e.g. the align stage's ``final`` folder), or a causal
    #: LM folder / hub id for the text methods.
    init_from: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: the method sections present in the recipe, by name (others read as their defaults).
    sections: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> Any:
        """Method section ``name`` (its defaults when the recipe has none)."""
        if name not in self.sections:
            self.sections[name] = section_class(name)()
        return self.sections[name]

    def __getattr__(self, name: str) -> Any:
        # ``cfg.dpo`` reads like a field for every method section, without RunConfig naming them all.
        if name in SECTIONS:
            return self.section(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, checking every value against its field's type hint (and
    :func:`bounded` ranges and choices); an error names the key, the bad value and what is allowed."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    if cls is TrainConfig:
        data = _gather_training_args(data, where or "train")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        moved = [f"{where}.{k} is now {MOVED[f'{where}.{k}']}" for k in unknown if f"{where}.{k}" in MOVED]
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}"
                          + (f" ({'; '.join(moved)})" if moved else f"; known: {sorted(fields)}"))
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        sub = f"{where}.{key}" if where else key
        kwargs[key] = check_value(hints[key], value, sub)
        _check_bounds(fields[key].metadata, kwargs[key], sub)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(hint)[0])}" if typing.get_args(hint) else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_value(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked (and where harmless, converted) against type hint ``hint``; raises ConfigError."""
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_value(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value or {}, where)
    if origin in (list, tuple) or hint in (list, tuple):
        if isinstance(value, str) and args and args[0] is str:
            value = [value]  # ``report_to=wandb`` means ``[wandb]``
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")
        item = args[0] if args else Any
        items = [check_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads ``5e-3`` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # ``output_dir: 2024`` is a name
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _check_bounds(meta: Any, value: Any, where: str) -> None:
    if value is None or not meta:
        return
    choices = meta.get("choices")
    if choices is not None:
        allowed = list(choices() if callable(choices) else choices)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
    for key, ok, text in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                          ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        if key in meta and not ok(value, meta[key]):
            raise ConfigError(f"{where}: must be {text} {meta[key]}, got {value!r}")


def to_dict(obj: Any) -> dict[str, Any]:
    """A config as plain data; a :class:`RunConfig`'s method sections sit at the top level, as in a recipe, so
    the dict a run reports can be written back as a recipe and loaded again."""
    data = _plain(obj)
    if isinstance(obj, RunConfig):
        data.update(data.pop("sections"))
    return data


def _plain(obj: Any) -> Any:
    """``dataclasses.asdict``, except that a :class:`TrainConfig`'s pass-through TrainingArguments fields sit
    beside its own fields, as a recipe writes them."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, TrainConfig):
            out.update(out.pop("training_args"))
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return copy.deepcopy(obj)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (list items addressed by index)."""
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for part in path[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        last = path[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def llm_source_wins(model: Any, overrides: list[str], prefix: str = "") -> None:
    """An override that points ``llm.name_or_path`` at a model makes that model's own ``config.json`` and
    tokenizer the LLM's: the inline ``llm.config`` and ``llm.tokenizer`` of the preset or file (the tiny
    preset's 64-wide shape) are dropped; only what the same overrides set (``llm.config.KEY=...``) applies on
    top of the folder's config. Without this,
    ``model-info tiny llm.name_or_path=FOLDER`` built a 2-layer model with the folder's name on it."""
    dotted = [".".join(parse_override(o)[0]) for o in overrides]
    if f"{prefix}llm.name_or_path" not in dotted or not isinstance(model, dict) or \
            not isinstance(model.get("llm"), dict):
        return
    model["llm"]["config"] = {}
    model["llm"]["tokenizer"] = None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_model_config(source: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """A preset name (``tiny``, ...) or a YAML file; a file may hold the model under ``model:``.

    Relative paths inside the file (``llm.name_or_path``, ``pretrained``) resolve against the file's
    folder when they exist there, so recipes can ship with small local files beside them.
    """
    from mova.presets import PRESETS, preset_dict

    if str(source) in PRESETS:
        data = preset_dict(str(source))
        base = None
    else:
        data = load_yaml(source)
        data = data.get("model", data)
        base = Path(source).resolve().parent
    llm_source_wins(data, overrides or [])
    data = apply_overrides(json.loads(json.dumps(data)), overrides or [])
    cfg = from_dict(ModelConfig, data, "model")
    if base is not None:
        _resolve_relative(cfg, base)
    return cfg


def load_run_config(path: str | Path | None, overrides: list[str] | None = None, stage: str | None = None) -> RunConfig:
    """A stage's YAML (``stage``, ``model``, ``init_from``, ``data``, ``train``) plus overrides.

    ``model`` may be a preset name (``model: tiny``) or an inline mapping; relative paths in the file
    (data, image folder, init_from) resolve against the file's folder when they exist there.
    """
    from mova.presets import PRESETS, preset_dict

    data = load_yaml(path) if path else {}
    if stage is not None:
        data["stage"] = stage
    base = Path(path).resolve().parent if path else Path.cwd()
    model_base = base
    overrides = list(overrides or [])
    # `model=NAME` on the command line picks a preset or model file as `model: NAME` in the file would
    # (and the `model.KEY=...` overrides after it then apply to that model)
    for item in [o for o in overrides if o.startswith("model=")]:
        data["model"] = item.split("=", 1)[1]
        overrides.remove(item)
    if isinstance(data.get("model"), str):
        name = data["model"]
        if name in PRESETS:
            data["model"] = preset_dict(name)
        else:
            model_file = base / name
            loaded = load_yaml(model_file)
            data["model"] = loaded.get("model", loaded)
            model_base = model_file.resolve().parent
    llm_source_wins(data.get("model"), overrides or [], "model.")
    data = apply_overrides(json.loads(json.dumps(data)), overrides or [])
    sections = {name: from_dict(section_class(name), data.pop(name) or {}, name) for name in list(data)
                if name in SECTIONS}
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(RunConfig)} - {"sections"})
    if unknown:
        raise ConfigError(f"{path or 'run config'}: unknown top-level key(s) {unknown}; known: "
                          f"{sorted({'stage', 'model', 'init_from', 'data', 'train', *SECTIONS})}")
    cfg = from_dict(RunConfig, data, "run")
    cfg.sections.update(sections)
    _resolve_relative(cfg.model, model_base)
    if path:
        for attr in ("data_path", "image_folder", "feature_cache", "eval_data_path"):
            value = getattr(cfg.data, attr)
            if value and not Path(value).is_absolute() and (base / value).exists():
                setattr(cfg.data, attr, str(base / value))
        for source in cfg.data.sources:
            for attr in ("path", "image_folder"):
                value = getattr(source, attr)
                if value and not Path(value).is_absolute() and (base / value).exists():
                    setattr(source, attr, str(base / value))
    return cfg


def _resolve_relative(cfg: ModelConfig, base: Path) -> None:
    def fix(p: str | None) -> str | None:
        if p and not Path(p).is_absolute() and (base / p).exists():
            return str(base / p)
        return p

    cfg.llm.name_or_path = fix(cfg.llm.name_or_path)
    cfg.llm.tokenizer = fix(cfg.llm.tokenizer)
    for e in cfg.experts:
        e.pretrained = fix(e.pretrained)
        e.model = fix(e.model)
