"""LLaVA-format conversation data: reading, validation, tokenization with label masks, batching.

Records look like ``{"id", "image": "rel/path.jpg" (or a list, or absent for text-only),
"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}``,
with image paths relative to an image folder. The whole file is checked once before training starts,
so a bad record stops the run at once with its id and index rather than hours later (or, with
``skip_bad_records``, is logged, dropped and counted in the run's summary).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

from mova.config import DataConfig
from mova.data.records import RecordProblem, read_json_records, resolve_image_path
from mova.data.sources import open_image_bytes
from mova.errors import ConfigError, DataError, ImageLoadError, MovaError
from mova.model.processing_mova import MovaProcessor, load_image
from mova.model.templates import IMAGE_PLACEHOLDER, normalize_messages, render

logger = logging.getLogger(__name__)


class BadRecordError(MovaError, ValueError):
    """A data record cannot be used; the message names its index and id, ``reason`` says what is wrong."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


@dataclass
class Skipped:
    index: int
    id: str
    reason: str
    #: the short name of the reason (``missing image``, ``too long``, ...): what summaries count by.
    kind: str = "bad record"


@dataclass
class RecordInfo:
    index: int
    id: str
    images: list[Path | bytes]  # a file, or image bytes embedded in the dataset
    length: int  # tokens, visual included (OCR at its maximum)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list or a JSONL file of LLaVA records."""
    return read_json_records(path, "data")


def _is_text_only(rec: Any) -> bool:
    """No image and no ``<image>`` placeholder anywhere in the conversation (a malformed record is not)."""
    if not isinstance(rec, dict) or rec.get("image") is not None or not isinstance(rec.get("conversations"), list):
        return False
    return not any(IMAGE_PLACEHOLDER in str(turn.get("value", turn.get("content", "")))
                   for turn in rec["conversations"] if isinstance(turn, dict))


class LlavaDataset(Dataset):
    """Tokenized LLaVA conversations with labels on the assistant turns only."""

    def __init__(self, records: list[dict[str, Any]], processor: MovaProcessor, cfg: DataConfig, template: str,
                 progress: bool = True, feature_cache: Any = None, leave_out_text_only: bool = False,
                 folders: list[Path | None] | None = None):
        """``leave_out_text_only``: records with no image and no ``<image>`` placeholder are left out and
        counted (``text_only_left_out``), for stages where only the fusion network trains; a record whose text
        has a placeholder but no image is still checked, and reported as broken. Records keep the indices
        they have in ``records`` in every message. ``folders`` gives each record the folder its image paths
        are relative to (records mixed from several sources); default: ``data.image_folder`` or the data
        file's folder for all."""
        self._setup(processor, cfg, template, feature_cache)
        self.records = records
        self.folders = folders
        for i, rec in enumerate(tqdm(records, desc="checking records", disable=not progress, mininterval=1.0)):
            if leave_out_text_only and _is_text_only(rec):
                self.text_only_left_out += 1
                continue
            rid = str(rec.get("id", f"#{i}")) if isinstance(rec, dict) else f"#{i}"
            try:
                self.items.append(self._check(i, rid, rec))
            except (ValueError, ImageLoadError, KeyError, TypeError) as e:
                self._bad(i, rid, str(e), getattr(e, "kind", "malformed record"))
        if not self.items:
            raise ConfigError(f"no usable records in {cfg.data_path or 'the data'} ({len(self.skipped)} skipped)")

    def _setup(self, processor: MovaProcessor, cfg: DataConfig, template: str, feature_cache: Any) -> None:
        self.processor = processor
        #: a FeatureCache whose experts were opened (checked) against the model; those experts never run.
        self.feature_cache = feature_cache
        self.cached = set(feature_cache.experts) if feature_cache is not None else set()
        self.cfg = cfg
        self.template = template
        self.records: Any = []
        self.folders: list[Path | None] | None = None
        # image paths are relative to data.image_folder, by default the data file's own folder (as LLaVA's are)
        self.folder = Path(cfg.image_folder) if cfg.image_folder else (
            Path(cfg.data_path).resolve().parent if cfg.data_path else None)
        self.skipped: list[Skipped] = []
        self.items: list[RecordInfo] = []
        #: items whose images failed to load while training (skipped from then on).
        self._failed: set[int] = set()
        self.max_positions = processor.config.max_positions
        layout = processor.layout
        self._ocr_max = tuple(b.max_tokens for b in layout.ocr_blocks)
        self._visual_tokens = layout.num_tokens(self._ocr_max)
        self._visual_positions = layout.num_positions(self._ocr_max)
        self.text_only_left_out = 0

    # --- validation ---------------------------------------------------------------------------
    def _bad(self, index: int, rid: str, reason: str, kind: str) -> None:
        if not self.cfg.skip_bad_records:
            raise BadRecordError(f"record {index} (id {rid!r}): {reason} (set data.skip_bad_records=true to skip)")
        logger.warning("skipping record %d (id %r): %s", index, rid, reason)
        self.skipped.append(Skipped(index, rid, reason, kind))

    def _image_list(self, rec: dict[str, Any]) -> list[Any]:
        img = rec.get("image")
        if img is None:
            return []
        return list(img) if isinstance(img, (list, tuple)) else [img]

    def _check(self, index: int, rid: str, rec: Any) -> RecordInfo:
        if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
            raise RecordProblem("no conversations", "no 'conversations' list")
        messages = normalize_messages(rec["conversations"])
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise RecordProblem("no assistant turn", "no assistant turn")
        folder = self.folders[index] if self.folders is not None else self.folder
        paths = [p if isinstance(p, bytes) else resolve_image_path(folder, p) for p in self._image_list(rec)]
        if self.cached and any(isinstance(p, bytes) for p in paths):
            raise RecordProblem("embedded image", "an image embedded in the dataset cannot be looked up in the "
                                "feature cache (it is keyed by image file)")
        n_placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
        if paths and n_placeholders == 0:
            # LLaVA convention: an image record without a placeholder gets one before the first question.
            first = next(m for m in messages if m["role"] == "user")
            first["content"] = IMAGE_PLACEHOLDER + "\n" + first["content"]
            n_placeholders = len(paths) if len(paths) == 1 else 0
        if n_placeholders != len(paths):
            raise RecordProblem("placeholders and images differ",
                                f"{n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(paths)} image(s)")
        for p in paths:
            if isinstance(p, bytes):
                if self.cfg.verify_images:
                    try:
                        open_image_bytes(p)
                    except DataError as e:
                        raise RecordProblem("unreadable image", str(e)) from e
                continue
            if not p.is_file():
                raise RecordProblem("missing image", f"missing image {p}")
            if self.cfg.verify_images:
                try:
                    with Image.open(p) as im:
                        im.verify()
                except Exception as e:  # PIL raises many types for corrupt files
                    raise RecordProblem("unreadable image", f"unreadable image {p}: {e}") from e
        rec["conversations"] = messages
        text = "".join(s.text for s in render(self.template, messages, self.processor.tokenizer))
        text_tokens = len(self.processor.tokenizer(text.replace(IMAGE_PLACEHOLDER, ""),
                                                   add_special_tokens=False).input_ids) + 1
        length = text_tokens + len(paths) * self._visual_tokens
        positions = text_tokens + len(paths) * self._visual_positions
        if self.cfg.max_length and length > self.cfg.max_length:
            raise RecordProblem("too long", f"too long: {length} tokens > max_length {self.cfg.max_length}")
        if self.max_positions and positions > self.max_positions:
            raise RecordProblem("too long", f"too long: {positions} positions > the LLM's context {self.max_positions}")
        return RecordInfo(index, rid, paths, length)

    # --- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        return [it.length for it in self.items]

    @property
    def has_image(self) -> list[bool]:
        return [bool(it.images) for it in self.items]

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample ``i``. An image that fails to load here (possible with ``data.verify_images=false``) stops
        the run, or with ``data.skip_bad_records=true`` is reported and replaced by the next usable sample, so
        a long run does not die mid-way on one corrupt file."""
        for step in range(len(self.items)):
            j = (i + step) % len(self.items)
            if j in self._failed:
                continue
            try:
                return self._sample(self.items[j])
            except BadRecordError as e:
                if not self.cfg.skip_bad_records:
                    raise
                info = self.items[j]
                logger.warning("skipping record %d (id %r): %s", info.index, info.id, e.reason)
                self._failed.add(j)
                self.skipped.append(Skipped(info.index, info.id, e.reason, "unreadable image"))
        raise ConfigError(f"no usable records in {self.cfg.data_path or 'the data'}: every image failed to load")

    def _sample(self, info: RecordInfo) -> dict[str, Any]:
        rec = self.records[info.index]
        pixels, ocr_lengths = self._images(info)
        segments = render(self.template, rec["conversations"], self.processor.tokenizer)
        ids, labels = self.processor.encode_segments(segments, ocr_lengths)
        input_ids = torch.tensor(ids)
        position_ids = self.processor.position_ids(input_ids, ocr_lengths)
        return {"input_ids": input_ids, "labels": torch.tensor(labels), "images": pixels if info.images else None,
                "index": info.index, "position_ids": position_ids}

    def _images(self, info: RecordInfo) -> tuple[dict[str, torch.Tensor], list[tuple[int, ...]]]:
        """Pixels (or cached features and cached OCR words) of a record's images."""
        proc = self.processor
        keys = [self.feature_cache.key_for(p) for p in info.images] if self.cached and info.images else []
        ocr_words = {n: self.feature_cache.ocr_words(n, keys) for n in proc.ocr_experts if n in self.cached} \
            if keys else {}
        live = [n for n in (*proc.transforms, *proc.ocr_experts) if n not in self.cached]
        try:
            images = [open_image_bytes(p) if isinstance(p, bytes) else load_image(p) for p in info.images] \
                if live else [None] * len(info.images)
        except (ImageLoadError, DataError) as e:
            raise BadRecordError(f"record {info.index} (id {info.id!r}): {e} (set data.skip_bad_records=true to "
                                 "skip such records)", reason=str(e)) from e
        pixels, ocr_lengths = proc.process_images(images, ocr_words=ocr_words, skip=self.cached)
        for name in proc.transforms:
            if name in self.cached and keys:
                pixels[f"{name}.features"] = self.feature_cache.lookup(name, keys)
        return pixels, ocr_lengths


@dataclass
class MovaCollator:
    """Pad ids/labels (right), build the mask, and concatenate the samples' images in order."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    extra_keys: tuple[str, ...] = field(default_factory=tuple)

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(b["input_ids"]) for b in batch)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = b["input_ids"], b["labels"], 1
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        image_dicts = [b["images"] for b in batch if b.get("images")]
        if image_dicts:
            out["images"] = concat_image_dicts(image_dicts)
        return out


@dataclass
class PackedCollator:
    """Concatenate the batch's samples into rows of at most ``max_tokens`` tokens, with no padding between them.

    Why: LLaVA-style data mixes short and long samples (and text-only ones), so a padded batch spends
    much of its compute on padding. Here each sample keeps its own position ids (from the dataset,
    restarting at 0 and keeping its images' compressed ids), ``sequence_ids`` (index of the sample within
    its row, -1 for padding) tells the model where samples end so that attention stays inside each one,
    and the first label of every sample is -100 so that no sample learns to predict the next one's
    first token (the padded path never scores that token either). Rows are filled first-fit, longest
    sample first; only the ends of rows shorter than the longest are padded (``attention_mask`` 0 there).
    A sample longer than ``max_tokens`` gets a row of its own (never cut). Images are concatenated in
    the order their image tokens appear in the rows, which is the order the model scatters them in.
    """

    pad_token_id: int
    max_tokens: int = 4096
    pad_to_multiple_of: int | None = None

    def pack(self, lengths: list[int]) -> list[list[int]]:
        """Rows of sample indices (first-fit decreasing); deterministic for given lengths."""
        return first_fit_rows(lengths, self.max_tokens, "packing_max_tokens")

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        if any("position_ids" not in b for b in batch):
            raise KeyError("PackedCollator needs each sample's 'position_ids' (LlavaDataset gives them)")
        rows = self.pack([len(b["input_ids"]) for b in batch])
        width = max(sum(len(batch[i]["input_ids"]) for i in row) for row in rows)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        shape = (len(rows), width)
        ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, -100, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        sequence_ids = torch.full(shape, -1, dtype=torch.long)
        image_dicts = []
        for r, row in enumerate(rows):
            at = 0
            for s, i in enumerate(row):
                b = batch[i]
                n = len(b["input_ids"])
                ids[r, at:at + n] = b["input_ids"]
                labels[r, at:at + n] = b["labels"]
                labels[r, at] = -100
                positions[r, at:at + n] = b["position_ids"]
                sequence_ids[r, at:at + n] = s
                if b.get("images"):
                    image_dicts.append(b["images"])
                at += n
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": (sequence_ids >= 0).long(), "labels": labels,
                               "position_ids": positions, "sequence_ids": sequence_ids}
        if image_dicts:
            out["images"] = concat_image_dicts(image_dicts)
        return out


def first_fit_rows(lengths: list[int], max_tokens: int, option: str | None = None) -> list[list[int]]:
    """Rows of item indices, first-fit decreasing by length; an item longer than ``max_tokens`` gets a
    row of its own (never cut; with ``option``, the setting's name, that is logged as a warning).
    Deterministic for given lengths."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            if n > max_tokens and option:
                logger.warning("sample of %d tokens is longer than %s=%d: it gets a row alone", n, option, max_tokens)
            rows.append([i])
            room.append(max_tokens - n)
    return rows


def concat_image_dicts(dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-sample image dicts along the image axis; OCR ids pad with -1, boxes with 0."""
    out: dict[str, torch.Tensor] = {}
    for key in dicts[0]:
        parts = [d[key] for d in dicts]
        if key.endswith(".input_ids") or key.endswith(".boxes"):
            width = max(p.shape[1] for p in parts)
            fill = -1 if key.endswith(".input_ids") else 0
            parts = [torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1]), value=fill)
                     for p in parts]
        out[key] = torch.cat(parts, dim=0)
    return out


class ModalityLengthGroupedSampler(Sampler[int]):
    """Shuffle, then group samples so that a global batch holds one modality and similar lengths.

    Image and text-only samples are shuffled separately, cut into global batches, and each batch is
    sorted by length (less padding); then the batches are shuffled. The order depends only on
    ``seed``, the epoch and ``global_batch_size`` (per-device batch x world size), so 1-process and
    N-process runs see the same global batches, and a resumed run the same order.
    """

    def __init__(self, lengths: list[int], has_image: list[bool], global_batch_size: int, seed: int = 0):
        self.lengths, self.has_image = lengths, has_image
        self.global_batch_size, self.seed, self.epoch = global_batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        batches: list[list[int]] = []
        for modality in (True, False):
            idx = [i for i, h in enumerate(self.has_image) if h == modality]
            idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
            for k in range(0, len(idx), self.global_batch_size):
                batches.append(sorted(idx[k:k + self.global_batch_size], key=lambda i: -self.lengths[i]))
        # Keep full batches first so that an incomplete one (if any) lands at the very end.
        full = [b for b in batches if len(b) == self.global_batch_size]
        partial = [b for b in batches if len(b) < self.global_batch_size]
        order = torch.randperm(len(full), generator=g).tolist()
        for j in order:
            yield from full[j]
        for b in partial:
            yield from b


def dataset_summary(ds: LlavaDataset | StreamingLlavaDataset) -> dict[str, Any]:
    reasons = Counter(s.kind for s in ds.skipped)
    if isinstance(ds, StreamingLlavaDataset):
        return {"streamed": True, "records_seen": ds.seen, "skipped": len(ds.skipped),
                "skipped_by_reason": dict(reasons), "text_only_left_out": ds.encoder.text_only_left_out}
    return {"records": len(ds.records), "used": len(ds), "skipped": len(ds.skipped),
            "skipped_by_reason": dict(reasons), "with_image": sum(ds.has_image),
            "text_only_left_out": ds.text_only_left_out}


class StreamingLlavaDataset(torch.utils.data.IterableDataset):
    """LLaVA records from streamed sources (:class:`~mova.data.sources.StreamMixture`), checked and tokenized as
    they arrive, with the same checks, labels and skipping rules as :class:`LlavaDataset` (whose per-record
    code it runs). Nothing is read before training; a bad record stops the run when it arrives, or with
    ``data.skip_bad_records`` is skipped and counted."""

    def __init__(self, stream: Any, processor: MovaProcessor, cfg: DataConfig, template: str,
                 feature_cache: Any = None, leave_out_text_only: bool = False):
        self.stream = stream
        self.leave_out_text_only = leave_out_text_only
        self.encoder = LlavaDataset.__new__(LlavaDataset)
        self.encoder._setup(processor, cfg, template, feature_cache)
        self.seen = 0

    @property
    def skipped(self) -> list[Skipped]:
        return self.encoder.skipped

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        enc = self.encoder
        for i, (rec, folder) in enumerate(self.stream):
            self.seen = i + 1
            if self.leave_out_text_only and _is_text_only(rec):
                enc.text_only_left_out += 1
                continue
            rid = str(rec.get("id", f"#{i}")) if isinstance(rec, dict) else f"#{i}"
            enc.records, enc.folders = {i: rec}, {i: folder}
            try:
                info = enc._check(i, rid, rec)
                yield enc._sample(info)
            except BadRecordError as e:
                if not enc.cfg.skip_bad_records:
                    raise
                enc.skipped.append(Skipped(i, rid, e.reason, "unreadable image"))
            except (ValueError, ImageLoadError, KeyError, TypeError) as e:
                enc._bad(i, rid, str(e), getattr(e, "kind", "malformed record"))


@dataclass
class LlavaData:
    """What a stage trains and evaluates on: the training set, the held-out set (or None) and where they came
    from (per source: records read and used)."""

    train: Any
    eval: Any
    sources: dict[str, Any]


def load_llava_data(cfg: DataConfig, processor: MovaProcessor, template: str, *, seed: int = 0,
                    feature_cache: Any = None, leave_out_text_only: bool = False) -> LlavaData:
    """The training (and held-out) LLaVA data ``data:`` names: ``data_path`` (a LLaVA JSON / JSONL file, a Hub
    dataset id or a local folder laid out like one) or ``sources`` mixed by ratio; streamed with
    ``streaming``; the held-out set from ``eval_data_path``, each source's ``eval_split``, or ``eval_size``
    records held out of the training set (:mod:`mova.data.sources`)."""
    from mova.config import DataSource
    from mova.data.sources import StreamMixture, held_out, mix_records, read_source

    specs = list(cfg.sources) or ([DataSource(path=cfg.data_path, image_folder=cfg.image_folder)]
                                  if cfg.data_path else [])
    if not specs:
        raise ConfigError("data.data_path or data.sources is required")
    if cfg.data_path and cfg.sources:
        raise ConfigError("set data.data_path or data.sources, not both")
    with_ratio = [s.ratio is not None for s in specs]
    if any(with_ratio) and not all(with_ratio):
        raise ConfigError("data.sources: give every source a ratio, or none (then they are concatenated)")
    ratios = [s.ratio for s in specs] if all(with_ratio) and len(specs) > 1 else None

    def read(spec: DataSource, split: str | None = None, streaming: bool = False) -> Any:
        folder = spec.image_folder or (cfg.image_folder if not cfg.sources else None)
        return read_source(spec.path, name=spec.name, split=split or spec.split, image_folder=folder,
                           columns=spec.columns, streaming=streaming, limit=spec.limit)

    kwargs = {"feature_cache": feature_cache, "leave_out_text_only": leave_out_text_only}
    eval_ds = None
    if cfg.streaming:
        if cfg.eval_size:
            raise ConfigError("data.eval_size holds records out of a list; a stream has none: use "
                              "data.eval_split or data.eval_data_path with data.streaming")
        stream = StreamMixture([read(s, streaming=True) for s in specs], ratios, seed, cfg.mix_stopping)
        train = StreamingLlavaDataset(stream, processor, cfg, template, **kwargs)
        summary = {s.path: {"streamed": True, "ratio": s.ratio} for s in specs}
    else:
        srcs = [read(s) for s in specs]
        records, folders, summary = mix_records(srcs, ratios, seed, cfg.mix_stopping)
        if cfg.limit:
            records, folders = records[:cfg.limit], folders[:cfg.limit]
        if cfg.eval_size:
            keep, held = held_out(len(records), cfg.eval_size, seed)
            eval_ds = LlavaDataset([records[i] for i in held], processor, cfg, template,
                                   folders=[folders[i] for i in held], **kwargs)
            records, folders = [records[i] for i in keep], [folders[i] for i in keep]
        train = LlavaDataset(records, processor, cfg, template, folders=folders, **kwargs)
    if cfg.eval_data_path or cfg.eval_split:
        if eval_ds is not None:
            raise ConfigError("data.eval_size and data.eval_data_path / eval_split both name held-out data; "
                              "set one")
        if cfg.eval_data_path:
            evals = [read(DataSource(path=cfg.eval_data_path, image_folder=cfg.image_folder),
                          split=cfg.eval_split or "train")]
        else:
            evals = [read(s, split=cfg.eval_split) for s in specs]
        records, folders, _ = mix_records(evals, None, seed)
        if cfg.eval_limit:
            records, folders = records[:cfg.eval_limit], folders[:cfg.eval_limit]
        eval_ds = LlavaDataset(records, processor, cfg, template, folders=folders, **kwargs)
    return LlavaData(train, eval_ds, summary)
