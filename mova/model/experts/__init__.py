"""Frozen visual experts and their registry; importing this package registers the built-in families.

Families: ``clip`` (open_clip ViTs), ``sam`` (Segment Anything's image encoder), ``layoutlmv3``
(LayoutLMv3's visual branch), ``timm`` (any timm backbone) and ``ocr_text`` (RapidOCR words). The
heavy libraries are imported only when an expert of that family is built.
"""

from mova.model.experts import clip, layoutlmv3, ocr_text, sam, timm_expert  # noqa: F401  (registers the families)
from mova.model.experts.base import (
    EXPERT_REGISTRY,
    ImageTransform,
    VisualExpert,
    build_expert,
    expert_class,
    register_expert,
    to_rgb,
)
from mova.model.experts.ocr_text import OcrWord

__all__ = [
    "EXPERT_REGISTRY",
    "ImageTransform",
    "OcrWord",
    "VisualExpert",
    "build_expert",
    "expert_class",
    "register_expert",
    "to_rgb",
]
