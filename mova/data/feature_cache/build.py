"""Building a cache: run the frozen experts (and OCR) once over a dataset's images, in batches, and write
what is missing."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from mova.data.feature_cache.fingerprint import (
    DEFAULT_SHARD_BYTES,
    STORAGE_DTYPES,
    image_key,
)
from mova.data.feature_cache.store import (
    ExpertCache,
    FeatureCache,
    storage_dtype,
)
from mova.data.records import resolve_image_path
from mova.errors import ConfigError, DataError, ImageLoadError
from mova.model.experts.base import VisualExpert

logger = logging.getLogger(__name__)

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
    """Image paths (deduplicated) or PIL images from paths, PIL images or LLaVA records (``record["image"]``).

    A record's image goes through the same resolver as training (:func:`~mova.data.records.resolve_image_path`):
    relative to ``image_folder``, never outside it (absolute paths, ``..`` and symlinks out are refused,
    naming the record). Paths given directly (not in records) are the caller's own and taken as they are."""
    folder = Path(image_folder) if image_folder is not None else None
    seen: set[str] = set()
    out: list[Any] = []
    for index, item in enumerate(items):
        if isinstance(item, Image.Image):
            out.append(item)
            continue
        if isinstance(item, dict):
            value = item.get("image")
            if not value:
                continue
            try:
                paths = [resolve_image_path(folder, v) for v in ([value] if isinstance(value, str) else list(value))]
            except ValueError as e:
                raise DataError(f"record {index} (id {item.get('id', f'#{index}')!r}): {e}") from None
        else:
            path = Path(item)
            paths = [folder / path if folder is not None and not path.is_absolute() else path]
        for path in paths:
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
