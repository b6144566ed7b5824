"""The trainable fusion network: expert features in, LLM-width visual tokens out.

Two designs, picked by ``FusionConfig.type`` through :data:`FUSION_REGISTRY`:

* ``mlp`` -- one 2-layer GELU projector per expert; each expert's tokens form their own block, blocks in
  config order. Cheap, keeps every token, and lets each block use its own position scheme.
* ``qformer`` -- learned queries cross-attend over all experts' projected features (each tagged with a
  learned per-expert embedding) and emit a fixed number of tokens, whatever the experts' grids.

OCR text blocks are words, not features: in both designs their tokens are embedded with the LLM's own
embedding table plus a learned projection of each word's box (zero-initialised, so an untrained model
sees exactly the words), and they follow the pixel blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mova.config import FusionConfig
from mova.errors import UnknownNameError
from mova.model.layout import BlockSpec, VisualLayout
from mova.registry import Registry


@dataclass
class VisualTokens:
    """All images' visual tokens, flattened in image order, with their position layout."""

    embeds: torch.Tensor  # [total_tokens, D]
    lengths: list[int]  # tokens per image


def pool_grid(x: torch.Tensor, spec: BlockSpec) -> torch.Tensor:
    """k x k average pooling of the grid tokens of ``x`` ([B, prefix + h*w, D]); prefix tokens kept."""
    if spec.pool == 1:
        return x
    p = spec.num_prefix_tokens
    h, w = spec.grid
    prefix, grid = x[:, :p], x[:, p:]
    grid = grid.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
    grid = F.avg_pool2d(grid, spec.pool, ceil_mode=True).flatten(2).transpose(1, 2)
    return torch.cat([prefix, grid], dim=1)


class OcrTextEmbedding(nn.Module):
    """Word-piece ids (``-1`` = padding) and boxes -> LLM embeddings + a learned box embedding."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.box_proj = nn.Linear(4, hidden_size)
        nn.init.zeros_(self.box_proj.weight)
        nn.init.zeros_(self.box_proj.bias)

    def forward(self, ids: torch.Tensor, boxes: torch.Tensor, embed_tokens: nn.Module) -> list[torch.Tensor]:
        valid = ids >= 0
        emb = embed_tokens(ids.clamp(min=0))
        emb = emb + self.box_proj(boxes.to(self.box_proj.weight.dtype)).to(emb.dtype)
        return [emb[i][valid[i]] for i in range(ids.shape[0])]


class FusionNetwork(nn.Module):
    """Base: turns ``{expert: features}`` and OCR inputs into :class:`VisualTokens`."""

    def __init__(self, blocks: list[BlockSpec], llm_hidden: int, cfg: FusionConfig):
        super().__init__()
        self.blocks = blocks
        self.cfg = cfg
        self.pixel_blocks = [b for b in blocks if b.input_kind == "pixels"]
        self.ocr = nn.ModuleDict({b.name: OcrTextEmbedding(llm_hidden) for b in blocks if b.input_kind == "ocr"})

    def pixel_tokens(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Fixed-size blocks for every image: a list of ``[num_images, n_block, D]``."""
        raise NotImplementedError

    def forward(self, features: dict[str, torch.Tensor], ocr_inputs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                embed_tokens: nn.Module, num_images: int) -> VisualTokens:
        pixel = self.pixel_tokens(features) if self.pixel_blocks else []
        ocr = {name: self.ocr[name](ids, boxes, embed_tokens) for name, (ids, boxes) in ocr_inputs.items()}
        per_image, lengths = [], []
        for i in range(num_images):
            parts = [blk[i] for blk in pixel] + [ocr[b.name][i] for b in self.blocks if b.input_kind == "ocr"]
            tokens = torch.cat(parts, dim=0)
            per_image.append(tokens)
            lengths.append(tokens.shape[0])
        return VisualTokens(embeds=torch.cat(per_image, dim=0), lengths=lengths)


FUSION_REGISTRY: Registry[type[FusionNetwork]] = Registry("fusion type")
register_fusion = FUSION_REGISTRY.register


@register_fusion("mlp")
class MLPFusion(FusionNetwork):
    """One ``Linear -> GELU -> Linear`` projector per expert; blocks kept apart, in config order."""

    def __init__(self, blocks: list[BlockSpec], llm_hidden: int, cfg: FusionConfig):
        super().__init__(blocks, llm_hidden, cfg)
        self.projectors = nn.ModuleDict({
            b.name: nn.Sequential(nn.Linear(b.hidden_size, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))
            for b in self.pixel_blocks
        })

    def pixel_tokens(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for b in self.pixel_blocks:
            proj = self.projectors[b.name]
            x = pool_grid(features[b.name], b).to(proj[0].weight.dtype)
            out.append(proj(x))
        return out


@register_fusion("qformer")
class QFormerFusion(FusionNetwork):
    """Learned queries cross-attending over every expert's projected, expert-tagged features."""

    def __init__(self, blocks: list[BlockSpec], llm_hidden: int, cfg: FusionConfig):
        super().__init__(blocks, llm_hidden, cfg)
        width = cfg.hidden_size or llm_hidden
        self.input_proj = nn.ModuleDict({b.name: nn.Linear(b.hidden_size, width) for b in self.pixel_blocks})
        self.expert_embed = nn.Parameter(torch.randn(len(self.pixel_blocks), width) * 0.02)
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, width) * 0.02)
        layer = nn.TransformerDecoderLayer(width, cfg.num_heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.num_layers, norm=nn.LayerNorm(width))
        self.output_proj = nn.Linear(width, llm_hidden)

    def pixel_tokens(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        dtype = self.queries.dtype
        memory = torch.cat([
            self.input_proj[b.name](pool_grid(features[b.name], b).to(dtype)) + self.expert_embed[i]
            for i, b in enumerate(self.pixel_blocks)
        ], dim=1)
        queries = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        return [self.output_proj(self.decoder(queries, memory))]


def build_fusion(blocks: list[BlockSpec], llm_hidden: int, cfg: FusionConfig) -> FusionNetwork:
    if cfg.type not in FUSION_REGISTRY:
        raise UnknownNameError("fusion type", cfg.type, FUSION_REGISTRY)
    return FUSION_REGISTRY[cfg.type](blocks, llm_hidden, cfg)


def build_layout(blocks: list[BlockSpec], cfg: FusionConfig) -> VisualLayout:
    """The :class:`VisualLayout` matching what :func:`build_fusion` with the same arguments emits."""
    if cfg.type not in FUSION_REGISTRY:
        raise UnknownNameError("fusion type", cfg.type, FUSION_REGISTRY)
    return VisualLayout(blocks, cfg.type, cfg.num_queries, cfg.position_scheme)
