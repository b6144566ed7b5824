"""Position-id schemes and the visual layout, checked against direct formulas."""

import pytest
import torch

from mova.config import FusionConfig
from mova.errors import UnknownNameError
from mova.model.fusion import build_layout
from mova.model.layout import BlockSpec
from mova.model.positions import block_offsets, position_ids_from_layout, positions_used


@pytest.mark.parametrize("scheme,expected", [("full", 4096), ("share_by_row", 64), ("share_by_col", 64),
                                             ("share_all", 1)])
def test_sam_grid_position_counts(scheme, expected):
    assert positions_used(scheme, (64, 64)) == expected


def test_offsets_match_formulas_on_rectangular_grid():
    h, w = 3, 5
    rc = [(r, c) for r in range(h) for c in range(w)]
    assert block_offsets("full", (h, w)).tolist() == [r * w + c for r, c in rc]
    assert block_offsets("share_by_row", (h, w)).tolist() == [r for r, _ in rc]
    assert block_offsets("share_by_col", (h, w)).tolist() == [c for _, c in rc]
    assert block_offsets("share_all", (h, w)).tolist() == [0] * (h * w)


def test_unknown_scheme_lists_known():
    with pytest.raises(UnknownNameError, match="share_by_row"):
        block_offsets("diagonal", (2, 2))


def _reference_positions(tokens, blocks, start=0):
    """Walk a token list ('t' text, 'p' pad, ('img', i)) the slow, obvious way."""
    out, nxt = [], start
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "p":
            out.append(None)
            i += 1
        elif tok == "t":
            out.append(nxt)
            nxt += 1
            i += 1
        else:
            for spec in blocks:  # one image: each block in order
                h, w = spec.pooled_grid
                ids = []
                for k in range(spec.num_prefix_tokens):
                    ids.append(0 if spec.scheme == "share_all" else k)
                p = 0 if spec.scheme == "share_all" else spec.num_prefix_tokens
                for r in range(h):
                    for c in range(w):
                        ids.append(p + {"full": r * w + c, "share_by_row": r, "share_by_col": c,
                                        "share_all": 0}[spec.scheme])
                out += [nxt + x for x in ids]
                nxt += max(ids) + 1
            i += sum(b.max_tokens for b in blocks)
    return out


@pytest.mark.parametrize("scheme", ["full", "share_by_row", "share_by_col", "share_all"])
def test_layout_positions_match_reference_walk(scheme):
    blocks = [BlockSpec("a", "pixels", (2, 3), 1, 8, 1, "full"), BlockSpec("b", "pixels", (4, 4), 0, 8, 2, scheme)]
    layout = build_layout(blocks, FusionConfig(type="mlp"))
    n_vis = layout.num_tokens()
    assert n_vis == (1 + 6) + 4
    tokens = ["p", "p", "t", "t", "img"] + ["_"] * (n_vis - 1) + ["t", "img"] + ["_"] * (n_vis - 1) + ["t", "t"]
    mask = torch.tensor([0 if t == "p" else 1 for t in tokens])
    is_img = [False] * len(tokens)
    for i, t in enumerate(tokens):
        if t == "img":
            for k in range(n_vis):
                is_img[i + k] = True
    is_img = torch.tensor(is_img)
    local, advance = torch.zeros(len(tokens), dtype=torch.long), mask.clone()
    vl, va = layout.batch([(), ()])
    local[is_img], advance[is_img] = vl, va
    pos = position_ids_from_layout(local, advance)
    expected = _reference_positions(tokens, blocks)
    got = [None if m == 0 else int(p) for p, m in zip(pos, mask)]
    assert got == expected


def test_qformer_layout_and_ocr_block():
    blocks = [BlockSpec("clip", "pixels", (8, 8), 0, 16, 1, "full"), BlockSpec("ocr", "ocr", (1, 16), 0, 64, 1, "full")]
    layout = build_layout(blocks, FusionConfig(type="qformer", num_queries=6, position_scheme="share_all"))
    assert layout.num_tokens((3,)) == 6 + 3
    assert layout.num_positions((3,)) == 1 + 3
    assert layout.num_positions((0,)) == 1
