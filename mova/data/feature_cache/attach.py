"""Using a cache: cached features in place of pixels in a batch, and cached OCR words primed into the OCR
expert's memo."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from mova.data.feature_cache.fingerprint import (
    CacheMissError,
)
from mova.data.feature_cache.store import (
    FeatureCache,
)
from mova.model.experts.base import VisualExpert, to_rgb
from mova.model.experts.ocr_text import OcrWord
from mova.model.experts.ocr_text import image_key as ocr_memo_key

logger = logging.getLogger(__name__)

# --- using cached features -------------------------------------------------------------------------
def attach_cached_features(images: dict[str, torch.Tensor], cache: FeatureCache, image_keys: Sequence[str],
                           model_config: Any, *, allow_missing: bool = False,
                           image_names: Sequence[str] | None = None) -> dict[str, torch.Tensor] | None:
    """``images`` with each opened pixel expert's pixels replaced by ``f"{name}.features"`` from the cache.

    ``image_keys`` are the images' keys in the order of the batch's image axis; ``model_config`` is a
    ``MovaConfig`` (or a model). Experts not opened in ``cache`` keep their pixels and run live. An image
    missing from an opened expert's cache raises :class:`CacheMissError` naming both, or, with
    ``allow_missing``, makes this return ``None`` so the caller can fall back to the pixels.
    """
    config = getattr(model_config, "config", model_config)
    out = dict(images)
    for spec in config.experts:
        name = spec.get("name") or spec["family"]
        if spec.get("input_kind", "pixels") != "pixels" or name not in cache.experts:
            continue
        expert_cache = cache.experts[name]
        for i, key in enumerate(image_keys):
            if key not in expert_cache:
                if allow_missing:
                    return None
                label = image_names[i] if image_names is not None else f"#{i}"
                raise CacheMissError(f"image {label} (key {key}) is not in the feature cache of expert {name!r} "
                                     f"at {expert_cache.path}; run `mova cache-features` over it or pass "
                                     "allow_missing to run the expert live")
        features = expert_cache.lookup(list(image_keys))
        if name in images and images[name].shape[0] != features.shape[0]:
            raise ValueError(f"expert {name!r}: {images[name].shape[0]} images in the batch but "
                             f"{features.shape[0]} image keys")
        out.pop(name, None)
        out[f"{name}.features"] = features
    return out


def prime_ocr_memo(expert: VisualExpert, image: Image.Image, words: Sequence[OcrWord]) -> None:
    """Put cached words in the OCR expert's in-memory memo so that ``read(image)`` skips the engine.

    Lets the processor (which calls ``read``) use cached OCR words without a code path of its own.
    """
    key = ocr_memo_key(to_rgb(image))
    with expert._lock:  # the OcrTextExpert memo, keyed by its own image hash
        expert._cache[key] = tuple(words)
        expert._cache.move_to_end(key)
