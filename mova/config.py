"""Typed configuration dataclasses, loadable from YAML with ``key=value`` command-line overrides.

A model config names its visual experts, its fusion network and its LLM. It is plain data: building a
:class:`~mova.model.modeling_mova.MovaConfig` from it, or reporting its token budget, needs no weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from mova.errors import ConfigError


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
    pool: int = 1
    position_scheme: str = "full"
    frozen: bool = True
    #: ``ocr_text`` only: at most this many word-piece tokens per image.
    max_tokens: int = 64
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
    num_queries: int = 32
    num_layers: int = 2
    num_heads: int = 4
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
    dtype: str = "float32"
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        names = [e.name for e in self.experts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"expert names must be unique; repeated: {dupes} (set `name:` on each)")

@dataclass
class DataConfig:
    """Where the data is and how strictly to treat it."""

    data_path: str = ""
    image_folder: str | None = None
    #: chat template; ``None`` means the stage's default (``plain`` for align, the model's for sft).
    template: str | None = None
    #: longest sample in tokens (visual tokens included); ``None``: only the LLM's context limits.
    max_length: int | None = None
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
    packing_max_tokens: int = 4096



@dataclass
class LoraConfig:
    """LoRA through peft for the LLM in ``sft``; ``r: 0`` means full fine-tuning."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    #: merge the adapters into the LLM when saving the final model.
    merge: bool = True


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and reporting; names follow transformers' TrainingArguments."""

    output_dir: str = "runs/tiny"
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 500
    #: keep the last N checkpoints.
    save_total_limit: int = 2
    #: ``latest`` (the newest complete checkpoint in output_dir), a checkpoint path, or null.
    resume_from_checkpoint: str | None = None
    #: a DeepSpeed JSON config (scripts/zero2.json, zero3.json, zero3_offload.json).
    deepspeed: str | None = None
    #: ``tensorboard`` by default; add ``wandb`` to log there too; ``[]`` logs nowhere.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    dataloader_num_workers: int = 0
    #: stop after this many non-finite (NaN/inf) losses in a row; each one's step is skipped.
    max_nonfinite_in_a_row: int = 5
    #: names of experts to train too (they are frozen otherwise).
    unfreeze_experts: list[str] = field(default_factory=list)
    lora: LoraConfig = field(default_factory=LoraConfig)
    use_cpu: bool = False


@dataclass
class DpoConfig:
    """Preference optimisation (``mova train dpo``); ``data.data_path`` names the pairs.

    ``data.data_path`` is a SPA-VL source (the hub id ``sqrti/SPA-VL`` or a local folder with its
    parquet layout) or a JSONL file of text pairs.
    """

    beta: float = 0.1
    #: sigmoid (DPO) | robust | hinge | ipo (mova.trainers.dpo_loss).
    loss_type: str = "sigmoid"
    #: sigmoid: conservative (cDPO) smoothing; robust: the assumed rate of flipped labels.
    label_smoothing: float = 0.0
    #: score responses by mean token log-prob instead of the sum (ipo always does).
    length_normalize: bool = False
    #: weight of an added negative log-likelihood of the chosen response, per token (RPO; TRL's rpo_alpha):
    #: keeps the chosen answers likely while their margin over the rejected ones grows. 0: plain DPO.
    rpo_alpha: float = 0.0
    #: copy (a frozen copy of the start model) | adapters_off (LoRA base, no second copy) |
    #: precomputed (reference log-probs computed in one pass before training).
    reference: str = "copy"
    #: shared (prompt and image encoded once per pair, responses packed as a tree) | padded.
    pair_encoding: str = "shared"
    #: longest packed row in tokens for pair_encoding=shared (a longer pair gets a row of its own).
    #: Attention under a dense tree mask costs the square of the row length, so short rows of one or two
    #: pairs are fastest (``python benchmarks/dpo.py --only rows`` times 512, 1024, one row and padded).
    max_tokens_per_row: int = 512
    #: train the fusion network too (the LLM always trains, fully or through LoRA).
    train_fusion: bool = False
    #: SPA-VL config and split (default / train; validation / validation).
    spavl_config: str = "default"
    split: str | None = None
    class1: list[str] = field(default_factory=list)
    class2: list[str] = field(default_factory=list)
    class3: list[str] = field(default_factory=list)
    #: use only the first N pairs (after filtering).
    limit: int | None = None


@dataclass
class RunConfig:
    """One training stage: the model (a config, or ``init_from`` a saved checkpoint), data, training."""

    stage: str = "align"
    model: ModelConfig = field(default_factory=ModelConfig)
    #: a saved Mova checkpoint to start from (e.g. the align stage's ``final`` folder).
    init_from: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    #: sections registered by other trainers (:func:`register_section`), typed, by name.
    sections: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> Any:
        """The registered section ``name`` (its defaults when the YAML has none)."""
        if name not in self.sections:
            if name not in SECTIONS:
                raise ConfigError(f"no config section {name!r}; registered: {sorted(SECTIONS)}")
            self.sections[name] = SECTIONS[name]()
        return self.sections[name]


#: Top-level YAML sections that trainers add to a stage recipe (``rm:``, ``ppo:``, ...): name -> dataclass.
SECTIONS: dict[str, type] = {}


def register_section(name: str, cls: type) -> None:
    """Let stage recipes carry a ``name:`` mapping read into dataclass ``cls`` (``RunConfig.section(name)``).

    A trainer registers its own options here so that the shared run config (model, data, train) does not
    grow a field per method.
    """
    reserved = {f.name for f in dataclasses.fields(RunConfig)}
    if name in reserved:
        raise ConfigError(f"config section name {name!r} is taken by RunConfig")
    SECTIONS[name] = cls


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, naming the unknown key if there is one."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        sub = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = value if isinstance(value, hint) else from_dict(hint, value or {}, sub)
        elif key == "experts":
            kwargs[key] = [e if isinstance(e, ExpertConfig) else from_dict(ExpertConfig, e, f"{sub}[{i}]")
                           for i, e in enumerate(value or [])]
        else:
            kwargs[key] = _coerce_number(hint, value, sub)
    return cls(**kwargs)


def _coerce_number(hint: Any, value: Any, where: str) -> Any:
    """YAML 1.1 reads ``5e-3`` (no dot) as a string; a float field takes it as the number it means."""
    if isinstance(value, str) and hint in (float, float | None, "float", "float | None"):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


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
    if isinstance(data.get("model"), str):
        name = data["model"]
        if name in PRESETS:
            data["model"] = preset_dict(name)
        else:
            model_file = base / name
            loaded = load_yaml(model_file)
            data["model"] = loaded.get("model", loaded)
            model_base = model_file.resolve().parent
    data = apply_overrides(json.loads(json.dumps(data)), overrides or [])
    sections = {name: from_dict(SECTIONS[name], data.pop(name) or {}, name) for name in list(data)
                if name in SECTIONS}
    cfg = from_dict(RunConfig, data, "run")
    cfg.sections.update(sections)
    _resolve_relative(cfg.model, model_base)
    if path:
        for attr in ("data_path", "image_folder", "feature_cache"):
            value = getattr(cfg.data, attr)
            if value and not Path(value).is_absolute() and (base / value).exists():
                setattr(cfg.data, attr, str(base / value))
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
