"""Data from where users keep it: a Hugging Face Hub dataset id, a local folder laid out like one, or a file;
several of them mixed by ratio; read whole or streamed; with a held-out evaluation split.

A *source* (:class:`~mova.config.DataSource`, or ``data.data_path`` alone) is one split of one dataset:

* a **local folder** is read the way the Hub reads a dataset repository: the ``configs:`` block of its
  ``README.md`` card when it has one, else the Hub's file-name conventions (``data/train-*.parquet``,
  ``train.jsonl``, ``validation/...``). Files are handed to ``datasets``' parquet / json builders by path,
  never as ``load_dataset(folder)``: offline, ``datasets`` resolves a folder name like a Hub name and can
  return another folder's cached copy when two share a basename;
* a **file** (``.json`` / ``.jsonl`` / ``.parquet``) is that file;
* anything else is a **Hub dataset id**, through ``datasets.load_dataset`` (offline it must be in the cache;
  the error says how to download it and pass the folder instead).

Rows become plain records (LLaVA ``{"id", "image", "conversations"}`` or preference rows). An image is a
path, resolved later by :func:`mova.data.records.resolve_image_path` against the source's image folder (the
folder, or the file's folder: the one resolver confines it there), or image bytes embedded in the dataset
(the Hub's ``Image`` feature), which need no path at all.

**Mixing.** With ratios, ``ratio`` is the share of the mixture each source makes (ratios are normalised).
``data.mix_stopping`` follows ``datasets.interleave_datasets``: ``first_exhausted`` makes the mixture as large
as it can be without repeating a record of any source; ``all_exhausted`` as large as it must be to use every
record of every source, repeating the smaller ones. Without ratios sources are concatenated. Which records
are drawn depends only on ``train.seed``.

**Streaming.** ``data.streaming`` reads sources as ``datasets.IterableDataset``: nothing is downloaded or
converted up front and records are checked as they arrive (a bad one stops the run, or with
``data.skip_bad_records`` is skipped and counted). Mixing then draws the next record's source at random
with the ratios as probabilities.
"""

from __future__ import annotations

import io
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mova.errors import DataError

logger = logging.getLogger(__name__)

#: file types a source may be, and the ``datasets`` builder that reads each.
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}
#: the Hub's names for splits in file names (``datasets``' own conventions, abridged).
SPLIT_ALIASES = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev", "eval"),
                 "test": ("test", "testing", "eval")}


@dataclass
class SourceData:
    """One source's records and where its image paths are relative to."""

    label: str
    records: Any  # a list of dicts, or an iterable of dicts when streamed
    image_folder: Path | None
    streaming: bool = False


# --- reading one source ---------------------------------------------------------------------------------
def card_data_files(folder: Path) -> dict[str, dict[str, str]] | None:
    """``{config: {split: pattern}}`` from the ``configs:`` block of ``folder/README.md``'s YAML header (how the
    Hub maps configs to files), or ``None`` when the card has none."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8")
    if not text.startswith("---") or text.count("---") < 2:
        return None
    import yaml

    try:
        header = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError:
        return None
    if not isinstance(header, dict) or not isinstance(header.get("configs"), list):
        return None
    layout: dict[str, dict[str, str]] = {}
    for entry in header["configs"]:
        files = entry.get("data_files") if isinstance(entry, dict) else None
        if isinstance(files, str):
            files = [{"split": "train", "path": files}]
        for item in files or []:
            if isinstance(item, dict) and isinstance(item.get("path"), str):
                layout.setdefault(str(entry.get("config_name", "default")), {})[str(item.get("split", "train"))] = \
                    item["path"]
    return layout or None


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in BUILDERS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _split_of(path: Path, folder: Path) -> str | None:
    """The split a file belongs to by the Hub's naming conventions (``data/train-0000.parquet``,
    ``validation.jsonl``, ``test/part-0.parquet``), or None."""
    words = [w for part in path.relative_to(folder).with_suffix("").parts for w in part.replace("_", "-").split("-")]
    for split, aliases in SPLIT_ALIASES.items():
        if any(w.lower() in aliases for w in words):
            return split
    return None


def folder_files(folder: Path, name: str | None, split: str) -> list[Path]:
    """The files of config ``name`` / split ``split`` of a local folder laid out like a Hub dataset."""
    layout = card_data_files(folder)
    if layout:
        config = name or ("default" if "default" in layout else next(iter(layout)))
        if config not in layout or split not in layout[config]:
            known = ", ".join(f"{c}/{s}" for c, splits in layout.items() for s in splits)
            raise DataError(f"{folder}: no config/split {config}/{split} in its README.md card; known: {known}")
        return sorted(folder.glob(layout[config][split]))
    if name not in (None, "default"):
        raise DataError(f"{folder}: config {name!r} asked for, but the folder has no README.md card naming configs")
    files = _data_files(folder)
    by_split: dict[str | None, list[Path]] = {}
    for f in files:
        by_split.setdefault(_split_of(f, folder), []).append(f)
    if split in by_split:
        return by_split[split]
    if split == "train" and set(by_split) == {None}:
        return files  # no split in any name: everything is the train split, as on the Hub
    found = sorted(s for s in by_split if s)
    raise DataError(f"{folder}: no files for split {split!r}" + (f"; splits found: {found}" if found else
                                                                 f" (data files: {[f.name for f in files][:5]})"))


def load_hf_split(path: str, *, name: str | None = None, split: str = "train", streaming: bool = False) -> Any:
    """One split of a Hub dataset id, a local folder laid out like one, or a data file, as a ``datasets``
    ``Dataset`` (``IterableDataset`` when ``streaming``). Image columns stay undecoded (bytes and path)."""
    import datasets

    local = Path(path).expanduser()
    label = f"{path} [{name or 'default'}/{split}]"
    if local.is_dir() or local.is_file():
        files = folder_files(local, name, split) if local.is_dir() else [local]
        if not files:
            raise DataError(f"{label}: no data files")
        kinds = {BUILDERS.get(f.suffix) for f in files}
        if None in kinds or len(kinds) != 1:
            raise DataError(f"{label}: files must be all one of {sorted(BUILDERS)}; got {[f.name for f in files][:5]}")
        builder = kinds.pop()
        try:
            ds = datasets.load_dataset(builder, data_files={split: [str(f) for f in files]}, split=split,
                                       streaming=streaming,
                                       **({"field": "data"} if builder == "json" and _json_has_data_key(files[0])
                                          else {}))
        except Exception as e:
            raise DataError(f"{label}: could not read {[f.name for f in files][:3]}: {type(e).__name__}: {e}") from e
    elif Path(path).suffix in BUILDERS or path.startswith((".", "/", "~")):
        raise DataError(f"{path}: no such file or folder")
    else:
        try:
            ds = datasets.load_dataset(path, name, split=split, streaming=streaming)
        except Exception as e:
            raise DataError(
                f"{label}: could not load {path!r} from the Hugging Face Hub ({type(e).__name__}: {e}). Offline "
                "(HF_HUB_OFFLINE=1) or without network, download it where there is network (`huggingface-cli "
                f"download {path} --repo-type dataset --local-dir DIR`) and pass that folder instead.") from e
    return _undecoded_images(ds)


def _json_has_data_key(path: Path) -> bool:
    """A ``.json`` file holding ``{"data": [...]}`` (as some Hub exports do) rather than a list."""
    if path.suffix != ".json":
        return False
    with path.open("rb") as f:
        return f.read(64).lstrip().startswith(b"{")


def _undecoded_images(ds: Any) -> Any:
    import datasets

    features = getattr(ds, "features", None) or {}
    for col, feature in features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds


def plain_row(row: dict[str, Any], columns: dict[str, str] | None = None) -> dict[str, Any]:
    """A ``datasets`` row as a record: columns renamed (``columns``: source name -> Mova name), ``None``
    fields of message structs dropped (Arrow gives every message every key any message has), and an
    embedded image (``{"bytes", "path"}``) as its bytes, or as its path when it has no bytes."""
    if columns:
        row = {columns.get(k, k): v for k, v in row.items()}
    out = {}
    for key, value in row.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            value = [{k: v for k, v in m.items() if v is not None} for m in value]
        elif isinstance(value, dict) and set(value) <= {"bytes", "path"}:
            value = value.get("bytes") or value.get("path")
        out[key] = value
    return out


def read_source(path: str, *, name: str | None = None, split: str = "train", image_folder: str | None = None,
                columns: dict[str, str] | None = None, streaming: bool = False, limit: int | None = None,
                what: str = "data") -> SourceData:
    """The records of one source. A ``.json`` / ``.jsonl`` file read whole goes through Mova's one record
    reader (:func:`~mova.data.records.read_json_records`), so LLaVA's mixed-shape files (an image path in one
    record, a list or none in the next) load as they always have; everything else through ``datasets``."""
    from mova.data.records import read_json_records

    local = Path(path).expanduser()
    folder = Path(image_folder) if image_folder else (local if local.is_dir() else local.parent
                                                      if local.is_file() else None)
    label = path if split == "train" and not name else f"{path} [{name or 'default'}/{split}]"
    if local.is_file() and split != "train":
        raise DataError(f"{path}: a file has no splits (asked for {split!r}); name a folder or Hub dataset, or give "
                        "the held-out records a file of their own (data.eval_data_path)")
    if not streaming and (local.is_file() or local.is_dir()):
        files = [local] if local.is_file() else folder_files(local, name, split)
        if files and all(f.suffix in (".json", ".jsonl") for f in files):
            records = [r for f in files for r in read_json_records(f, what)]
            if columns:
                records = [plain_row(r, columns) if isinstance(r, dict) else r for r in records]
            return SourceData(label, records[:limit] if limit else records, folder)
    ds = load_hf_split(path, name=name, split=split, streaming=streaming)
    if streaming:
        if limit:
            ds = ds.take(limit)
        return SourceData(label, _StreamedRows(ds, columns), folder, streaming=True)
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    return SourceData(label, [plain_row(r, columns) for r in ds], folder)


class _StreamedRows:
    """A streamed ``datasets.IterableDataset`` as plain records, re-iterable (one pass per epoch)."""

    def __init__(self, ds: Any, columns: dict[str, str] | None):
        self.ds, self.columns = ds, columns

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.ds:
            yield plain_row(row, self.columns)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.ds, "set_epoch"):
            self.ds.set_epoch(epoch)


# --- mixing ---------------------------------------------------------------------------------------------
def mixture_counts(sizes: list[int], ratios: list[float], stopping: str = "first_exhausted") -> list[int]:
    """How many records each source gives a mixture in which source ``i`` makes ``ratios[i]`` (normalised)
    of the whole: ``first_exhausted`` -- the largest mixture that repeats no record; ``all_exhausted`` -- the
    smallest that uses every record (smaller sources repeat)."""
    if len(sizes) != len(ratios) or not sizes:
        raise ValueError("one ratio per source")
    if any(r <= 0 for r in ratios):
        raise DataError(f"mixing ratios must be > 0, got {ratios}")
    total = sum(ratios)
    shares = [r / total for r in ratios]
    reach = [n / s for n, s in zip(sizes, shares)]
    size = min(reach) if stopping == "first_exhausted" else max(reach)
    counts = [math.floor(s * size + 1e-9) for s in shares]
    if stopping == "all_exhausted":
        counts = [max(c, n) for c, n in zip(counts, sizes)]
    return counts


def mix_records(sources: list[SourceData], ratios: list[float] | None, seed: int,
                stopping: str = "first_exhausted") -> tuple[list[dict[str, Any]], list[Path | None], dict[str, Any]]:
    """Records of the (read whole) sources as one list, each with its image folder, and a summary of how many
    each source gave. Records a source gives are a seeded shuffle of it (cycled when it repeats)."""
    records: list[dict[str, Any]] = []
    folders: list[Path | None] = []
    sizes = [len(s.records) for s in sources]
    counts = sizes if ratios is None else mixture_counts(sizes, ratios, stopping)
    summary = {}
    for k, (src, n) in enumerate(zip(sources, counts)):
        order = list(range(len(src.records)))
        if ratios is not None:
            random.Random(f"{seed}-mix-{k}").shuffle(order)
        picked = [order[i % len(order)] for i in range(n)] if order else []
        records.extend(src.records[i] for i in picked)
        folders.extend([src.image_folder] * len(picked))
        summary[src.label] = {"records": sizes[k], "used": len(picked)}
    return records, folders, summary


class StreamMixture:
    """Records of streamed sources, interleaved: each next record comes from source ``i`` with probability
    ``ratios[i]`` (normalised; equal without ratios), seeded. ``first_exhausted`` stops when a source runs out,
    ``all_exhausted`` when every source has run out once (those that did restart). Yields (record, folder)."""

    def __init__(self, sources: list[SourceData], ratios: list[float] | None, seed: int,
                 stopping: str = "first_exhausted"):
        self.sources, self.seed, self.stopping = sources, seed, stopping
        ratios = ratios or [1.0] * len(sources)
        self.weights = [r / sum(ratios) for r in ratios]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for s in self.sources:
            if hasattr(s.records, "set_epoch"):
                s.records.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], Path | None]]:
        rng = random.Random(f"{self.seed}-stream-{self.epoch}")
        iters = [iter(s.records) for s in self.sources]
        done = [False] * len(iters)
        while True:
            k = rng.choices(range(len(iters)), weights=self.weights)[0]
            try:
                rec = next(iters[k])
            except StopIteration:
                done[k] = True
                if self.stopping == "first_exhausted" or all(done):
                    return
                iters[k] = iter(self.sources[k].records)
                try:
                    rec = next(iters[k])
                except StopIteration:
                    return
            yield rec, self.sources[k].image_folder


def held_out(n: int, size: float | int, seed: int) -> tuple[list[int], list[int]]:
    """(train, eval) positions of ``n`` records with ``size`` held out: a fraction in (0, 1) or a count."""
    n_eval = round(n * size) if isinstance(size, float) and size < 1 else int(size)
    if not 0 < n_eval < n:
        raise DataError(f"data.eval_size={size} holds out {n_eval} of {n} records; it must leave some of each")
    order = list(range(n))
    random.Random(f"{seed}-eval").shuffle(order)
    held = sorted(order[:n_eval])
    keep = sorted(order[n_eval:])
    return keep, held


def image_bytes(value: Any) -> bytes | None:
    """The bytes of an embedded image (a record's ``image`` may be them), else None."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return None


def open_image_bytes(data: bytes) -> Any:
    """Embedded image bytes as an RGB PIL image (a DataError when they do not decode)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types for corrupt data
        raise DataError(f"embedded image does not decode: {type(e).__name__}: {e}") from e
