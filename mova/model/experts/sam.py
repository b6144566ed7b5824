"""The image encoder of Segment Anything (SAM): a high-resolution, segmentation-aware expert.

SAM's ViT sees 1024 x 1024 inputs through 16 px patches and ends in a convolutional "neck" down to
256 channels, so its features are a 64 x 64 grid of 256-d vectors. Only ``ImageEncoderViT`` is
built, with exactly the arguments of ``segment_anything.build_sam``; the prompt encoder and mask
decoder are never needed by a VLM. Preprocessing is SAM's own: resize the longest side to 1024,
normalise 0-255 pixels with SAM's mean/std and zero-pad bottom/right to a square.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mova.config import ExpertConfig
from mova.errors import ConfigError, UnknownNameError
from mova.model.experts.base import ImageTransform, VisualExpert, register_expert, to_rgb

#: per-size arguments, as in segment_anything/build_sam.py.
SAM_ARCHS: dict[str, dict[str, Any]] = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
}
#: arguments shared by every SAM size (build_sam's ``_build_sam``).
SAM_COMMON: dict[str, Any] = {
    "img_size": 1024,
    "patch_size": 16,
    "mlp_ratio": 4,
    "qkv_bias": True,
    "use_rel_pos": True,
    "window_size": 14,
    "out_chans": 256,
}
#: tiny random encoder for tests and the demo: 128 px, 16 px patches -> 8 x 8 grid of 32-d features.
TINY_ARCH: dict[str, Any] = {
    "img_size": 128,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "out_chans": 32,
    "window_size": 4,
    "global_attn_indexes": (1,),
}
DEFAULT_MODEL = "vit_b"
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
CHECKPOINT_PREFIX = "image_encoder."


class SamTransform:
    """SAM's preprocessing of one image (``SamPredictor.set_image`` + ``Sam.preprocess``), picklable.

    The resize is ``ResizeLongestSide.apply_image`` (PIL bilinear to the longest side), except that a
    side never rounds down to 0 pixels, which SAM's own code would do for extreme aspect ratios.
    """

    def __init__(self, img_size: int):
        self.img_size = img_size
        self.mean = torch.tensor(PIXEL_MEAN, device="cpu").view(3, 1, 1)
        self.std = torch.tensor(PIXEL_STD, device="cpu").view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from segment_anything.utils.transforms import ResizeLongestSide
        from torchvision.transforms.functional import resize

        image = to_rgb(image)
        w, h = image.size
        new_h, new_w = ResizeLongestSide.get_preprocess_shape(h, w, self.img_size)
        new_h, new_w = max(1, new_h), max(1, new_w)
        resized = np.array(resize(image, [new_h, new_w]))
        x = torch.as_tensor(resized).permute(2, 0, 1).float()
        x = (x - self.mean) / self.std
        return F.pad(x, (0, self.img_size - new_w, 0, self.img_size - new_h))


def _resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a ``[2 * S - 1, head_dim]`` relative-position table to ``length`` rows (as SAM's
    ``get_rel_pos`` does when the attended size differs)."""
    resized = F.interpolate(rel_pos.float().t().unsqueeze(0), size=length, mode="linear")
    return resized[0].t().to(rel_pos.dtype)


@register_expert
class SamExpert(VisualExpert):
    """SAM ``ImageEncoderViT`` (``cfg.model``: ``vit_b`` (default), ``vit_l`` or ``vit_h``).

    ``cfg.image_size`` changes the input resolution (grid = image_size // 16; the checkpoint's position
    embeddings are interpolated on load). ``cfg.kwargs`` override ``ImageEncoderViT`` arguments.
    SAM has no CLS token, so ``num_prefix_tokens`` is always 0.
    """

    family = "sam"

    def __init__(self, cfg: ExpertConfig):
        super().__init__(cfg)
        from segment_anything.modeling import ImageEncoderViT

        self.model_name = "tiny" if cfg.tiny else (cfg.model or DEFAULT_MODEL)
        args: dict[str, Any] = dict(SAM_COMMON)
        if cfg.tiny:
            args.update(TINY_ARCH)
        elif self.model_name in SAM_ARCHS:
            args.update(SAM_ARCHS[self.model_name])
        else:
            raise UnknownNameError("SAM model", self.model_name, SAM_ARCHS)
        args.update(cfg.kwargs)
        if cfg.image_size:
            args["img_size"] = cfg.image_size
        if args["img_size"] % args["patch_size"]:
            raise ConfigError(
                f"sam expert {cfg.name!r}: image size {args['img_size']} is not a multiple of the patch size "
                f"{args['patch_size']}"
            )
        self.encoder_args = args
        self.encoder = ImageEncoderViT(norm_layer=partial(nn.LayerNorm, eps=1e-6), **args)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.encoder_args["img_size"] // self.encoder_args["patch_size"]
        return side, side

    @property
    def hidden_size(self) -> int:
        return int(self.encoder_args["out_chans"])

    def image_transform(self) -> ImageTransform:
        return SamTransform(self.encoder.img_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(pixels.to(self.encoder.patch_embed.proj.weight.dtype))  # [B, C, h, w]
        return feats.flatten(2).transpose(1, 2)

    def load_pretrained(self) -> None:
        """Load an official SAM checkpoint (``sam_vit_b_01ec64.pth``, ...) or its image-encoder part.

        ``cfg.pretrained`` is a local ``.pth``/``.pt`` file (read with ``torch.load(weights_only=True)``)
        or ``.safetensors`` file, or ``org/repo/path/to/file`` on the Hugging Face hub. Keys prefixed
        ``image_encoder.`` (a whole-SAM checkpoint) are kept and stripped; a checkpoint without that
        prefix is taken as an encoder-only state dict. HF-transformers ``SamModel`` checkpoints use other
        key names and are not accepted.
        """
        path = self._resolve_checkpoint()
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if any(k.startswith(CHECKPOINT_PREFIX) for k in state):
            state = {k[len(CHECKPOINT_PREFIX):]: v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)}
        state = self._fit_positions(state)
        on_meta = any(p.is_meta for p in self.encoder.parameters())
        self.encoder.load_state_dict(state, strict=True, assign=on_meta)

    def _resolve_checkpoint(self) -> Path:
        pretrained = self.cfg.pretrained
        if not pretrained:
            raise ConfigError(f"sam expert {self.cfg.name!r}: no `pretrained` checkpoint named")
        path = Path(pretrained).expanduser()
        if path.is_file():
            return path
        parts = pretrained.split("/")
        if len(parts) >= 3 and not path.exists():
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
        raise ConfigError(
            f"sam expert {self.cfg.name!r}: checkpoint {pretrained!r} is not a file; give a local SAM checkpoint "
            "(e.g. sam_vit_b_01ec64.pth) or org/repo/path/to/file on the Hugging Face hub"
        )

    def _fit_positions(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Interpolate absolute and relative position tables when ``img_size`` differs from the checkpoint's."""
        own = self.encoder.state_dict()
        for key, value in list(state.items()):
            target = own.get(key)
            if target is None or target.shape == value.shape:
                continue
            if key == "pos_embed":  # [1, H, W, C]
                grid = F.interpolate(value.permute(0, 3, 1, 2).float(), size=tuple(target.shape[1:3]), mode="bicubic")
                state[key] = grid.permute(0, 2, 3, 1).to(value.dtype)
            elif key.endswith((".rel_pos_h", ".rel_pos_w")):
                state[key] = _resize_rel_pos(value, target.shape[0])
        return state
