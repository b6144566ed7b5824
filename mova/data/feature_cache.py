"""Cached expert features: run the frozen experts once, train from their stored outputs.

Why: in the usual recipe the experts are frozen, so an image's expert features never change, yet the
experts (and their transforms: SAM resizes every image to 1024 px) cost as much as a large share of a
training step. Computing them once and reading them back with memory maps removes that cost; at MoVA
scale a cache is large (CLIP-L 576 x 1024 bf16 = 1.2 MB/image, SAM-B 4096 x 256 = 2.1 MB/image, about
300 GB for 93k images), so it is sharded, stored in bf16 by default and never loaded whole.

On disk, one folder per expert *and* fingerprint, so a changed expert never reads or overwrites the
features of another::

    ROOT/
      <expert name>-<fingerprint[:16]>/
        manifest.json             what the features are: expert, full fingerprint and its components
                                  (output-deciding config fields, transform description, weights digest),
                                  storage dtype, token shape [N, D], a transform probe, created/updated,
                                  number of entries, bytes, shard list, library versions
        index.json                the commit point: shard list + {image key: shard number}
        shard-00000.safetensors   many images' features: one [N, D] tensor per image, named by image key
        shard-00001.safetensors   ...
      image-keys.json             {image path: {key, size, mtime_ns}}: lets a reader skip decoding and
                                  hashing an unchanged file (a changed file is re-hashed, so it misses)

The OCR expert has no tensor output: its folder holds ``shard-NNNNN.json`` files mapping image key to
the recognised words (``{"text", "box", "score"}``). Words, not word-piece ids, are stored because the
tokenizer (and ``max_tokens``) may change between caching and training; tokenising cached words is cheap.

Writes are crash-safe: a shard is written to a hidden temporary name, fsynced and ``os.replace``-d into
place, and only then listed in ``index.json`` (itself replaced atomically), then ``manifest.json``. A
crash leaves at worst a hidden temporary file (deleted by the next writer) or a complete shard missing
from the index (adopted by the next writer); readers only ever see listed, complete shards. One writer
per cache folder at a time; any number of readers (DataLoader workers included: open shard handles are
dropped when the cache is pickled).

Image keys are content hashes (:func:`image_key`): the same picture under two paths is cached once, and
a file changed under the same path is a miss. Opening a cache for an expert (:meth:`FeatureCache.open_for`)
recomputes the expert's fingerprint and refuses a stale cache with an error that names what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from mova.config import to_dict
from mova.errors import ConfigError, ImageLoadError, MovaError
from mova.model.experts.base import VisualExpert, to_rgb
from mova.model.experts.ocr_text import OcrWord
from mova.model.experts.ocr_text import image_key as ocr_memo_key

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
            out.append("weights (the expert's parameters differ)")
        else:
            out.append(f"{part} ({_first_difference(a, b)})")
    return out


# --- one expert's folder ---------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    _atomic_write(path, (json.dumps(obj, indent=indent) + "\n").encode())


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """One safetensors file (a seam the tests patch to simulate a crash mid-write)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def storage_dtype(name: str) -> str:
    """Canonical storage dtype name (``bfloat16``, ``float16``, ``float32``); aliases such as bf16 accepted."""
    canon = DTYPE_ALIASES.get(name, name)
    if canon not in STORAGE_DTYPES:
        raise ConfigError(f"unknown cache dtype {name!r}; use one of {sorted(STORAGE_DTYPES)}")
    return canon


class ExpertCache:
    """One expert's cache folder: reads through memory maps, appends whole shards atomically."""

    def __init__(self, path: Path, manifest: dict[str, Any], index: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self.index = index
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._words: OrderedDict[int, dict[str, Any]] = OrderedDict()

    # --- facts -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest["expert"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def kind(self) -> str:
        """``"pixels"`` (tensor shards) or ``"ocr_words"`` (JSON shards)."""
        return self.manifest["kind"]

    @property
    def dtype(self) -> str | None:
        return self.manifest.get("dtype")

    @property
    def token_shape(self) -> list[int] | None:
        return self.manifest.get("token_shape")

    def __len__(self) -> int:
        return len(self.index["entries"])

    def __contains__(self, key: object) -> bool:
        return key in self.index["entries"]

    def keys(self) -> set[str]:
        return set(self.index["entries"])

    def disk_bytes(self) -> int:
        return sum(int(s["bytes"]) for s in self.index["shards"])

    # --- open / create -----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> ExpertCache:
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise CacheMissError(f"unreadable feature-cache manifest {path / MANIFEST}: {e}") from e
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            raise StaleCacheError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} folder "
                                  f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})")
        index_path = path / INDEX
        if index_path.is_file():
            index = json.loads(index_path.read_text())
        else:  # created, no shard committed yet
            index = {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": manifest["fingerprint"],
                     "shards": [], "entries": {}}
        if index.get("fingerprint") != manifest["fingerprint"]:
            raise StaleCacheError(f"{path}: index.json and manifest.json disagree on the fingerprint "
                                  f"({index.get('fingerprint')} vs {manifest['fingerprint']}); rebuild the cache")
        return cls(path, manifest, index)

    @classmethod
    def create(cls, path: Path, *, name: str, kind: str, fingerprint: str, components: dict[str, Any],
               dtype: str | None, token_shape: list[int] | None, probe: list[dict[str, Any]] | None,
               config: dict[str, Any]) -> ExpertCache:
        path.mkdir(parents=True, exist_ok=True)
        versions = {p: _version(p) for p in ("torch", "safetensors", "open_clip_torch", "timm", "transformers",
                                             "segment_anything", "rapidocr_onnxruntime")}
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "expert": name, "kind": kind,
                    "fingerprint": fingerprint, "components": components, "expert_config": config,
                    "dtype": dtype, "token_shape": token_shape, "transform_probe": probe,
                    "created": _now(), "updated": _now(), "num_entries": 0, "bytes": 0, "shards": [],
                    "versions": {k: v for k, v in versions.items() if v}}
        _write_json(path / MANIFEST, manifest)
        return cls(path, manifest, {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": fingerprint,
                                    "shards": [], "entries": {}})

    # --- reading -----------------------------------------------------------------------------
    def _shard_of(self, key: str) -> int:
        try:
            return self.index["entries"][key]
        except KeyError:
            raise CacheMissError(f"image {key} is not in the feature cache of expert {self.name!r} "
                                 f"at {self.path}") from None

    def _handle(self, shard: int) -> Any:
        handle = self._handles.get(shard)
        if handle is None:
            from safetensors import safe_open

            handle = safe_open(str(self.path / self.index["shards"][shard]["file"]), framework="pt", device="cpu")
            self._handles[shard] = handle
            while len(self._handles) > MAX_OPEN_SHARDS:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(shard)
        return handle

    def lookup(self, keys: Sequence[str]) -> torch.Tensor:
        """``[len(keys), N, D]`` features in the stored dtype; only these keys are read from the shards."""
        if self.kind != "pixels":
            raise CacheMissError(f"expert {self.name!r} caches OCR words, not tensors: use words()")
        if not keys:
            return torch.empty(0, *self.token_shape, dtype=STORAGE_DTYPES[self.dtype])
        return torch.stack([self._handle(self._shard_of(k)).get_tensor(k) for k in keys])

    def words(self, keys: Sequence[str]) -> list[list[OcrWord]]:
        """The OCR words of each image, in reading order."""
        if self.kind != "ocr_words":
            raise CacheMissError(f"expert {self.name!r} caches tensors, not OCR words: use lookup()")
        out = []
        for k in keys:
            shard = self._shard_of(k)
            data = self._words.get(shard)
            if data is None:
                data = json.loads((self.path / self.index["shards"][shard]["file"]).read_text())
                self._words[shard] = data
                while len(self._words) > MAX_OPEN_SHARDS:
                    self._words.popitem(last=False)
            out.append([OcrWord(text=w["text"], box=tuple(w["box"]), score=w["score"]) for w in data[k]])
        return out

    def __getstate__(self) -> dict[str, Any]:
        # safetensors handles cannot be pickled (DataLoader workers); they reopen lazily.
        state = dict(self.__dict__)
        state["_handles"], state["_words"] = OrderedDict(), OrderedDict()
        return state

    # --- writing -----------------------------------------------------------------------------
    def _shard_numbers(self) -> list[int]:
        numbers = []
        for name in os.listdir(self.path):
            m = SHARD_RE.match(name) or TMP_RE.match(name)
            if m:
                numbers.append(int(m.group(1)))
        return numbers

    def write_shard(self, entries: dict[str, Any]) -> Path | None:
        """Write ``entries`` (image key -> ``[N, D]`` tensor, or -> list of word dicts) as one new shard.

        The shard becomes visible under its final name only once complete and synced; the index then
        commits it. On any error the temporary file is removed and the cache is unchanged.
        """
        if not entries:
            return None
        number = max(self._shard_numbers(), default=-1) + 1
        suffix = "safetensors" if self.kind == "pixels" else "json"
        final = self.path / f"shard-{number:05d}.{suffix}"
        tmp = self.path / f".{final.name}.tmp"
        try:
            if self.kind == "pixels":
                dtype = STORAGE_DTYPES[self.dtype]
                tensors = {}
                for key, t in entries.items():
                    if list(t.shape) != self.token_shape:
                        raise ValueError(f"expert {self.name!r}: features of {key} have shape {list(t.shape)}, "
                                         f"the cache stores {self.token_shape}")
                    tensors[key] = t.detach().to("cpu", dtype).contiguous()
                _save_tensors(tensors, tmp, {"format": "pt", "expert": self.name, "fingerprint": self.fingerprint})
            else:
                tmp.write_text(json.dumps(entries))
            _fsync(tmp)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._commit(final, list(entries))
        return final

    def _commit(self, shard: Path, keys: list[str]) -> None:
        self.index["shards"].append({"file": shard.name, "entries": len(keys), "bytes": shard.stat().st_size})
        number = len(self.index["shards"]) - 1
        for k in keys:
            self.index["entries"][k] = number
        _write_json(self.path / INDEX, self.index, indent=None)
        self._write_manifest()

    def _write_manifest(self) -> None:
        self.manifest.update(updated=_now(), num_entries=len(self), bytes=self.disk_bytes(),
                             shards=[dict(s) for s in self.index["shards"]])
        _write_json(self.path / MANIFEST, self.manifest)

    def recover(self) -> None:
        """Before writing: delete temporary files of interrupted writes, adopt complete unlisted shards."""
        listed = {s["file"] for s in self.index["shards"]}
        for name in sorted(os.listdir(self.path)):
            if TMP_RE.match(name):
                logger.info("removing %s: an interrupted shard write", self.path / name)
                (self.path / name).unlink(missing_ok=True)
            elif SHARD_RE.match(name) and name not in listed:
                try:
                    keys = self._shard_keys(self.path / name)
                except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never trusted
                    logger.warning("ignoring unreadable shard %s: %s", self.path / name, e)
                    continue
                logger.info("adopting %s (%d entries): written but not indexed before a crash", name, len(keys))
                self._commit(self.path / name, keys)
        if self.manifest.get("num_entries") != len(self):
            self._write_manifest()

    def _shard_keys(self, path: Path) -> list[str]:
        if path.suffix == ".json":
            if self.kind != "ocr_words":
                raise ValueError("a JSON shard in a tensor cache")
            return list(json.loads(path.read_text()))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != self.fingerprint:
                raise ValueError(f"written for fingerprint {meta.get('fingerprint')}, not {self.fingerprint}")
            return list(f.keys())


# --- the cache root --------------------------------------------------------------------------------
def _expert_name(expert: VisualExpert) -> str:
    return str(expert.cfg.name)


class FeatureCache:
    """A cache root holding one folder per (expert, fingerprint); open an expert with :meth:`open_for`.

    Lookups go through experts opened (and thereby checked against the live expert) in this object, so
    features from a stale cache cannot be read by accident.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.experts: dict[str, ExpertCache] = {}
        self._path_keys: dict[str, dict[str, Any]] | None = None

    def folder(self, name: str, fingerprint: str) -> Path:
        return self.root / f"{name}-{fingerprint[:16]}"

    def folders_of(self, name: str) -> list[ExpertCache]:
        """Every cache folder under the root built for an expert named ``name`` (any fingerprint)."""
        out = []
        if self.root.is_dir():
            for path in sorted(self.root.glob(f"{_glob_escape(name)}-*")):
                if (path / MANIFEST).is_file():
                    try:
                        cache = ExpertCache.load(path)
                    except MovaError:
                        continue
                    if cache.name == name:
                        out.append(cache)
        return out

    def open_for(self, expert: VisualExpert, *, create: bool = False, dtype: str = "bfloat16") -> ExpertCache:
        """The cache of ``expert``, checked against it; with ``create`` an empty one when there is none.

        Raises :class:`StaleCacheError` when the only caches for this expert name were built by a
        different expert (naming the differing fields and both fingerprints) or when the token shape or
        the transform's behaviour disagree, and :class:`CacheMissError` when there is no cache at all.
        """
        name = _expert_name(expert)
        components = fingerprint_components(expert)
        fingerprint = fingerprint_of(components)
        path = self.folder(name, fingerprint)
        if (path / MANIFEST).is_file():
            cache = ExpertCache.load(path)
            self._check(cache, expert, components, fingerprint)
        elif create:
            pixels = expert.input_kind == "pixels"
            cache = ExpertCache.create(
                path, name=name, kind="pixels" if pixels else "ocr_words", fingerprint=fingerprint,
                components=components, dtype=storage_dtype(dtype) if pixels else None,
                token_shape=[expert.num_tokens, expert.hidden_size] if pixels else None,
                probe=transform_probe(expert.image_transform()) if pixels else None,
                config=_jsonable(to_dict(expert.cfg)))
        else:
            others = self.folders_of(name)
            if others:
                newest = max(others, key=lambda c: c.manifest.get("updated", ""))
                diffs = differing_fields(newest.manifest.get("components", {}), components)
                raise StaleCacheError(
                    f"the feature cache of expert {name!r} at {newest.path} was built by a different expert: "
                    f"{'; '.join(diffs) or 'fingerprint components differ'}. Cache fingerprint "
                    f"{newest.fingerprint}, expert fingerprint {fingerprint}. Rebuild it with "
                    f"`mova cache-features` (or run the expert live)"
                    + (f"; {len(others) - 1} other stale folder(s) for this expert" if len(others) > 1 else ""))
            raise CacheMissError(f"no feature cache for expert {name!r} under {self.root}; "
                                 "build one with `mova cache-features`")
        self.experts[name] = cache
        return cache

    def _check(self, cache: ExpertCache, expert: VisualExpert, components: dict[str, Any], fingerprint: str) -> None:
        name = _expert_name(expert)
        if cache.fingerprint != fingerprint:
            diffs = differing_fields(cache.manifest.get("components", {}), components)
            raise StaleCacheError(f"the feature cache of expert {name!r} at {cache.path} has fingerprint "
                                  f"{cache.fingerprint}, the expert {fingerprint}: {'; '.join(diffs)}")
        if cache.kind != "pixels":
            return
        want = [expert.num_tokens, expert.hidden_size]
        if cache.token_shape != want:
            raise StaleCacheError(
                f"the feature cache of expert {name!r} at {cache.path} stores tokens of shape {cache.token_shape} "
                f"but the expert gives {want} (num_prefix_tokens + h * w, hidden_size); fingerprint {fingerprint}")
        diff = _probe_difference(cache.manifest.get("transform_probe") or [], transform_probe(expert.image_transform()))
        if diff:
            raise StaleCacheError(f"the feature cache of expert {name!r} at {cache.path} was built with a transform "
                                  f"that behaves differently ({diff}); fingerprint {fingerprint}")

    def open_model(self, model: nn.Module, experts: Iterable[str] | None = None) -> list[str]:
        """Open the cache of each of ``model``'s experts that has one (all of ``experts`` when named).

        Experts without any cache are skipped (they run live) unless named; stale caches always raise.
        """
        names = list(experts) if experts is not None else list(model.experts)
        opened = []
        for name in names:
            try:
                self.open_for(model.experts[name])
            except CacheMissError:
                if experts is not None:
                    raise
                continue
            opened.append(name)
        return opened

    def _expert(self, name: str) -> ExpertCache:
        if name not in self.experts:
            raise CacheMissError(f"expert {name!r} is not open in the feature cache at {self.root}; call "
                                 "open_for(expert) first (it checks that the cache matches the expert)")
        return self.experts[name]

    def has(self, expert_name: str, key: str) -> bool:
        return key in self._expert(expert_name)

    def missing(self, expert_name: str, keys: Iterable[str]) -> list[str]:
        cache = self._expert(expert_name)
        return [k for k in keys if k not in cache]

    def lookup(self, expert_name: str, keys: Sequence[str]) -> torch.Tensor:
        """``[B, N, D]`` features of ``keys`` (stored dtype) for an opened pixel expert."""
        return self._expert(expert_name).lookup(keys)

    def ocr_words(self, expert_name: str, keys: Sequence[str]) -> list[list[OcrWord]]:
        return self._expert(expert_name).words(keys)

    # --- path -> key memo ----------------------------------------------------------------------
    def path_keys(self) -> dict[str, dict[str, Any]]:
        if self._path_keys is None:
            path = self.root / PATH_KEYS
            self._path_keys = json.loads(path.read_text()) if path.is_file() else {}
        return self._path_keys

    def key_for(self, path: str | Path) -> str:
        """The image key of a file: from the memo when its size and mtime are unchanged, else hashed.

        The memo (written by :func:`build_cache`) lets training find an image's features without
        decoding it; a file rewritten with the same size *and* a restored mtime would fool it, so use
        ``image_key(load_image(path))`` where that matters.
        """
        p = Path(path).resolve()
        st = p.stat()
        memo = self.path_keys().get(str(p))
        if memo and memo["size"] == st.st_size and memo["mtime_ns"] == st.st_mtime_ns:
            return memo["key"]
        from mova.model.processing_mova import load_image

        return image_key(load_image(p))

    def remember_paths(self, entries: dict[str, dict[str, Any]]) -> None:
        if not entries:
            return
        memo = dict(self.path_keys())
        memo.update(entries)
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json(self.root / PATH_KEYS, memo, indent=None)
        self._path_keys = memo


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


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


# --- building --------------------------------------------------------------------------------------
@dataclass
class CacheStats:
    """What a :func:`build_cache` run did."""

    images: int = 0
    new: int = 0
    cached: int = 0
    failed: list[str] = field(default_factory=list)
    #: new entries written per expert.
    entries: dict[str, int] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)
    bytes_on_disk: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _sources(items: Iterable[Any], image_folder: str | Path | None) -> list[Any]:
    """Image paths (deduplicated) or PIL images from paths, PIL images or LLaVA records (``record["image"]``)."""
    folder = Path(image_folder) if image_folder is not None else None
    seen: set[str] = set()
    out: list[Any] = []
    for item in items:
        if isinstance(item, Image.Image):
            out.append(item)
            continue
        if isinstance(item, dict):
            value = item.get("image")
            if not value:
                continue
            paths = [value] if isinstance(value, (str, Path)) else list(value)
        else:
            paths = [item]
        for p in paths:
            path = Path(p)
            if folder is not None and not path.is_absolute():
                path = folder / path
            if str(path) not in seen:
                seen.add(str(path))
                out.append(path)
    return out


class _Jobs(torch.utils.data.Dataset):
    """Load, hash and (only for experts that miss the image) transform / OCR one image per item."""

    def __init__(self, sources: list[Any], transforms: dict[str, Any], ocr: dict[str, VisualExpert],
                 have: dict[str, set[str]], skip_unreadable: bool):
        self.sources, self.transforms, self.ocr, self.have = sources, transforms, ocr, have
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from mova.model.processing_mova import load_image

        src = self.sources[i]
        label = f"<image {i}>" if isinstance(src, Image.Image) else str(src)
        try:
            img = load_image(src)
        except ImageLoadError as e:
            if self.skip_unreadable:
                return {"source": label, "error": str(e)}
            raise
        key = image_key(img)
        item: dict[str, Any] = {"source": label, "key": key, "pixels": {}, "words": {}}
        if not isinstance(src, Image.Image):
            st = Path(src).stat()
            item["path"] = (str(Path(src).resolve()), {"key": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        for name, transform in self.transforms.items():
            if key not in self.have[name]:
                item["pixels"][name] = transform(img)
        for name, expert in self.ocr.items():
            if key not in self.have[name]:
                item["words"][name] = [dataclasses.asdict(w) for w in expert.read(img)]
        return item


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


class _ShardBuffer:
    """Entries waiting to become a shard; flushed when it reaches ``shard_bytes`` or ``shard_images``."""

    def __init__(self, cache: ExpertCache, shard_bytes: int, shard_images: int | None):
        self.cache, self.shard_bytes, self.shard_images = cache, shard_bytes, shard_images
        self.items: dict[str, Any] = {}
        self.size = 0
        self.written = 0

    def add(self, key: str, value: Any) -> None:
        self.items[key] = value
        if isinstance(value, torch.Tensor):
            self.size += value.numel() * STORAGE_DTYPES[self.cache.dtype].itemsize
        else:
            self.size += len(json.dumps(value))
        if self.size >= self.shard_bytes or (self.shard_images and len(self.items) >= self.shard_images):
            self.flush()

    def flush(self) -> None:
        if self.items:
            self.cache.write_shard(self.items)
            self.written += len(self.items)
            self.items, self.size = {}, 0


def build_cache(model: nn.Module, processor: Any, images: Iterable[Any], root: str | Path, *,
                batch_size: int = 16, dtype: str = "bfloat16", image_folder: str | Path | None = None,
                experts: Sequence[str] | None = None, shard_bytes: int = DEFAULT_SHARD_BYTES,
                shard_images: int | None = None, num_workers: int = 0, skip_unreadable: bool = False,
                progress: bool = True) -> CacheStats:
    """Run ``model``'s experts over ``images`` once and store what is not cached yet under ``root``.

    ``images``: paths, PIL images or LLaVA records (``record["image"]``, relative to ``image_folder``;
    records without one are skipped). Experts run batch by batch in eval mode without grad, on the
    device and dtype of their weights; features are stored in ``dtype``. Images already cached for an
    expert are neither transformed nor run through it. Shards are written whole and atomically, so an
    interrupted run keeps every shard it completed (the partial buffer is flushed on the way out).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    dtype = storage_dtype(dtype)
    cache = FeatureCache(root)
    names = list(experts) if experts is not None else list(model.experts)
    unknown = [n for n in names if n not in model.experts]
    if unknown:
        raise ConfigError(f"unknown expert(s) {unknown}; the model has {list(model.experts)}")
    modules: dict[str, VisualExpert] = {n: model.experts[n] for n in names}
    buffers: dict[str, _ShardBuffer] = {}
    for name, expert in modules.items():
        if not expert.cfg.frozen:
            logger.warning("expert %r is trainable: its cached features go stale once it trains", name)
        ec = cache.open_for(expert, create=True, dtype=dtype)
        if ec.kind == "pixels" and ec.dtype != dtype:
            raise ConfigError(f"the feature cache of expert {name!r} at {ec.path} stores {ec.dtype}, not {dtype}; "
                              "use that dtype or another cache root")
        ec.recover()
        older = [str(c.path) for c in cache.folders_of(name) if c.path != ec.path]
        if older:
            logger.warning("expert %r also has caches built by other versions of it (stale for this model, "
                           "delete them if unused): %s", name, ", ".join(older))
        buffers[name] = _ShardBuffer(ec, shard_bytes, shard_images)
    pixel = [n for n in names if modules[n].input_kind == "pixels"]
    ocr = {n: modules[n] for n in names if modules[n].input_kind == "ocr"}
    transforms = {n: (processor.transforms.get(n) if processor is not None else None)
                  or modules[n].image_transform() for n in pixel}
    have = {n: cache.experts[n].keys() for n in names}

    sources = _sources(images, image_folder)
    jobs = _Jobs(sources, transforms, ocr, have, skip_unreadable)
    loader = torch.utils.data.DataLoader(jobs, batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list)
    stats = CacheStats(images=0)
    pending: dict[str, list[tuple[str, torch.Tensor]]] = {n: [] for n in pixel}
    paths: dict[str, dict[str, Any]] = {}
    was_training = {n: m.training for n, m in modules.items()}

    def run(name: str, items: list[tuple[str, torch.Tensor]]) -> None:
        expert = modules[name]
        param = next(expert.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.stack([t for _, t in items]).to(device, dtype=param.dtype if param is not None else None)
        with torch.no_grad():
            feats = expert(x).to("cpu", STORAGE_DTYPES[dtype])
        for (key, _), f in zip(items, feats):
            buffers[name].add(key, f.clone())

    bar = tqdm(total=len(sources), unit="img", desc="caching features", disable=not progress)
    try:
        for m in modules.values():
            m.eval()
        seen: set[str] = set()
        for batch in loader:
            for item in batch:
                stats.images += 1
                if "error" in item:
                    logger.warning("skipping %s: %s", item["source"], item["error"])
                    stats.failed.append(item["source"])
                    continue
                key = item["key"]
                if "path" in item:
                    paths[item["path"][0]] = item["path"][1]
                if key in seen:  # the same picture under another path: cached once
                    stats.cached += 1
                    continue
                seen.add(key)
                work = False
                for name, x in item["pixels"].items():
                    if key not in have[name]:
                        pending[name].append((key, x))
                        have[name].add(key)
                        work = True
                for name, words in item["words"].items():
                    if key not in have[name]:
                        buffers[name].add(key, words)
                        have[name].add(key)
                        work = True
                stats.new += work
                stats.cached += not work
            for name in pixel:
                while len(pending[name]) >= batch_size:
                    run(name, pending[name][:batch_size])
                    pending[name] = pending[name][batch_size:]
            bar.update(len(batch))
            bar.set_postfix(new=stats.new, cached=stats.cached)
        for name in pixel:
            if pending[name]:
                run(name, pending[name])
                pending[name] = []
        for b in buffers.values():
            b.flush()
    finally:
        bar.close()
        # Keep what was computed before an interruption: the buffered entries are complete results.
        for b in buffers.values():
            try:
                b.flush()
            except Exception as e:  # noqa: BLE001 - the original error matters more
                logger.warning("could not save %d buffered entries of %r: %s", len(b.items), b.cache.name, e)
        for n, m in modules.items():
            m.train(was_training[n])
        try:
            cache.remember_paths(paths)
        except OSError as e:
            logger.warning("could not save the path -> key memo: %s", e)
    stats.entries = {n: b.written for n, b in buffers.items()}
    stats.folders = {n: str(cache.experts[n].path) for n in names}
    stats.bytes_on_disk = sum(cache.experts[n].disk_bytes() for n in names)
    stats.seconds = time.perf_counter() - start
    return stats


def write(model: nn.Module, processor: Any, images: Iterable[Any], root: str | Path, **kwargs: Any) -> CacheStats:
    """Alias of :func:`build_cache`."""
    return build_cache(model, processor, images, root, **kwargs)
