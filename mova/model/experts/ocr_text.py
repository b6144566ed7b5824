"""An OCR "expert": the words on the image, read by RapidOCR (PP-OCR models on onnxruntime).

Unlike the pixel experts it has no neural weights of its own in Mova: its output is text plus boxes,
and the words are embedded later by the LLM's own embedding table (in the fusion network), so its
``hidden_size`` is 0, meaning "the LLM width", and ``forward`` is not used. The detection and
recognition models ship inside the ``rapidocr-onnxruntime`` wheel, so ``load_pretrained`` has nothing
to do.

"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from mova.config import ExpertConfig
from mova.model.experts.base import RgbTransform, VisualExpert, register_expert, to_rgb

DEFAULT_MIN_SCORE = 0.5
DEFAULT_CACHE_SIZE = 1024


@dataclass(frozen=True)
class OcrWord:
    """One recognised text line/word: ``box`` is ``(x0, y0, x1, y1)`` as fractions of the image size."""

    text: str
    box: tuple[float, float, float, float]
    score: float


def reading_order(words: list[OcrWord]) -> list[OcrWord]:
    """Top-to-bottom lines, left-to-right within a line.

    A word joins the current line when its vertical centre falls inside the line's vertical extent, so
    words of one line with slightly different tops are not split by a strict (y, x) sort.
    """
    lines: list[list[OcrWord]] = []
    top = bottom = 0.0
    for word in sorted(words, key=lambda w: (w.box[1], w.box[0])):
        centre = (word.box[1] + word.box[3]) / 2
        if lines and top <= centre <= bottom:
            lines[-1].append(word)
            bottom = max(bottom, word.box[3])
        else:
            lines.append([word])
            top, bottom = word.box[1], word.box[3]
    return [w for line in lines for w in sorted(line, key=lambda w: w.box[0])]


def image_key(image: Image.Image) -> str:
    """Content hash of an RGB image (pixels + size): the OCR cache key."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.size[0]}x{image.size[1]}".encode())
    return digest.hexdigest()


@register_expert
class OcrTextExpert(VisualExpert):
    """Reads words with RapidOCR; ``grid`` is ``(1, cfg.max_tokens)``: a row of at most that many tokens.

    ``cfg.kwargs``: ``min_score`` (drop words recognised with a lower confidence, default 0.5),
    ``cache_size`` (images remembered, default 1024), ``use_angle_cls`` (run the 180-degree text
    classifier, default False: faster, and upside-down text is rare); any other key is passed to
    ``RapidOCR(...)`` (e.g. ``det_use_cuda``). Truncating the words to ``max_tokens`` word pieces is the
    fusion network's job, since only it knows the tokenizer.
    """

    family = "ocr_text"
    input_kind = "ocr"

    def __init__(self, cfg: ExpertConfig):
        super().__init__(cfg)
        options = dict(cfg.kwargs)
        self.min_score = float(options.pop("min_score", DEFAULT_MIN_SCORE))
        self.cache_size = int(options.pop("cache_size", DEFAULT_CACHE_SIZE))
        self.use_angle_cls = bool(options.pop("use_angle_cls", False))
        self.engine_options = options
        self._engine: Any = None  # created on the first read: loading the onnx models takes a while
        self._cache: OrderedDict[str, tuple[OcrWord, ...]] = OrderedDict()
        self._lock = threading.Lock()
        #: how many images were actually run through the OCR engine, and how many came from the cache.
        self.engine_calls = 0
        self.cache_hits = 0

    # --- shape facts -------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        return 1, self.cfg.max_tokens

    @property
    def hidden_size(self) -> int:
        """0: the words are embedded with the LLM's embedding table, so their width is the LLM's."""
        return 0

    # --- behaviour ---------------------------------------------------------------------------
    def image_transform(self) -> RgbTransform:
        """Returns the image converted to RGB, as a PIL image (not a tensor): :meth:`read` takes it."""
        return RgbTransform()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            f"expert {self.cfg.name!r} (ocr_text) has no tensor features: call .read(image) for its words, "
            "which the fusion network embeds with the LLM's embedding table"
        )

    def load_pretrained(self) -> None:
        """Nothing to load: the OCR models ship inside the rapidocr-onnxruntime wheel."""

    def read(self, image: Image.Image) -> list[OcrWord]:
        """The words on ``image`` in reading order; each distinct image is OCR'd once (LRU cache)."""
        rgb = to_rgb(image)
        key = image_key(rgb)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return list(cached)
        words = tuple(self._recognise(rgb))
        with self._lock:
            self._cache[key] = words
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return list(words)

    def _recognise(self, rgb: Image.Image) -> list[OcrWord]:
        engine = self._get_engine()
        result, _ = engine(rgb, use_cls=self.use_angle_cls)  # a PIL image is taken as RGB and converted to BGR
        self.engine_calls += 1
        if not result:
            return []
        width, height = rgb.size
        words = []
        for points, text, score in result:
            if float(score) < self.min_score or not str(text).strip():
                continue
            xs = [float(p[0]) for p in points]
            ys = [float(p[1]) for p in points]
            box = (
                min(max(min(xs) / width, 0.0), 1.0),
                min(max(min(ys) / height, 0.0), 1.0),
                min(max(max(xs) / width, 0.0), 1.0),
                min(max(max(ys) / height, 0.0), 1.0),
            )
            words.append(OcrWord(text=str(text), box=box, score=float(score)))
        return reading_order(words)

    def _get_engine(self) -> Any:
        with self._lock:
            if self._engine is None:
                from rapidocr_onnxruntime import RapidOCR

                # The engine's own score filter must not be stricter than ours.
                self._engine = RapidOCR(text_score=self.min_score, use_cls=self.use_angle_cls, **self.engine_options)
            return self._engine

    # The onnxruntime sessions and the lock cannot be pickled (DataLoader workers); rebuild them lazily.
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_engine"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()
