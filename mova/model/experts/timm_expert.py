"""Any timm backbone as an expert: DINOv2 / EVA / SigLIP ViTs, ConvNeXt, ResNets, Swin, ...

Features come from ``forward_features``: a ViT's token sequence with its prefix tokens (CLS, register
tokens) removed, or a conv net's final feature map flattened row-major. The input size is the model's
own (``patch_embed.img_size`` for ViTs, the pretrained config's ``input_size`` otherwise, or
``cfg.image_size``), and the eval transform is timm's, forced to exactly that size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mova.config import ExpertConfig
from mova.errors import ConfigError, UnknownNameError
from mova.model.experts.base import ImageTransform, VisualExpert, register_expert, to_rgb

DEFAULT_MODEL = "vit_large_patch14_dinov2.lvd142m"
#: tiny random ViT for tests and the demo: 56 px, 14 px patches -> 4 x 4 grid (+ CLS), width 64.
TINY_MODEL = "vit_small_patch14_dinov2"
TINY_KWARGS: dict[str, Any] = {"img_size": 56, "embed_dim": 64, "depth": 2, "num_heads": 2}
#: ``cfg.pretrained`` values meaning "the model's default timm weights".
DEFAULT_WEIGHTS = ("timm", "default", "true")


class TimmTransform:
    """RGB conversion + timm's eval transform, with the output forced to exactly ``size``.

    timm's transform is resize + center crop to ``input_size``, which already gives that size; the
    final check only guards against crop modes that would not (it then resizes the tensor).
    """

    def __init__(self, inner: Any, size: tuple[int, int]):
        self.inner, self.size = inner, size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = self.inner(to_rgb(image))
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x[None], size=self.size, mode="bicubic", align_corners=False)[0]
        return x


@register_expert
class TimmExpert(VisualExpert):
    """A timm backbone (``cfg.model``: a timm model name, optionally with a pretrained tag).

    Built with ``timm.create_model(name, pretrained=False, num_classes=0, **cfg.kwargs)``, plus
    ``img_size=cfg.image_size`` when the model accepts it. With ``cfg.tiny`` and no ``cfg.model`` a
    2-block DINOv2-style ViT is built; with ``cfg.tiny`` and a model name, ``cfg.kwargs`` decide its size.
    """

    family = "timm"

    def __init__(self, cfg: ExpertConfig):
        super().__init__(cfg)
        if cfg.model:
            self.model_name = cfg.model
            kwargs: dict[str, Any] = {}
        else:
            self.model_name = TINY_MODEL if cfg.tiny else DEFAULT_MODEL
            kwargs = dict(TINY_KWARGS) if cfg.tiny else {}
        kwargs.update(cfg.kwargs)
        if cfg.image_size:
            kwargs["img_size"] = cfg.image_size
        self.create_kwargs = kwargs
        self.model = self._create(pretrained=False)
        self.input_size = self._input_size()

    def _create(self, **extra: Any) -> nn.Module:
        """``timm.create_model``; ``img_size`` is dropped for models that do not take it (conv nets)."""
        import timm

        if not timm.is_model(self.model_name):
            family = self.model_name.split(".")[0].split("_")[0]
            raise UnknownNameError("timm model", self.model_name, timm.list_models(f"{family}*"))
        kwargs = dict(self.create_kwargs)
        try:
            return timm.create_model(self.model_name, num_classes=0, **kwargs, **extra)
        except TypeError as e:
            if "img_size" not in kwargs or "img_size" not in str(e):
                raise
        # A model without an img_size argument (conv nets) works at any size: the transform decides it.
        kwargs.pop("img_size")
        self.create_kwargs = kwargs
        return timm.create_model(self.model_name, num_classes=0, **kwargs, **extra)

    def _input_size(self) -> tuple[int, int]:
        img_size = getattr(getattr(self.model, "patch_embed", None), "img_size", None)
        if img_size is not None:
            return int(img_size[0]), int(img_size[1])
        if self.cfg.image_size:
            return self.cfg.image_size, self.cfg.image_size
        from timm.data import resolve_data_config

        _, h, w = resolve_data_config({}, model=self.model)["input_size"]
        return int(h), int(w)

    @property
    def is_token_model(self) -> bool:
        """A plain ViT: ``forward_features`` gives ``[B, prefix + h*w, D]`` tokens."""
        grid = getattr(getattr(self.model, "patch_embed", None), "grid_size", None)
        return grid is not None and hasattr(self.model, "num_prefix_tokens") and self._output_fmt() != "NHWC"

    def _output_fmt(self) -> str:
        fmt = getattr(self.model, "output_fmt", "NCHW")
        return str(getattr(fmt, "value", fmt))

    @property
    def has_cls_token(self) -> bool:
        if not self.is_token_model or self.model.num_prefix_tokens == 0:
            return False
        return bool(getattr(self.model, "has_class_token", getattr(self.model, "cls_token", None) is not None))

    # --- shape facts -------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        if self.is_token_model:
            h, w = self.model.patch_embed.grid_size
            return int(h), int(w)
        reduction = int(self.model.feature_info[-1]["reduction"])
        return self.input_size[0] // reduction, self.input_size[1] // reduction

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.cfg.use_cls and self.has_cls_token else 0

    @property
    def hidden_size(self) -> int:
        return int(self.model.num_features)

    # --- behaviour ---------------------------------------------------------------------------
    def image_transform(self) -> ImageTransform:
        from timm.data import create_transform, resolve_data_config

        data_cfg = resolve_data_config({}, model=self.model)
        data_cfg["input_size"] = (3, *self.input_size)
        return TimmTransform(create_transform(**data_cfg, is_training=False), self.input_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        weight = next(self.model.parameters())
        x = self.model.forward_features(pixels.to(weight.dtype))
        if x.ndim == 4:
            x = x.flatten(1, 2) if self._output_fmt() == "NHWC" else x.flatten(2).transpose(1, 2)
        elif x.ndim == 3 and self.is_token_model:
            prefix = int(self.model.num_prefix_tokens)
            patches = x[:, prefix:]
            # CLS is the first prefix token; register / distillation tokens are always dropped.
            x = torch.cat([x[:, :1], patches], dim=1) if self.num_prefix_tokens else patches
        else:
            raise ConfigError(f"timm expert {self.cfg.name!r}: unexpected forward_features shape {tuple(x.shape)}")
        h, w = self.grid
        if x.shape[1] != self.num_prefix_tokens + h * w:
            raise ConfigError(
                f"timm expert {self.cfg.name!r}: {self.model_name} gave {x.shape[1]} tokens for a "
                f"{tuple(pixels.shape[-2:])} input, expected {self.num_prefix_tokens} + {h}x{w}; feed the "
                f"expert's own image_transform() output ({self.input_size})"
            )
        return x

    def load_pretrained(self) -> None:
        """Load weights with timm's own loader (checkpoint filters, position-embedding resize included).

        ``cfg.pretrained``: a local file (``.safetensors`` or a torch file, read with ``weights_only=True``),
        a local folder holding ``model.safetensors`` / ``pytorch_model.bin``, ``hf-hub:org/repo`` or
        ``org/repo`` on the Hugging Face hub, a pretrained tag of ``cfg.model`` (``lvd142m``), or
        ``timm``/``default`` for the model's default weights. The model is rebuilt with
        ``pretrained=True`` and its state copied here.
        """
        import timm

        pretrained = self.cfg.pretrained
        if not pretrained:
            raise ConfigError(f"timm expert {self.cfg.name!r}: no `pretrained` weights named")
        path = Path(pretrained).expanduser()
        overlay: dict[str, Any] = {}
        name = self.model_name
        arch = name.split(".")[0]
        if path.is_file():
            overlay = {"file": str(path)}
        elif path.is_dir():
            overlay = {"source": "local-dir", "file": str(path)}
        elif pretrained.lower() in DEFAULT_WEIGHTS:
            overlay = {}
        elif timm.list_pretrained(f"{arch}.{pretrained}"):
            name = f"{arch}.{pretrained}"
        elif pretrained.startswith("hf-hub:") or pretrained.count("/") == 1:
            overlay = {"hf_hub_id": pretrained.removeprefix("hf-hub:")}
        else:
            raise ConfigError(
                f"timm expert {self.cfg.name!r}: pretrained {pretrained!r} is not a file, folder, hub id or "
                f"pretrained tag of {arch} (tags: {timm.list_pretrained(arch + '*')})"
            )
        saved_name, self.model_name = self.model_name, name
        try:
            source = self._create(pretrained=True, pretrained_cfg_overlay=overlay)
        finally:
            self.model_name = saved_name
        on_meta = any(p.is_meta for p in self.model.parameters())
        self.model.load_state_dict(source.state_dict(), strict=True, assign=on_meta)
