"""Frozen visual experts: the built-in families and :func:`build_expert`.

Families: ``clip`` (open_clip ViTs), ``sam`` (Segment Anything's image encoder), ``layoutlmv3``
(LayoutLMv3's visual branch), ``timm`` (any timm backbone) and ``ocr_text`` (RapidOCR words). Each family
module registers its class in :data:`~mova.model.experts.base.EXPERT_REGISTRY`; this package imports them
all (the registry's one materialisation point; importing ``mova.model.experts.base`` imports this package
first, so :func:`~mova.model.experts.base.build_expert` always sees every family), and the heavy libraries
are imported only when an expert of that family is built. A new family: a module with a ``@register_expert``
class, imported here.
"""

from __future__ import annotations

from mova.model.experts import clip, layoutlmv3, ocr_text, sam, timm_expert  # noqa: F401  (the built-in families)
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
