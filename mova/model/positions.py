"""Position-id schemes for visual token blocks.

A visual expert emits a grid of ``h x w`` tokens. Giving each token its own position id spends the
LLM's context quickly (SAM at 1024 px: 4096 ids per image), so each expert picks a *scheme* that maps
its tokens to local offsets. The block then occupies ``span = max(offset) + 1`` ids and the text after
it continues from there:

============== ============================== ============================
scheme         offset of token (r, c)          ids used by a 64 x 64 grid
============== ============================== ============================
full           ``r * w + c``                   4096
share_by_row   ``r``                           64
share_by_col   ``c``                           64
share_all      ``0``                           1
============== ============================== ============================

Sequences are described per token by two integers: ``local`` (the offset inside its block; 0 for text)
and ``advance`` (how many ids the token moves the running counter; 1 for text, the block's span on the
*last* token of a visual block and 0 on the others, 0 on padding). The position id of token ``i`` is
``exclusive_cumsum(advance)[i] + local[i]``, which is the same rule in training, in a prefill and in
every cached decoding step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mova.errors import UnknownNameError
from mova.registry import Registry

SchemeFn = Callable[[int, int], torch.Tensor]

#: name -> a function ``(h, w) -> LongTensor[h * w]`` of local position offsets.
POSITION_SCHEMES: Registry[SchemeFn] = Registry("position scheme")
register_scheme = POSITION_SCHEMES.register


@register_scheme("full")
def _full(h: int, w: int) -> torch.Tensor:
    return torch.arange(h * w)


@register_scheme("share_by_row")
def _by_row(h: int, w: int) -> torch.Tensor:
    return torch.arange(h).repeat_interleave(w)


@register_scheme("share_by_col")
def _by_col(h: int, w: int) -> torch.Tensor:
    return torch.arange(w).repeat(h)


@register_scheme("share_all")
def _share_all(h: int, w: int) -> torch.Tensor:
    return torch.zeros(h * w, dtype=torch.long)


def check_scheme(name: str) -> str:
    """Return ``name`` if it is a known scheme, else raise an error listing the known ones."""
    if name not in POSITION_SCHEMES:
        raise UnknownNameError("position scheme", name, POSITION_SCHEMES)
    return name


def block_offsets(scheme: str, grid: tuple[int, int]) -> torch.Tensor:
    """Local position offsets (row-major token order) of one ``grid`` block under ``scheme``."""
    h, w = grid
    return POSITION_SCHEMES[check_scheme(scheme)](h, w).long()


def positions_used(scheme: str, grid: tuple[int, int]) -> int:
    """How many distinct position ids a block of ``grid`` tokens occupies under ``scheme``."""
    h, w = grid
    if h * w == 0:
        return 0
    return int(block_offsets(scheme, grid).max()) + 1


def block_layout(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(local, advance)`` per token for one visual block with the given local ``offsets``."""
    local = offsets.long()
    advance = torch.zeros_like(local)
    if local.numel():
        advance[-1] = int(local.max()) + 1
    return local, advance


def position_ids_from_layout(local: torch.Tensor, advance: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Position ids ``start + exclusive_cumsum(advance) + local`` along the last dimension.

    ``start`` (one value per row) lets a cached decoding step continue from the prefix's next free id.
    """
    excl = torch.cumsum(advance, dim=-1) - advance
    start_t = torch.as_tensor(start, device=local.device)
    if start_t.dim() == 1:
        start_t = start_t.unsqueeze(-1)
    return start_t + excl + local

