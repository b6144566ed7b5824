"""The cache on disk: one expert's folder (:class:`ExpertCache`, crash-safe shards and index) and the cache
root (:class:`FeatureCache`), which opens an expert's folder only when its fingerprint matches."""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mova.config import to_dict
from mova.data.feature_cache.fingerprint import (
    DTYPE_ALIASES,
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    MANIFEST,
    MAX_OPEN_SHARDS,
    PATH_KEYS,
    SHARD_RE,
    STORAGE_DTYPES,
    TMP_RE,
    CacheMissError,
    StaleCacheError,
    _jsonable,
    _probe_difference,
    _version,
    differing_fields,
    fingerprint_components,
    fingerprint_of,
    image_key,
    transform_probe,
)
from mova.errors import ConfigError, MovaError
from mova.model.experts.base import VisualExpert
from mova.model.experts.ocr_text import OcrWord

logger = logging.getLogger(__name__)

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
