"""``mova export``: a Mova checkpoint as a Hugging Face release folder.

The folder holds everything a user of the Hub expects and nothing that needs Mova:

* ``model*.safetensors`` (sharded at ``max_shard_size``) and ``config.json`` with ``auto_map`` pointing
  at the bundled model code (:mod:`mova.export.bundle`), so ``AutoModelForCausalLM`` /
  ``AutoProcessor.from_pretrained(folder, trust_remote_code=True)`` work where Mova is not installed;
  with Mova installed the same folder loads through ``mova.model.builder.load_pretrained``;
* tokenizer files with the chat template written as Jinja (:mod:`mova.export.chat_template`),
  ``processor_config.json`` and ``generation_config.json``;
* ``requirements.txt`` (the libraries the bundled code imports) and ``README.md``, the model card
  (:mod:`mova.export.card`).

LoRA adapters left unmerged by training are merged on request (:mod:`mova.export.lora`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mova.export.bundle import HEADER, auto_map, build_bundle
from mova.export.card import CardInputs, read_eval_tables, read_runs, render_card
from mova.export.chat_template import jinja_template
from mova.export.errors import ExportError
from mova.export.lora import has_unmerged_lora, load_merged

logger = logging.getLogger(__name__)

#: files of an earlier export that a new one replaces (with ``overwrite``).
REPLACED_GLOBS = ("*.safetensors", "model.safetensors.index.json")


@dataclass
class ExportOptions:
    """What ``mova export`` is asked to do."""

    checkpoint: str
    out_dir: str
    #: merge LoRA adapters that training left unmerged (refused otherwise: the folder would not load).
    merge_lora: bool = False
    #: LoRA alpha when the run's ``summary.json`` is not beside the checkpoint.
    lora_alpha: float | None = None
    #: cast the weights (``bf16``, ``fp16``, ``fp32``); default: keep the checkpoint's dtype.
    dtype: str | None = None
    max_shard_size: str = "5GB"
    #: evaluation output folders whose ``results.md`` tables go into the card, in order.
    eval_dirs: list[str] = field(default_factory=list)
    #: extra training run folders (with ``summary.json``) for the card's recipe section.
    run_dirs: list[str] = field(default_factory=list)
    #: the model's name in the card (e.g. the Hub repo id); default: the folder's name.
    model_name: str | None = None
    license: str | None = None
    #: write into a folder that already holds files (an earlier export's weights are replaced).
    overwrite: bool = False


@dataclass
class ExportResult:
    folder: Path
    files: list[str]
    requirements: dict[str, str]
    lora: dict[str, Any] | None


def _prepare_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} is not empty; pass --overwrite to write the export into it")
        for pattern in REPLACED_GLOBS:
            for old in out.glob(pattern):
                old.unlink()
        for old in out.glob("*.py"):
            if old.read_text(encoding="utf-8", errors="replace").startswith(HEADER):
                old.unlink()
    out.mkdir(parents=True, exist_ok=True)


def load_checkpoint(options: ExportOptions) -> tuple[Any, Any, dict[str, Any] | None]:
    """``(model, processor, lora_info)``; refuses a checkpoint with unmerged adapters unless asked to merge."""
    from mova.model.builder import load_pretrained

    path = Path(options.checkpoint)
    if not (path / "config.json").is_file():
        raise ExportError(f"{path} is not a Mova checkpoint folder (no config.json)")
    if has_unmerged_lora(path):
        if not options.merge_lora:
            raise ExportError(f"{path} holds unmerged LoRA adapters; pass --merge-lora to fold them into the LLM "
                              "(a folder with adapters would not load as a plain model)")
        return load_merged(path, options.lora_alpha)
    if options.merge_lora:
        logger.warning("--merge-lora: %s holds no LoRA adapters; exporting it as it is", path)
    model, processor = load_pretrained(path)
    return model.eval(), processor, None


def _param_counts(model: Any) -> dict[str, int]:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"experts": count(model.experts), "fusion": count(model.fusion), "llm": count(model.language_model)}


def _set_generation_config(model: Any, tokenizer: Any) -> None:
    gen = model.generation_config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            setattr(gen, key, value)


def export_model(options: ExportOptions) -> ExportResult:
    """Write the release folder for ``options.checkpoint``; see the module docstring for its contents."""
    import mova
    from mova.model.builder import torch_dtype

    out = Path(options.out_dir)
    eval_tables = read_eval_tables([Path(d) for d in options.eval_dirs])  # fail before writing anything
    model, processor, lora = load_checkpoint(options)
    if options.dtype:
        model.to(torch_dtype(options.dtype))
    families = [e.family for e in model.config.expert_configs()]
    bundle = build_bundle(families)
    _prepare_folder(out, options.overwrite)

    _set_generation_config(model, processor.tokenizer)
    model.save_pretrained(out, max_shard_size=options.max_shard_size)
    template = jinja_template(model.config.template)
    if template is not None:
        processor.tokenizer.chat_template = template
    elif model.config.template != "tokenizer":
        logger.warning("template %r has no Jinja twin; the exported tokenizer keeps its own chat template",
                       model.config.template)
    processor.save_pretrained(out)
    bundle.write(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = auto_map(bundle)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # AutoProcessor reads processor_config.json first: its class name alone (unknown where Mova is not
    # installed) would stop it before config.json's auto_map.
    processor_path = out / "processor_config.json"
    processor_config = json.loads(processor_path.read_text()) if processor_path.is_file() else {}
    processor_config["auto_map"] = {"AutoProcessor": config["auto_map"]["AutoProcessor"]}
    processor_path.write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n")
    (out / "requirements.txt").write_text("\n".join(bundle.requirements.values()) + "\n")

    card = CardInputs(
        model_name=options.model_name or out.resolve().name,
        config=model.config,
        params=_param_counts(model),
        requirements=bundle.requirements,
        runs=read_runs(Path(options.checkpoint), [Path(d) for d in options.run_dirs]),
        evals=eval_tables,
        lora=lora,
        license=options.license,
        source=Path(options.checkpoint).name if Path(options.checkpoint).name != "final"
        else "/".join(Path(options.checkpoint).resolve().parts[-2:]),
        mova_version=mova.__version__,
    )
    (out / "README.md").write_text(render_card(card), encoding="utf-8")
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    logger.info("exported %s to %s (%d files)", options.checkpoint, out, len(files))
    return ExportResult(folder=out, files=files, requirements=bundle.requirements, lora=lora)

