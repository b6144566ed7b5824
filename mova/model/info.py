"""``mova model-info``: the token, position and parameter budget of a model config, from configs alone.

Users need this before training to budget the LLM's context: each expert's tokens, the positions they
take under its scheme, and how many parameters are frozen or trainable. Every module is built on the
``meta`` device, so a 7B config reports in seconds with no weights on disk and nothing downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from mova.config import ModelConfig
from mova.model.builder import build_mova_config
from mova.model.experts import build_expert
from mova.model.fusion import build_fusion
from mova.model.layout import grid_offsets


@dataclass
class ExpertRow:
    name: str
    family: str
    grid: str
    tokens: str
    scheme: str
    positions: str
    hidden: int
    frozen_params: int
    trainable_params: int


def count_params(module: nn.Module) -> tuple[int, int]:
    """(frozen, trainable) parameter counts."""
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return frozen, trainable


def human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def model_info(cfg: ModelConfig) -> dict:
    """Rows per expert plus totals, as plain data (the CLI formats it)."""
    mcfg = build_mova_config(cfg)
    layout = mcfg.layout()
    rows: list[ExpertRow] = []
    for ecfg, block in zip(mcfg.expert_configs(), mcfg.blocks()):
        with torch.device("meta"):
            frozen, trainable = count_params(build_expert(ecfg))
        if block.input_kind == "ocr":
            tokens, positions, grid = f"<={ecfg.max_tokens}", f"<={ecfg.max_tokens}", "words"
            if block.scheme == "share_all":
                positions = "<=1"
        else:
            h, w = block.pooled_grid
            tokens = str(block.max_tokens)
            offsets = grid_offsets(block.scheme, (h, w), block.num_prefix_tokens)
            positions = str(int(offsets.max()) + 1 if offsets.numel() else 0)
            grid = f"{block.grid[0]}x{block.grid[1]}" + (f"/{block.pool}" if block.pool > 1 else "")
            if mcfg.fusion_options().type == "qformer":
                tokens, positions = f"({tokens})", "(q-former)"
        rows.append(
            ExpertRow(
                block.name, ecfg.family, grid, tokens, block.scheme, positions, block.hidden_size, frozen, trainable
            )
        )
    with torch.device("meta"):
        fusion = build_fusion(mcfg.blocks(), mcfg.text_config.hidden_size, mcfg.fusion_options())
        llm = AutoModelForCausalLM.from_config(mcfg.text_config)
    ocr_max = tuple(b.max_tokens for b in layout.ocr_blocks)
    ocr_none = tuple(0 for _ in layout.ocr_blocks)
    return {
        "rows": rows,
        "fusion_type": mcfg.fusion_options().type,
        "fusion_params": sum(p.numel() for p in fusion.parameters()),
        "llm_params": sum(p.numel() for p in llm.parameters()),
        "llm_type": mcfg.text_config.model_type,
        "llm_hidden": mcfg.text_config.hidden_size,
        "context": mcfg.max_positions,
        "tokens_min": layout.num_tokens(ocr_none),
        "tokens_max": layout.num_tokens(ocr_max),
        "positions_min": layout.num_positions(ocr_none),
        "positions_max": layout.num_positions(ocr_max),
    }


def format_info(info: dict) -> str:
    """A plain-text table of :func:`model_info`'s result."""
    head = ["expert", "family", "grid", "tokens", "scheme", "positions", "hidden", "frozen", "trainable"]
    body = [
        [
            r.name,
            r.family,
            r.grid,
            r.tokens,
            r.scheme,
            r.positions,
            str(r.hidden),
            human(r.frozen_params),
            human(r.trainable_params),
        ]
        for r in info["rows"]
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    if not body:
        out = ["no visual experts: a text-only model (images take no tokens)"]

    def span(lo: int, hi: int) -> str:
        return str(lo) if lo == hi else f"{lo}-{hi}"

    context = info["context"]
    totals = [
        ("visual tokens per image", span(info["tokens_min"], info["tokens_max"])),
        ("positions per image", span(info["positions_min"], info["positions_max"])),
        ("LLM context (positions)", str(context)),
        ("text budget, one image", str(context - info["positions_max"]) if context else "n/a"),
        (f"fusion ({info['fusion_type']})", f"{human(info['fusion_params'])} trainable"),
        (f"LLM ({info['llm_type']}, width {info['llm_hidden']})", human(info["llm_params"])),
        ("experts", f"{human(sum(r.frozen_params for r in info['rows']))} frozen, "
                    f"{human(sum(r.trainable_params for r in info['rows']))} trainable"),
    ]
    pad = max(len(k) for k, _ in totals)
    out += [""] + [f"{k.ljust(pad)} : {v}" for k, v in totals]
    return "\n".join(out)
