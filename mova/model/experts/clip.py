"""CLIP ViT image towers built with open_clip (the LLaVA-style general-purpose expert).

Only the vision tower is built: the text tower of a CLIP model is never used by a VLM and would cost
memory (123M parameters for ViT-L-14). Features are the patch tokens of one transformer block
(``cfg.feature_layer``; LLaVA uses the penultimate one, ``-2``), optionally through the tower's final
norm ``ln_post`` (``cfg.final_norm``) and optionally with the CLS token first (``cfg.use_cls``).

The ``openai`` weights were trained with QuickGELU while open_clip's plain model configs use
``nn.GELU``; the architecture therefore follows the pretrained tag's ``quick_gelu`` flag when
``cfg.pretrained`` is a known tag, so the random-init tower and the loaded tower compute the same
function.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from mova.config import ExpertConfig
from mova.errors import ConfigError, UnknownNameError
from mova.model.experts.base import ImageTransform, RgbTransform, VisualExpert, register_expert

DEFAULT_MODEL = "ViT-L-14-336"
#: tiny random tower for tests and the demo: 64 px input, 8 px patches -> 8 x 8 grid, width 64.
TINY_EMBED_DIM = 32
TINY_VISION_CFG: dict[str, Any] = {"image_size": 64, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
#: preprocessing keys a pretrained tag (or a model config's ``preprocess_cfg``) may set.
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _load_state(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Strict load; a module built on the ``meta`` device gets the tensors assigned instead of copied."""
    on_meta = any(p.is_meta for p in module.parameters())
    module.load_state_dict(state_dict, strict=True, assign=on_meta)


@register_expert
class ClipExpert(VisualExpert):
    """An open_clip ``VisionTransformer`` (``cfg.model``: an open_clip model name, default ViT-L-14-336).

    ``cfg.kwargs`` override entries of the model's ``vision_cfg`` (``image_size``, ``layers``,
    ``patch_dropout``, ...); the keys ``embed_dim`` and ``quick_gelu`` override those model-level values.
    """

    family = "clip"

    def __init__(self, cfg: ExpertConfig):
        super().__init__(cfg)
        import open_clip
        from open_clip import CLIPVisionCfg
        from open_clip.model import _build_vision_tower  # builds the image tower alone, without the text tower

        self.model_name = "tiny" if cfg.tiny else (cfg.model or DEFAULT_MODEL)
        preprocess: dict[str, Any] = {}
        if cfg.tiny:
            embed_dim, vision_cfg, quick_gelu = TINY_EMBED_DIM, dict(TINY_VISION_CFG), False
        else:
            model_cfg = open_clip.get_model_config(self.model_name)
            if model_cfg is None:
                raise UnknownNameError("open_clip model", self.model_name, open_clip.list_models())
            embed_dim = model_cfg["embed_dim"]
            vision_cfg = copy.deepcopy(model_cfg["vision_cfg"])
            tag_cfg = self._tag_cfg()
            quick_gelu = bool(model_cfg.get("quick_gelu", False) or tag_cfg.get("quick_gelu", False))
            preprocess.update({k: v for k, v in model_cfg.get("preprocess_cfg", {}).items() if k in _PREPROCESS_KEYS})
            preprocess.update({k: v for k, v in tag_cfg.items() if k in _PREPROCESS_KEYS})
        kwargs = dict(cfg.kwargs)
        quick_gelu = bool(kwargs.pop("quick_gelu", quick_gelu))
        embed_dim = int(kwargs.pop("embed_dim", embed_dim))
        known = {f.name for f in dataclasses.fields(CLIPVisionCfg)}
        if set(kwargs) - known:
            raise ConfigError(
                f"clip expert {cfg.name!r}: unknown kwargs {sorted(set(kwargs) - known)}; open_clip's vision_cfg "
                f"takes {sorted(known)} (plus embed_dim, quick_gelu)"
            )
        vision_cfg.update(kwargs)
        if cfg.image_size:
            vision_cfg["image_size"] = cfg.image_size
        if vision_cfg.get("timm_model_name") or isinstance(vision_cfg.get("layers"), (list, tuple)):
            raise ConfigError(
                f"clip expert: open_clip model {self.model_name!r} has a timm or ResNet image tower, not a "
                "VisionTransformer; use the `timm` expert family for it"
            )
        self.embed_dim, self.vision_cfg, self.quick_gelu = embed_dim, vision_cfg, quick_gelu
        self.preprocess_cfg = preprocess
        self.visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)

        depth = len(self.visual.transformer.resblocks)
        if not -depth <= cfg.feature_layer < depth:
            raise ConfigError(
                f"clip expert {cfg.name!r}: feature_layer {cfg.feature_layer} is out of range for a "
                f"{depth}-block tower (use -{depth}..{depth - 1})"
            )
        #: index of the block whose output is returned (blocks after it are never run).
        self.layer_index = cfg.feature_layer % depth
        if cfg.final_norm and self.visual.attn_pool is not None:
            raise ConfigError(
                f"clip expert {cfg.name!r}: {self.model_name} pools with attention before ln_post, so ln_post "
                "cannot be applied to patch tokens; set final_norm: false"
            )

    def _tag_cfg(self) -> dict[str, Any]:
        """open_clip's pretrained config for ``(model, cfg.pretrained)`` when that is a known tag (local data)."""
        from open_clip.pretrained import get_pretrained_cfg

        if not self.cfg.pretrained:
            return {}
        return dict(get_pretrained_cfg(self.model_name, self.cfg.pretrained))

    # --- shape facts -------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.visual.grid_size
        return int(h), int(w)

    @property
    def num_prefix_tokens(self) -> int:
        # open_clip ViTs always carry one class token at position 0.
        return 1 if self.cfg.use_cls else 0

    @property
    def hidden_size(self) -> int:
        return int(self.visual.transformer.width)

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.visual.image_size
        return int(h), int(w)

    # --- behaviour ---------------------------------------------------------------------------
    def image_transform(self) -> ImageTransform:
        """open_clip's own eval transform (resize shortest side, center crop, normalise).

        Mean/std/interpolation come from the pretrained tag when it is known, else open_clip's OpenAI
        defaults, which is what every ``openai`` / LAION ViT checkpoint was trained with.
        """
        from open_clip import image_transform

        p = self.preprocess_cfg
        h, w = self.image_size
        inner = image_transform(
            (h, w) if h != w else h,
            is_train=False,
            mean=p.get("mean"),
            std=p.get("std"),
            resize_mode=p.get("resize_mode"),
            interpolation=p.get("interpolation"),
        )
        return RgbTransform(inner)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        x = visual._embeds(pixels.to(visual.conv1.weight.dtype))  # patchify, CLS, positions, ln_pre
        transformer = visual.transformer
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[: self.layer_index + 1]:
            x = block(x)
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        if self.cfg.final_norm:
            x = visual.ln_post(x)
        return x if self.cfg.use_cls else x[:, 1:]

    def load_pretrained(self) -> None:
        """Load ``cfg.pretrained`` through ``open_clip.create_model`` and keep its image tower.

        ``cfg.pretrained`` may be an open_clip tag for ``cfg.model`` (``openai``, ``laion2b_s32b_b82k``, ...),
        a local checkpoint file, or an ``hf-hub:org/repo`` / ``local-dir:/path`` open_clip identifier.
        open_clip resolves, downloads and converts the checkpoint (and resizes the position embedding
        when ``cfg.image_size`` differs from the checkpoint's); the full model is built transiently
        with exactly this expert's tower config so the state dict matches key for key.
        """
        import open_clip

        pretrained = self.cfg.pretrained
        if not pretrained:
            raise ConfigError(f"clip expert {self.cfg.name!r}: no `pretrained` weights named")
        if self.cfg.tiny:
            raise ConfigError(f"clip expert {self.cfg.name!r}: the tiny tower has no pretrained weights")
        name, tag = self.model_name, pretrained
        if pretrained.startswith(("hf-hub:", "local-dir:")):
            name, tag = pretrained, None
        model = open_clip.create_model(
            name,
            pretrained=tag,
            force_quick_gelu=self.quick_gelu,
            require_pretrained=True,
            # identical tower config -> identical keys and shapes (checkpoint positions are resized to it)
            embed_dim=self.embed_dim,
            vision_cfg=copy.deepcopy(self.vision_cfg),
            quick_gelu=self.quick_gelu,
        )
        _load_state(self.visual, model.visual.state_dict())
