"""What decides an expert's features: image keys, fingerprints (config, transform, weights) and the
differences named when a cache is stale. The cache's format constants and errors live here too, as the
lowest module of the package."""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import logging
import re
from enum import Enum
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from mova.config import to_dict
from mova.errors import ConfigError, MovaError
from mova.model.experts.base import VisualExpert, to_rgb

logger = logging.getLogger(__name__)

FORMAT = "mova-feature-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.json"
PATH_KEYS = "image-keys.json"
SHARD_RE = re.compile(r"^shard-(\d{5,})\.(safetensors|json)$")
TMP_RE = re.compile(r"^\.shard-(\d{5,})\.(safetensors|json)\.tmp$")

STORAGE_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16,
                                          "float32": torch.float32}
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
DEFAULT_SHARD_BYTES = 1 << 30
#: open safetensors handles kept per expert (each holds a file descriptor and a memory map).
MAX_OPEN_SHARDS = 64

#: ExpertConfig fields that decide a pixel expert's output. ``name``, ``position_scheme``, ``pool``,
#: ``frozen`` and ``max_tokens`` only act after the expert (fusion, positions, training), so changing
#: them keeps the cache valid.
PIXEL_FIELDS = ("family", "model", "pretrained", "tiny", "image_size", "feature_layer", "final_norm", "use_cls",
                "kwargs")
OCR_FIELDS = ("family", "model", "pretrained", "kwargs")
#: OCR options that do not change the words read (the size of the expert's in-memory memo).
OCR_NEUTRAL_KWARGS = ("cache_size",)
#: elements read per weight tensor for the fingerprint: first, last and a strided sample of this many.
WEIGHT_SAMPLE = 4096


class StaleCacheError(MovaError, ValueError):
    """A feature cache was built by a different expert (weights, layer, image size, transform, ...)."""


class CacheMissError(MovaError, LookupError):
    """No cache for an expert, or an image that is not in it."""



# --- keys and fingerprints -------------------------------------------------------------------------
def image_key(image: Image.Image) -> str:
    """sha256 of the RGB pixels and the size: the cache key of an image (content, not path)."""
    rgb = to_rgb(image)
    digest = hashlib.sha256(f"{rgb.size[0]}x{rgb.size[1]}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _jsonable(obj: Any) -> Any:
    """What ``obj`` becomes after a JSON round trip (tuples -> lists), so stored and live values compare."""
    return json.loads(_canonical(obj))


def describe_transform(obj: Any, depth: int = 0) -> Any:
    """A JSON description of an image transform: its classes and their public settings, recursively.

    Exact and machine-independent (unlike hashing the transform's float output), it changes when the
    size, crop, interpolation or normalisation does. Memory addresses never enter it.
    """
    if depth > 8:
        return type(obj).__qualname__
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Enum):
        return f"{type(obj).__name__}.{obj.name}"
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(obj).detach().cpu()
        return t.tolist() if t.numel() <= 64 else {"shape": list(t.shape), "sum": float(t.double().sum())}
    if isinstance(obj, (list, tuple)):
        return [describe_transform(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {str(k): describe_transform(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if inspect.isroutine(obj) or inspect.isclass(obj):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
    cls = f"{type(obj).__module__}.{type(obj).__qualname__}"
    state = getattr(obj, "__dict__", None)
    if state is None:
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))
    public = {k: v for k, v in state.items() if not k.startswith("_") and k != "training"}
    return {"class": cls, **describe_transform(public, depth + 1)}


def weights_digest(module: nn.Module, sample: int = WEIGHT_SAMPLE) -> str:
    """A digest of ``module.state_dict()`` that reads little of each tensor but still sees any change.

    Per tensor: name, dtype, shape, the raw bytes of its first ``sample``, last ``sample`` and a strided
    sample of ``sample`` elements (small tensors: all of them), and the sum of all its bytes read as
    uint32 words, modulo 2**32 (trailing bytes hashed as they are). The word sum catches a change
    anywhere in the tensor; being unsigned integer arithmetic it is exact and the same in any order and
    on any machine (a float sum would not be). It is the only full pass over the weights, and a cheaper
    one than sha256 over every byte (plus the copy off the GPU when the weights are there).
    """
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        if tensor.is_meta:
            raise ConfigError(f"cannot fingerprint {name}: the weights are on the meta device (not loaded)")
        flat = tensor.detach().reshape(-1)
        h.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        if flat.numel() <= 3 * sample:
            picked = flat
        else:
            stride = flat.numel() // sample
            picked = torch.cat([flat[:sample], flat[-sample:], flat[::stride][:sample]])
        h.update(picked.contiguous().view(torch.uint8).cpu().numpy().tobytes())
        raw = flat.contiguous().view(torch.uint8).cpu().numpy()
        words = raw.size // 4 * 4
        h.update(str(int(np.add.reduce(raw[:words].view(np.uint32), dtype=np.uint32))).encode())
        h.update(raw[words:].tobytes())
    return h.hexdigest()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def fingerprint_components(expert: VisualExpert) -> dict[str, Any]:
    """Everything that decides the expert's output, as JSON (what :func:`expert_fingerprint` hashes).

    Pixel experts: the output-deciding config fields (:data:`PIXEL_FIELDS`), the transform description,
    the weights' dtypes (bf16 experts give other features than fp32 ones) and the weights digest. The
    OCR expert: its config (minus the memo size), the rapidocr-onnxruntime version (its bundled models)
    and the effective ``min_score`` / ``use_angle_cls``.
    """
    cfg = to_dict(expert.cfg)
    if expert.input_kind == "ocr":
        config = {k: cfg[k] for k in OCR_FIELDS}
        config["kwargs"] = {k: v for k, v in cfg["kwargs"].items() if k not in OCR_NEUTRAL_KWARGS}
        engine = {"rapidocr_onnxruntime": _version("rapidocr_onnxruntime"),
                  "min_score": float(getattr(expert, "min_score", 0.0)),
                  "use_angle_cls": bool(getattr(expert, "use_angle_cls", False))}
        return _jsonable({"config": config, "engine": engine})
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in expert.state_dict().values()})
    return _jsonable({"config": {k: cfg[k] for k in PIXEL_FIELDS},
                      "transform": describe_transform(expert.image_transform()),
                      "weights_dtype": dtypes,  # also inside the digest; kept apart so an error can name it
                      "weights": weights_digest(expert)})


def fingerprint_of(components: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(components).encode()).hexdigest()


def expert_fingerprint(expert: VisualExpert) -> str:
    """A stable sha256 of everything that determines ``expert``'s output (see :func:`fingerprint_components`)."""
    return fingerprint_of(fingerprint_components(expert))


def _probe_images() -> list[Image.Image]:
    """Two fixed non-square pictures (gradients + a checkerboard, so resampling changes show)."""
    out = []
    for w, h in ((224, 160), (120, 300)):
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x // 8 + y // 8) % 2 * 255], axis=-1)
        out.append(Image.fromarray(rgb.astype(np.uint8)))
    return out


def transform_probe(transform: Any) -> list[dict[str, Any]]:
    """Shape and per-channel mean/std of the transform's output on the probe images.

    Stored in the manifest and compared with a tolerance when the cache is opened: it catches a library
    upgrade that changes what a transform *does* without changing its settings, without making the
    fingerprint depend on float bits that may differ between machines.
    """
    stats = []
    for img in _probe_images():
        x = transform(img)
        if not isinstance(x, torch.Tensor):
            stats.append({"type": type(x).__name__})
            continue
        x = x.detach().double()
        flat = x.reshape(x.shape[0], -1) if x.dim() == 3 else x.reshape(1, -1)
        stats.append({"shape": list(x.shape), "mean": flat.mean(1).tolist(), "std": flat.std(1).tolist()})
    return stats


def _probe_difference(stored: list[dict[str, Any]], live: list[dict[str, Any]], tol: float = 1e-3) -> str | None:
    if len(stored) != len(live):
        return "different number of probes"
    for i, (a, b) in enumerate(zip(stored, live)):
        if a.get("shape") != b.get("shape") or a.get("type") != b.get("type"):
            return f"probe {i}: output shape {a.get('shape')} (cache) vs {b.get('shape')} (model)"
        for stat in ("mean", "std"):
            for x, y in zip(a.get(stat, []), b.get(stat, [])):
                if abs(x - y) > tol * (1 + abs(x)):
                    return f"probe {i}: output {stat} {a[stat]} (cache) vs {b[stat]} (model)"
    return None


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """The first leaf where two JSON values differ, as ``path: a != b``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if _canonical(a.get(k)) != _canonical(b.get(k)):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if _canonical(x) != _canonical(y):
                return _first_difference(x, y, f"{path}[{i}]")
    shorten = lambda v: (s if len(s := json.dumps(v, default=str)) <= 80 else s[:77] + "...")  # noqa: E731
    return f"{path or '(value)'}: {shorten(a)} (cache) != {shorten(b)} (model)"


def differing_fields(cached: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprint components (config fields named one by one)."""
    out = []
    for part in sorted(set(cached) | set(live)):
        a, b = cached.get(part), live.get(part)
        if _canonical(a) == _canonical(b):
            continue
        if part == "config" and isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if _canonical(a.get(k)) != _canonical(b.get(k)):
                    out.append(f"{k} (cache: {a.get(k)!r}, model: {b.get(k)!r})")
        elif part == "weights":
            hint = ""
            if any((c.get("config") or {}).get("tiny") for c in (cached, live)):
                hint = ("; a `tiny: true` expert has random weights drawn from the seed (train.seed / --seed), so a "
                        "different seed builds a different expert")
            out.append(f"weights (the expert's parameters differ{hint})")
        else:
            out.append(f"{part} ({_first_difference(a, b)})")
    return out
