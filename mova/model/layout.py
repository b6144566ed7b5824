"""Where each image's visual tokens go and which position ids they take.

The layout is a pure function of the configuration (expert grids, pooling, schemes, fusion type) and,
for the ``ocr_text`` expert, of how many word-piece tokens OCR read off each image. The processor uses it
to expand one ``<image>`` placeholder into the right number of image tokens; the model uses it to give
those tokens their position ids, in a forward pass and in ``generate()`` alike, without running the
experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mova.model.positions import block_layout, block_offsets, check_scheme


@dataclass(frozen=True)
class BlockSpec:
    """One expert's token block as the LLM sees it (after the fusion network's pooling)."""

    name: str
    input_kind: str  # "pixels" or "ocr"
    grid: tuple[int, int]  # patch grid before pooling
    num_prefix_tokens: int
    hidden_size: int
    pool: int
    scheme: str

    @property
    def pooled_grid(self) -> tuple[int, int]:
        h, w = self.grid
        return math.ceil(h / self.pool), math.ceil(w / self.pool)

    @property
    def max_tokens(self) -> int:
        h, w = self.pooled_grid
        return self.num_prefix_tokens + h * w

    @classmethod
    def from_dict(cls, d: dict) -> BlockSpec:
        return cls(
            name=d["name"],
            input_kind=d.get("input_kind", "pixels"),
            grid=tuple(d["grid"]),
            num_prefix_tokens=int(d.get("num_prefix_tokens", 0)),
            hidden_size=int(d.get("hidden_size", 0)),
            pool=int(d.get("pool", 1)),
            scheme=check_scheme(d.get("position_scheme", "full")),
        )


def grid_offsets(scheme: str, grid: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
    """Offsets of a block of prefix tokens (CLS) followed by a grid; prefix tokens come first."""
    offsets = block_offsets(scheme, grid)
    if num_prefix_tokens == 0:
        return offsets
    if scheme == "share_all":
        return torch.zeros(num_prefix_tokens + offsets.numel(), dtype=torch.long)
    return torch.cat([torch.arange(num_prefix_tokens), offsets + num_prefix_tokens])


class VisualLayout:
    """Token count and ``(local, advance)`` position layout of one image's visual tokens.

    Blocks appear in config order. With a ``qformer`` fusion, the pixel experts' blocks are replaced by
    one block of ``num_queries`` tokens (a ``1 x num_queries`` grid under ``qformer_scheme``); OCR text
    blocks stay separate because their tokens are words, not features to be summarised.
    """

    def __init__(self, blocks: list[BlockSpec], fusion_type: str = "mlp", num_queries: int = 0,
                 qformer_scheme: str = "full"):
        self.blocks = blocks
        self.fusion_type = fusion_type
        self.num_queries = num_queries
        self.qformer_scheme = check_scheme(qformer_scheme)
        # Layouts are small index tensors: always on the CPU, even when the model is built on meta.
        with torch.device("cpu"):
            self._static = self._static_offsets()

    @property
    def ocr_blocks(self) -> list[BlockSpec]:
        return [b for b in self.blocks if b.input_kind == "ocr"]

    def _static_offsets(self) -> list[torch.Tensor | None]:
        """Per block the offsets of a fixed-size block, ``None`` for variable OCR blocks."""
        out: list[torch.Tensor | None] = []
        if self.fusion_type == "qformer" and any(b.input_kind == "pixels" for b in self.blocks):
            out.append(grid_offsets(self.qformer_scheme, (1, self.num_queries)))
        for b in self.blocks:
            if b.input_kind == "ocr":
                out.append(None)
            elif self.fusion_type != "qformer":
                out.append(grid_offsets(b.scheme, b.pooled_grid, b.num_prefix_tokens))
        return out

    def _ocr_offsets(self, block: BlockSpec, n: int) -> torch.Tensor:
        return grid_offsets(block.scheme, (1, n)) if n else torch.zeros(0, dtype=torch.long)

    def image(self, ocr_lengths: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """``(local, advance)`` for one image; ``ocr_lengths`` gives one length per OCR block."""
        with torch.device("cpu"):
            return self._image(ocr_lengths)

    def _image(self, ocr_lengths: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        locals_, advances = [], []
        ocr_iter = iter(zip(self.ocr_blocks, ocr_lengths, strict=True) if self.ocr_blocks else ())
        for static in self._static:
            if static is None:
                block, n = next(ocr_iter)
                static = self._ocr_offsets(block, n)
            loc, adv = block_layout(static)
            locals_.append(loc)
            advances.append(adv)
        if not locals_:  # a text-only model (no experts): an image takes no tokens
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty
        return torch.cat(locals_), torch.cat(advances)

    def num_tokens(self, ocr_lengths: tuple[int, ...] = ()) -> int:
        return sum(s.numel() if s is not None else 0 for s in self._static) + sum(ocr_lengths)

    def num_positions(self, ocr_lengths: tuple[int, ...] = ()) -> int:
        return int(self.image(ocr_lengths)[1].sum())

    def batch(self, ocr_lengths: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated ``(local, advance)`` for a list of images, in order."""
        parts = [self.image(lens) for lens in ocr_lengths]
        if not parts:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
