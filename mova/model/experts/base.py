"""The visual-expert interface and the registry that maps a family name to its class.

An expert is a frozen image encoder seen through one small interface:

* ``image_transform()`` turns a PIL image into the ``[3, H, W]`` tensor the encoder expects
  (resizing tiny or huge images to the encoder's resolution);
* ``forward(pixels)`` returns ``[B, N, D]`` features, ``N = num_prefix_tokens + h * w``;
* ``grid`` is the ``(h, w)`` patch grid, ``hidden_size`` is ``D``.

Experts are built without weights first (random init, or on the ``meta`` device when only their shapes
are needed, as ``mova model-info`` does) and then ``load_pretrained()`` fills in real weights from
``cfg.pretrained`` with the library users already use for that family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from mova.config import ExpertConfig
from mova.registry import Registry

ImageTransform = Callable[[Image.Image], torch.Tensor]


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto white (as transformers' ``convert_to_rgb``).

    A plain ``convert("RGB")`` would turn transparent pixels into whatever colour they store, usually
    black, which hides black text on transparent PNGs (screenshots, logos, rendered documents).
    """
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class RgbTransform:
    """``to_rgb`` then an optional inner transform; a class (not a closure) so DataLoader workers can pickle it."""

    def __init__(self, inner: Callable[[Image.Image], Any] | None = None):
        self.inner = inner

    def __call__(self, image: Image.Image) -> Any:
        image = to_rgb(image)
        return image if self.inner is None else self.inner(image)


class VisualExpert(nn.Module):
    """Base class of every expert family; subclasses set ``family`` and implement the abstract parts."""

    family: ClassVar[str] = ""
    #: ``"pixels"`` experts take ``[B, 3, H, W]`` tensors; ``"ocr"`` experts read words off the image.
    input_kind: ClassVar[str] = "pixels"

    def __init__(self, cfg: ExpertConfig):
        super().__init__()
        self.cfg = cfg

    # --- shape facts -------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of the features (prefix tokens such as CLS excluded)."""
        raise NotImplementedError

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the grid (CLS) that ``forward`` returns; 0 unless ``cfg.use_cls``."""
        return 0

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def num_tokens(self) -> int:
        h, w = self.grid
        return self.num_prefix_tokens + h * w

    # --- behaviour ---------------------------------------------------------------------------
    def image_transform(self) -> ImageTransform:
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def load_pretrained(self) -> None:
        """Load ``cfg.pretrained`` (local path or hub id) into this module."""
        raise NotImplementedError

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VisualExpert:
        # A frozen expert stays in eval mode (dropout, norm statistics) even inside model.train().
        return super().train(mode and not self.cfg.frozen)


EXPERT_REGISTRY: Registry[type[VisualExpert]] = Registry("expert family")


def register_expert(cls: type[VisualExpert]) -> type[VisualExpert]:
    """Class decorator: make ``cls`` buildable by its ``family`` name."""
    return EXPERT_REGISTRY.register(cls.family, cls)


def expert_class(family: str) -> type[VisualExpert]:
    """The class registered for ``family`` (an unknown one raises, listing the families)."""
    return EXPERT_REGISTRY[family]


def build_expert(cfg: ExpertConfig, load_weights: bool = False) -> VisualExpert:
    """Build the expert of ``cfg.family``; with ``load_weights`` also load ``cfg.pretrained``.

    Frozen experts (the default) have ``requires_grad=False`` and stay in eval mode.
    """
    expert = expert_class(cfg.family)(cfg)
    if load_weights and cfg.pretrained:
        expert.load_pretrained()
    if cfg.frozen:
        expert.freeze()
    return expert
