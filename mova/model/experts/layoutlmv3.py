"""The visual branch of LayoutLMv3 (transformers): a document-layout expert.

``LayoutLMv3Model(config)(pixel_values=...)`` runs on pixels alone and returns a CLS token followed by
the patch tokens (224 px, 16 px patches -> 14 x 14 for layoutlmv3-base). The model is built with
``text_embed=False``: a pixel-only forward never touches the text embeddings, and dropping them
saves ~40M parameters. The patch-embedding, position, spatial-bias and transformer weights are
exactly those of the full model, so ``load_pretrained`` copies them key for key.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from mova.config import ExpertConfig
from mova.errors import ConfigError
from mova.model.experts.base import ImageTransform, VisualExpert, register_expert, to_rgb

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "microsoft/layoutlmv3-base"
#: tiny random config for tests and the demo: 64 px, 16 px patches -> 4 x 4 grid, width 64.
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "input_size": 64,
    "patch_size": 16,
}
#: LayoutLMv3ImageProcessor's normalisation (IMAGENET_STANDARD_MEAN / STD).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


class LayoutLMv3Transform:
    """Resize to the square input size (PIL bilinear), scale to [0, 1], normalise with mean = std = 0.5.

    This is what ``LayoutLMv3ImageProcessor(apply_ocr=False)`` does; written out so that any image size
    (1 x 1 included, where transformers cannot infer the channel axis) and any mode work.
    """

    def __init__(self, size: tuple[int, int]):
        self.size = size
        self.mean = torch.tensor(MEAN, device="cpu").view(3, 1, 1)
        self.std = torch.tensor(STD, device="cpu").view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        h, w = self.size
        image = to_rgb(image).resize((w, h), Image.Resampling.BILINEAR)
        x = pil_to_tensor(image).float() / 255.0
        return (x - self.mean) / self.std


@register_expert
class LayoutLMv3Expert(VisualExpert):
    """LayoutLMv3 image tokens (``cfg.model``: hub id or local folder of the config; default layoutlmv3-base).

    ``cfg.kwargs`` override ``LayoutLMv3Config`` fields; ``cfg.image_size`` sets ``input_size`` (the
    checkpoint's position embeddings are interpolated on load).
    """

    family = "layoutlmv3"

    def __init__(self, cfg: ExpertConfig):
        super().__init__(cfg)
        from transformers import LayoutLMv3Model

        config = self._config()
        self.model = LayoutLMv3Model(config)

    def _config(self) -> Any:
        from transformers import LayoutLMv3Config

        cfg = self.cfg
        if cfg.tiny:
            config = LayoutLMv3Config(**TINY_CONFIG)
        else:
            name = cfg.model or DEFAULT_MODEL
            try:
                # The default's config is only read from the local cache: its values are known (below), so
                # building it never waits on the network.
                config = LayoutLMv3Config.from_pretrained(name, local_files_only=name == DEFAULT_MODEL)
            except OSError as e:
                if name != DEFAULT_MODEL:
                    raise ConfigError(
                        f"layoutlmv3 expert {cfg.name!r}: cannot load the config of {name!r} ({e}); give a local "
                        "folder with config.json or make the hub reachable"
                    ) from e
                # LayoutLMv3Config's defaults are layoutlmv3-base's vision architecture (hidden 768, 224 px,
                # 16 px patches); building without weights offline therefore needs no download.
                logger.info("config of %s not available offline; using LayoutLMv3Config() defaults", name)
                config = LayoutLMv3Config()
        for key, value in cfg.kwargs.items():
            if not hasattr(config, key):
                raise ConfigError(f"layoutlmv3 expert {cfg.name!r}: LayoutLMv3Config has no field {key!r}")
            setattr(config, key, value)
        if cfg.image_size:
            config.input_size = cfg.image_size
        config.text_embed = False
        config.visual_embed = True
        return config

    @property
    def input_size(self) -> tuple[int, int]:
        return _pair(self.model.config.input_size)

    @property
    def grid(self) -> tuple[int, int]:
        (h, w), (ph, pw) = self.input_size, _pair(self.model.config.patch_size)
        return h // ph, w // pw

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.cfg.use_cls else 0

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def image_transform(self) -> ImageTransform:
        return LayoutLMv3Transform(self.input_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.model.patch_embed.proj.weight.dtype)
        hidden = self.model(pixel_values=pixels).last_hidden_state  # [B, 1 + h * w, D], CLS first
        return hidden if self.cfg.use_cls else hidden[:, 1:]

    def load_pretrained(self) -> None:
        """``LayoutLMv3Model.from_pretrained(cfg.pretrained)`` (hub id or local folder), copied into this model.

        The text embeddings in the checkpoint are skipped (``text_embed=False``); every weight of the
        visual branch and encoder must match, and the position embeddings are interpolated when
        ``cfg.image_size`` differs from the checkpoint's input size.
        """
        from transformers import LayoutLMv3Model

        if not self.cfg.pretrained:
            raise ConfigError(f"layoutlmv3 expert {self.cfg.name!r}: no `pretrained` weights named")
        source = LayoutLMv3Model.from_pretrained(self.cfg.pretrained, text_embed=False)
        state = source.state_dict()
        own = self.model.state_dict()
        if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
            state["pos_embed"] = self._resize_pos_embed(state["pos_embed"], _pair(source.config.input_size))
        on_meta = any(p.is_meta for p in self.model.parameters())
        self.model.load_state_dict(state, strict=True, assign=on_meta)

    def _resize_pos_embed(self, pos_embed: torch.Tensor, old_input: tuple[int, int]) -> torch.Tensor:
        """``[1, 1 + H*W, D]`` -> the same for this model's grid (bicubic on the patch part, CLS kept)."""
        ph, pw = _pair(self.model.config.patch_size)
        old_grid = (old_input[0] // ph, old_input[1] // pw)
        cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, *old_grid, -1).permute(0, 3, 1, 2).float()
        patch_pos = F.interpolate(patch_pos, size=self.grid, mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1]).to(pos_embed.dtype)
        return torch.cat([cls_pos, patch_pos], dim=1)
