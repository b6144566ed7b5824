"""The model card (``README.md``) of an exported folder.

It says what the model is (experts with their tokens and position schemes, the fusion network, the
LLM), how it was trained (read from the ``summary.json`` files of the training runs behind the
checkpoint), how it scored (the tables of the evaluation folders given), and how to load it with and
without Mova, including the libraries the experts need. Everything here comes from files; nothing is
typed in by hand, and no credential is ever read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mova.export.errors import ExportError
from mova.model.info import human
from mova.model.layout import grid_offsets

#: summary.json keys shown in the training table, in order.
RECIPE_KEYS = ("stage", "global_step", "first_loss", "last_loss", "train_runtime_s")
#: evaluation reports read for the card, first found wins.
REPORT_FILES = ("results.md", "comparison.md")
#: training options shown per stage (``config.train``), when present.
TRAIN_KEYS = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps",
              "num_train_epochs", "warmup_ratio", "lr_scheduler_type", "weight_decay", "bf16")


@dataclass
class CardInputs:
    """What the card is written from."""

    model_name: str
    config: Any  # MovaConfig
    params: dict[str, int]
    requirements: dict[str, str]
    runs: list[dict[str, Any]] = field(default_factory=list)
    evals: list[tuple[str, str]] = field(default_factory=list)
    lora: dict[str, Any] | None = None
    license: str | None = None
    source: str = ""
    mova_version: str = ""


def architecture_table(config: Any) -> str:
    """One row per expert: family, model, tokens and positions per image, scheme; from the config alone."""
    rows = ["| expert | family | model | grid | tokens / image | positions / image | position scheme |",
            "|---|---|---|---|---|---|---|"]
    qformer = config.fusion_options().type == "qformer"
    for ecfg, block in zip(config.expert_configs(), config.blocks()):
        model = ecfg.model or ("tiny (random init)" if ecfg.tiny else "-")
        if ecfg.pretrained:
            model += f" ({ecfg.pretrained})"
        if block.input_kind == "ocr":
            grid, tokens, positions = "OCR words", f"<= {ecfg.max_tokens}", f"<= {ecfg.max_tokens}"
            if block.scheme == "share_all":
                positions = "<= 1"
        else:
            pooled = f", pooled {block.pool}x{block.pool}" if block.pool > 1 else ""
            grid = f"{block.grid[0]}x{block.grid[1]}{pooled}"
            offsets = grid_offsets(block.scheme, block.pooled_grid, block.num_prefix_tokens)
            tokens = str(block.max_tokens)
            positions = str(int(offsets.max()) + 1 if offsets.numel() else 0)
        if qformer:
            tokens, positions = f"({tokens} into the Q-Former)", "(Q-Former)"
        rows.append(f"| {block.name} | {ecfg.family} | {model} | {grid} | {tokens} | {positions} | {block.scheme} |")
    return "\n".join(rows)


def fusion_text(config: Any, params: dict[str, int]) -> str:
    opts = config.fusion_options()
    layout = config.layout()
    ocr_none = tuple(0 for _ in layout.ocr_blocks)
    ocr_max = tuple(b.max_tokens for b in layout.ocr_blocks)
    span = (lambda a, b: str(a) if a == b else f"{a}-{b}")  # noqa: E731
    options = ", ".join(f"{k}={v}" for k, v in sorted(config.fusion.items()) if k != "type" and v is not None)
    return (f"- Fusion network: `{opts.type}` ({options or 'defaults'}); {human(params.get('fusion', 0))} parameters.\n"
            f"- Visual tokens per image: {span(layout.num_tokens(ocr_none), layout.num_tokens(ocr_max))}, taking "
            f"{span(layout.num_positions(ocr_none), layout.num_positions(ocr_max))} position ids of the LLM's "
            f"context of {config.max_positions}.\n"
            f"- LLM: `{config.text_config.model_type}`, width {config.text_config.hidden_size}, "
            f"{getattr(config.text_config, 'num_hidden_layers', '?')} layers, {human(params.get('llm', 0))} "
            "parameters.\n"
            f"- Experts: {human(params.get('experts', 0))} parameters, frozen.\n"
            f"- Chat template: `{config.template}`; image placeholder `<image>` (token id {config.image_token_id}).")


def recipe_section(runs: list[dict[str, Any]], lora: dict[str, Any] | None) -> str:
    if not runs:
        text = "No training summary was found beside the checkpoint (`summary.json` of a Mova stage run)."
    else:
        head = "| " + " | ".join(RECIPE_KEYS) + " | data | options |"
        rows = [head, "|" + "---|" * (len(RECIPE_KEYS) + 2)]
        for run in runs:
            cells = [_cell(run.get(k)) for k in RECIPE_KEYS]
            data = (run.get("config") or {}).get("data", {}).get("data_path") or "-"
            train = (run.get("config") or {}).get("train", {})
            opts = ", ".join(f"{k}={train[k]}" for k in TRAIN_KEYS if train.get(k) not in (None, 0, 0.0, False))
            section = (run.get("config") or {}).get(str(run.get("stage")))
            if isinstance(section, dict):  # the stage's own options (e.g. dpo: beta, loss type, instruction mix)
                scalars = [f"{k}={Path(v).name if isinstance(v, str) and '/' in v else v}"
                           for k, v in section.items() if isinstance(v, (int, float, str)) and v != ""]
                opts += "; " + ", ".join(scalars[:16]) if scalars else ""
            lora_cfg = train.get("lora") or {}
            if lora_cfg.get("r"):
                opts += f", LoRA r={lora_cfg['r']} alpha={lora_cfg.get('alpha')}"
            rows.append("| " + " | ".join(cells + [f"`{Path(str(data)).name}`", opts or "-"]) + " |")
        text = "\n".join(rows)
    if lora:
        text += (f"\n\nLoRA adapters (rank {lora['rank']}, alpha {lora['alpha']}, on "
                 f"{', '.join(lora['target_modules'])}; {lora['modules']} modules) were merged into the LLM "
                 "at export.")
    return text


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def eval_section(evals: list[tuple[str, str]]) -> str:
    if not evals:
        return "No evaluation folder was given at export (`mova export --eval-dir DIR`)."
    return "\n\n".join(f"### {name}\n\n{table}" for name, table in evals)


def requirements_text(requirements: dict[str, str]) -> str:
    return "\n".join(f"- `{dist}` (imported as `{top}`)" for top, dist in requirements.items())


def render_card(inputs: CardInputs) -> str:
    c = inputs.config
    families = sorted({e.family for e in c.expert_configs()})
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text",
             "tags:", "- mova", "- vision-language", "- multimodal"] + [f"- {f}" for f in families]
    if inputs.license:
        front.append(f"license: {inputs.license}")
    front.append("---")
    name = inputs.model_name
    pip = " ".join(sorted({d.split("==")[0] for d in inputs.requirements.values()}))
    return "\n".join(front) + f"""

# {name}

A poly-visual-expert vision-language model trained with Mova: {len(c.experts)} frozen visual expert(s)
({", ".join(families)}) feed a trainable fusion network whose visual tokens are spliced into a causal LLM
in place of the `<image>` placeholder. Exported from `{inputs.source}` with Mova {inputs.mova_version}.

## Architecture

{architecture_table(c)}

{fusion_text(c, inputs.params)}

Position schemes: `full` gives every visual token its own position id; `share_by_row` / `share_by_col`
one id per grid row / column; `share_all` one id for the whole block. Text after an image continues
from the last id used, in training and in cached generation alike.

## Training recipe

{recipe_section(inputs.runs, inputs.lora)}

## Evaluation

{eval_section(inputs.evals)}

## Use

Without Mova (the model code ships in this folder; the experts' libraries must be installed):

```bash
pip install {pip}
```

```python
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{name}", trust_remote_code=True)
messages = [{{"role": "user", "content": "<image>\\nWhat is in the picture?"}}]
prompt = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
inputs = processor(prompt, images=["photo.jpg"])
out = model.generate(**inputs, max_new_tokens=64)
print(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:])[0])
```

With Mova installed, the same folder loads through Mova's classes:

```python
from mova.model.builder import load_pretrained

model, processor = load_pretrained("{name}")
```

Libraries the model code imports (from the environment it was exported in):

{requirements_text(inputs.requirements)}
"""


def read_runs(checkpoint: Path, extra: list[Path] | None = None) -> list[dict[str, Any]]:
    """Training summaries behind ``checkpoint``: its run's ``summary.json`` and those of the runs it was
    initialised from (``config.init_from``), oldest first; ``extra`` run folders are added as given."""
    runs: list[dict[str, Any]] = []
    seen: set[Path] = set()
    todo: list[Path] = [checkpoint] + list(extra or [])
    while todo:
        path = todo.pop(0).resolve()
        summary = next((f / "summary.json" for f in (path, path.parent) if (f / "summary.json").is_file()), None)
        if summary is None or summary in seen:
            continue
        seen.add(summary)
        try:
            run = json.loads(summary.read_text())
        except json.JSONDecodeError:
            continue
        runs.append(run)
        parent = (run.get("config") or {}).get("init_from")
        if parent:
            todo.append(Path(parent))
    return list(reversed(runs))


def read_eval_tables(folders: list[Path]) -> list[tuple[str, str]]:
    """``(title, markdown)`` per evaluation folder: the tables of its ``results.md`` (a run of ``mova eval``)
    or ``comparison.md`` (a suite over several checkpoints), or else a table of the flat numbers in its
    ``results.json`` / ``summary.json``."""
    out = []
    for folder in folders:
        md = next((folder / n for n in REPORT_FILES if (folder / n).is_file()), None)
        if md is not None:
            lines = md.read_text(encoding="utf-8").splitlines()
            tables = _tables(lines)
            out.append((folder.name, tables or "```\n" + "\n".join(lines).strip() + "\n```"))
            continue
        for name in ("results.json", "summary.json"):
            path = folder / name
            if path.is_file():
                flat = _flatten(json.loads(path.read_text(encoding="utf-8")))
                rows = ["| metric | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in flat.items()]
                out.append((folder.name, "\n".join(rows)))
                break
        else:
            raise ExportError(f"--eval-dir {folder}: no {', '.join(REPORT_FILES)}, results.json or summary.json "
                              "there")
    return out


def _tables(lines: list[str]) -> str:
    """The markdown tables of a report (with the heading line before each, when there is one)."""
    blocks: list[list[str]] = []
    heading = None
    current: list[str] = []
    for line in lines:
        if line.lstrip().startswith("|"):
            if not current and heading:
                current.append(heading + "\n")
            current.append(line)
            continue
        if current:
            blocks.append(current)
            current = []
        if line.startswith("#"):
            heading = "**" + line.lstrip("#").strip() + "**"
    if current:
        blocks.append(current)
    return "\n\n".join("\n".join(b) for b in blocks)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix.rstrip("/")] = data
    return out
