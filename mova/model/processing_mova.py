"""``MovaProcessor``: tokenizer + one image transform per expert + OCR + chat template.

It turns prompts with ``<image>`` placeholders and their images into model inputs: each placeholder
becomes as many image tokens as the fusion network will emit for that image, so ids, mask and (later)
labels have their final length; ``images`` carries one pixel tensor per pixel expert and, for the
``ocr_text`` expert, the word-piece ids (``-1`` padded) and word boxes. It refuses what it cannot
process faithfully: unreadable images, placeholder/image count mismatches, and sequences whose
positions exceed the LLM's context (visual tokens are never cut).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

from mova.errors import ConfigError, ImageLoadError, PlaceholderMismatchError, SequenceTooLongError
from mova.model.experts import build_expert
from mova.model.experts.base import to_rgb
from mova.model.layout import VisualLayout
from mova.model.modeling_mova import MovaConfig
from mova.model.positions import position_ids_from_layout
from mova.model.start_token import start_ids
from mova.model.templates import IMAGE_PLACEHOLDER, content_text, render_text

logger = logging.getLogger(__name__)

#: the processor's own options (transformers' file name); checkpoints saved before used :data:`LEGACY_FILE`.
PROCESSOR_FILE = "processor_config.json"
LEGACY_FILE = "mova_processor.json"
#: ``from_pretrained`` options meant for loading files, not for the processor itself.
HUB_KWARGS = ("trust_remote_code", "cache_dir", "revision", "token", "local_files_only", "force_download",
              "subfolder")
ImageInput = Image.Image | str | Path
#: keys of a chat message's image part that may hold the image (transformers' names).
IMAGE_PART_KEYS = ("image", "path", "url")


def load_image(image: ImageInput) -> Image.Image:
    """Open a path (or pass a PIL image through) as RGB, with an error naming a bad file."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
        from transformers.image_utils import load_image as load_remote_image

        return to_rgb(load_remote_image(image))
    path = Path(image)
    if not path.is_file():
        raise ImageLoadError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"cannot read image {path}: {e}") from e


def sample_position_ids(input_ids: torch.Tensor, layout: VisualLayout, image_token_id: int,
                        ocr_lengths: list[tuple[int, ...]]) -> torch.Tensor:
    """Position ids of one unpadded sample, as ``MovaForCausalLM.compute_position_ids`` gives them.

    Text advances by one; image tokens take their images' layouts (compressed schemes). Computed per
    sample so that a packed row (:class:`~mova.data.llava.PackedCollator`) can restart them at 0 for each sample.
    """
    image = input_ids == image_token_id
    local = torch.zeros_like(input_ids)
    advance = torch.ones_like(input_ids)
    vis_local, vis_advance = layout.batch(list(ocr_lengths))
    if int(image.sum()) != vis_local.numel():
        raise ValueError(f"{int(image.sum())} image tokens but the images make {vis_local.numel()} visual tokens")
    local[image] = vis_local
    advance[image] = vis_advance
    return position_ids_from_layout(local, advance)


def chat_images(messages: list[dict[str, Any]]) -> list[ImageInput]:
    """The images of a chat's ``{"type": "image", "image" | "path" | "url": ...}`` parts, in order."""
    found = []
    for m in messages:
        content = m.get("content", m.get("value"))
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image":
                source = next((part[k] for k in IMAGE_PART_KEYS if part.get(k) is not None), None)
                if source is None:
                    raise PlaceholderMismatchError(f"image part {part!r} names no image (keys {IMAGE_PART_KEYS})")
                found.append(source)
    return found


class MovaProcessor(ProcessorMixin):
    """Prepare ``(text, images)`` for :class:`~mova.model.modeling_mova.MovaForCausalLM`.

    A transformers ``ProcessorMixin``: its one sub-processor is the tokenizer (the image transforms are built
    from the model's config, read from the same folder), it saves ``processor_config.json`` and loads through
    ``AutoProcessor``, and it takes chat messages whose content is a list of image / text parts, as
    ``pipeline("image-text-to-text")`` passes them.
    """

    #: images become visual tokens (a :class:`~mova.model.processing_text.TextProcessor` has none).
    multimodal = True

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: MovaConfig, padding_side: str = "left",
                 chat_template: str | None = None):
        super().__init__(tokenizer, chat_template=chat_template)
        self.config = config
        self.padding_side = padding_side
        self.layout = config.layout()
        self.image_token = IMAGE_PLACEHOLDER
        self.image_token_id = config.image_token_id
        self.template = config.template
        # Transforms need only the experts' architectures: build them on the meta device (no memory).
        with torch.device("meta"):
            experts = [build_expert(c) for c in config.expert_configs()]
        self.transforms = {e.cfg.name: e.image_transform() for e in experts if e.input_kind == "pixels"}
        self.ocr_experts = {e.cfg.name: e for e in experts if e.input_kind == "ocr"}
        for e in self.ocr_experts.values():
            e.to_empty(device="cpu")
        self._warned_ocr_cap = False

    # --- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``processor_config.json``: the processor's own options (the model config is saved with the model)."""
        return {"processor_class": type(self).__name__, "padding_side": self.padding_side}

    def save_pretrained(self, path: str | Path, **kwargs: Any) -> list[str]:
        return super().save_pretrained(str(path), **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, config: MovaConfig | None = None, **kwargs: Any) -> MovaProcessor:
        # AutoProcessor (and pipeline()) pass loading options along. trust_remote_code must reach the config
        # and tokenizer loaders: a released folder's config.json has an auto_map, and without it they prompt.
        hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        path = Path(path)
        config = config or MovaConfig.from_pretrained(path, **hub)
        options: dict[str, Any] = {}
        for name in (LEGACY_FILE, PROCESSOR_FILE):
            if (path / name).is_file():
                options.update({k: v for k, v in json.loads((path / name).read_text()).items() if k == "padding_side"})
        options.update({k: v for k, v in kwargs.items() if k in ("padding_side", "chat_template")})
        return cls(AutoTokenizer.from_pretrained(path, **hub), config, **options)

    # --- templates -----------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            template: str | None = None, *, tokenize: bool = False, return_dict: bool = False,
                            continue_final_message: bool = False, processor_kwargs: dict[str, Any] | None = None,
                            **_: Any) -> Any:
        """The prompt of ``messages`` under Mova's chat template, or with ``tokenize`` its model inputs.

        Content is a string with ``<image>`` placeholders or a list of ``{"type": "image", "image" | "path" |
        "url": ...}`` / ``{"type": "text", "text": ...}`` parts, whose images ``tokenize`` loads and processes.
        ``continue_final_message`` leaves the final message open so that the answer continues it. Other options
        transformers passes (Jinja variables, ``return_tensors``) do not apply to Mova's templates.
        """
        name = template or self.template
        if continue_final_message:
            text = render_text(name, messages, self.tokenizer, add_generation_prompt=False)
            final = content_text(messages[-1].get("content", messages[-1].get("value")))
            cut = text.rfind(final) if final else -1
            if cut < 0:
                raise ConfigError("continue_final_message: the final message's text is not in the rendered prompt")
            text = text[: cut + len(final)]
        else:
            text = render_text(name, messages, self.tokenizer, add_generation_prompt)
        if not tokenize:
            return text
        inputs = self(text, images=chat_images(messages) or None, **(processor_kwargs or {}))
        return inputs if return_dict else inputs["input_ids"]

    # --- images --------------------------------------------------------------------------------
    def words_to_tokens(self, name: str, words: list[Any]) -> tuple[list[int], list[list[float]]]:
        """Word-piece ids of OCR ``words`` (in reading order) and each piece's word box, capped at
        the expert's ``max_tokens`` (with one warning per processor when the cap cuts)."""
        ids: list[int] = []
        boxes: list[list[float]] = []
        for k, word in enumerate(words):
            pieces = self.tokenizer((" " if k else "") + word.text, add_special_tokens=False).input_ids
            ids += pieces
            boxes += [list(word.box)] * len(pieces)
        cap = self.ocr_experts[name].cfg.max_tokens
        if len(ids) > cap:
            if not self._warned_ocr_cap:
                logger.warning("OCR expert %r read %d word pieces; keeping the first %d (max_tokens)",
                               name, len(ids), cap)
                self._warned_ocr_cap = True
            ids, boxes = ids[:cap], boxes[:cap]
        return ids, boxes

    def ocr_batch(self, name: str, tokens: list[tuple[list[int], list[list[float]]]]) -> dict[str, torch.Tensor]:
        """``{name}.input_ids`` (-1 padded) and ``{name}.boxes`` for a list of images' OCR tokens."""
        width = max([len(t[0]) for t in tokens] + [1])
        ids = torch.full((len(tokens), width), -1, dtype=torch.long)
        boxes = torch.zeros(len(tokens), width, 4)
        for i, (t_ids, t_boxes) in enumerate(tokens):
            if t_ids:
                ids[i, : len(t_ids)] = torch.tensor(t_ids)
                boxes[i, : len(t_ids)] = torch.tensor(t_boxes)
        return {f"{name}.input_ids": ids, f"{name}.boxes": boxes}

    def process_images(self, images: list[Image.Image], ocr_words: dict[str, list[list[Any]]] | None = None,
                       skip: set[str] | frozenset[str] = frozenset()) -> tuple[dict[str, torch.Tensor],
                                                                            list[tuple[int, ...]]]:
        """The ``images`` dict for the model, and each image's OCR token counts (one per OCR expert).

        ``ocr_words`` (per OCR expert, one word list per image, e.g. from a feature cache) replaces
        running OCR; experts named in ``skip`` get no pixel tensor (their features come from a cache).
        """
        batch: dict[str, torch.Tensor] = {}
        for name, transform in self.transforms.items():
            if name not in skip:
                batch[name] = torch.stack([transform(img) for img in images]) if images else torch.zeros(0)
        per_expert = []
        for name, expert in self.ocr_experts.items():
            words = (ocr_words or {}).get(name) or [expert.read(img) for img in images]
            tokens = [self.words_to_tokens(name, w) for w in words]
            batch.update(self.ocr_batch(name, tokens))
            per_expert.append([len(t[0]) for t in tokens])
        lengths = [tuple(col[i] for col in per_expert) for i in range(len(images))]
        return batch, lengths

    # --- text ----------------------------------------------------------------------------------
    def _group_images(self, texts: list[str], images: Any) -> list[list[ImageInput]]:
        counts = [t.count(self.image_token) for t in texts]
        if images is None:
            images = []
        if isinstance(images, (Image.Image, str, Path)):
            images = [images]
        images = list(images)
        if images and all(isinstance(x, (list, tuple)) for x in images):
            if len(images) != len(texts):
                raise PlaceholderMismatchError(f"got image lists for {len(images)} samples but {len(texts)} texts")
            grouped = [list(x) for x in images]
        else:
            if len(images) != sum(counts):
                raise PlaceholderMismatchError(
                    f"the texts hold {sum(counts)} {self.image_token} placeholder(s) (per sample: {counts}) "
                    f"but {len(images)} image(s) were given")
            it = iter(images)
            grouped = [[next(it) for _ in range(c)] for c in counts]
        for i, (c, g) in enumerate(zip(counts, grouped)):
            if c != len(g):
                raise PlaceholderMismatchError(
                    f"sample {i} has {c} {self.image_token} placeholder(s) but {len(g)} image(s)")
        if any(grouped) and not self.layout.blocks:
            # a text-only model would splice zero tokens per image: the image would be dropped in silence
            first = next(i for i, g in enumerate(grouped) if g)
            raise PlaceholderMismatchError(
                f"sample {first} has an image but this model has no visual experts (a text-only preset such as "
                "`smol`): leave text-only records, or use a preset with experts (e.g. `smol-vlm`)")
        return grouped

    def _encode_chunk(self, text: str, ocr_lengths: list[tuple[int, ...]]) -> list[int]:
        """Token ids of ``text`` with each ``<image>`` expanded for the next image's OCR lengths."""
        ids: list[int] = []
        chunks = text.split(self.image_token)
        for j, chunk in enumerate(chunks):
            if chunk:
                ids += self.tokenizer(chunk, add_special_tokens=False).input_ids
            if j < len(chunks) - 1:
                if not ocr_lengths:
                    raise PlaceholderMismatchError(f"more {self.image_token} placeholders than images")
                ids += [self.image_token_id] * self.layout.num_tokens(ocr_lengths.pop(0))
        return ids

    def _bos(self, add_special_tokens: bool, text: str = "") -> list[int]:
        return start_ids(self.tokenizer, text) if add_special_tokens else []

    def _encode(self, text: str, ocr_lengths: list[tuple[int, ...]], add_special_tokens: bool) -> list[int]:
        return self._bos(add_special_tokens, text) + self._encode_chunk(text, list(ocr_lengths))

    def encode_segments(self, segments: list[Any], ocr_lengths: list[tuple[int, ...]],
                        add_special_tokens: bool = True) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of rendered template segments; labels are -100 outside targets.

        Segments are tokenized one by one (an ``<image>`` never straddles two), so label masks fall
        exactly on the assistant turns.
        """
        pending = list(ocr_lengths)
        ids = self._bos(add_special_tokens, segments[0].text if segments else "")
        labels = [-100] * len(ids)
        for seg in segments:
            piece = self._encode_chunk(seg.text, pending)
            ids += piece
            labels += [t if seg.is_target and t != self.image_token_id else -100 for t in piece]
        if pending:
            raise PlaceholderMismatchError(f"{len(pending)} image(s) left without an {self.image_token} placeholder")
        return ids, labels

    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Any = None,
        padding_side: str | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = "pt",
        **_: Any,
    ) -> BatchFeature:
        """Tokenize ``text`` (one prompt or a batch), expanding each ``<image>`` for its image.

        ``images``: one image, a flat list consumed in placeholder order across the batch, or one list
        per sample. Each image is a PIL image or a file path. Returns ``input_ids``, ``attention_mask``
        and ``images`` (a dict of tensors; absent when no sample has an image). Batches are always padded;
        ``padding`` and the other tokenizer options transformers' callers pass are accepted and ignored.
        """
        if text is None:
            raise PlaceholderMismatchError("MovaProcessor needs text, with an <image> placeholder per image")
        texts = [text] if isinstance(text, str) else list(text)
        grouped = self._group_images(texts, images)
        flat = [load_image(img) for group in grouped for img in group]
        pixel_batch, ocr_lengths = self.process_images(flat)
        seqs = []
        start = 0
        for i, t in enumerate(texts):
            n = len(grouped[i])
            ids = self._encode(t, ocr_lengths[start:start + n], add_special_tokens)
            self._check_length(i, ids, ocr_lengths[start:start + n])
            seqs.append(ids)
            start += n
        side = padding_side or self.padding_side
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id or 0
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
            input_ids[i, sl] = torch.tensor(s, dtype=torch.long)
            mask[i, sl] = 1
        data: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if flat:
            data["images"] = pixel_batch
        return BatchFeature(data=data, tensor_type=None if return_tensors in ("pt", None) else return_tensors)

    def _check_length(self, index: int, ids: list[int], ocr_lengths: list[tuple[int, ...]]) -> None:
        limit = self.config.max_positions
        if limit is None:
            return
        visual_tokens = sum(self.layout.num_tokens(o) for o in ocr_lengths)
        visual_positions = sum(self.layout.num_positions(o) for o in ocr_lengths)
        text_tokens = len(ids) - visual_tokens
        used = text_tokens + visual_positions
        if used > limit:
            raise SequenceTooLongError(
                f"sample {index}: {text_tokens} text tokens + {visual_tokens} visual tokens using "
                f"{visual_positions} positions = {used} positions, over the LLM's context of {limit}; "
                "shorten the text, use fewer images, or a compressed position scheme")

    def encode_joined(self, prompt: str, responses: list[str]) -> tuple[list[int], list[list[int]]]:
        """A text-only pair joined and tokenized whole (``template: raw``; see
        :func:`~mova.model.processing_text.joined_ids`)."""
        from mova.model.processing_text import joined_ids

        if self.image_token in prompt:
            raise PlaceholderMismatchError(f"a joined (raw) prompt cannot hold {self.image_token}")
        return joined_ids(self.tokenizer, prompt, responses)

    def tokens_per_image(self) -> int:
        """Visual tokens of one image (OCR experts counted at zero words: they vary per image)."""
        return self.layout.num_tokens()

    def position_ids(self, input_ids: torch.Tensor, ocr_lengths: list[tuple[int, ...]] | None = None) -> torch.Tensor:
        """Positions of one unpadded sample (:func:`sample_position_ids`)."""
        return sample_position_ids(input_ids, self.layout, self.image_token_id, list(ocr_lengths or []))

    def pad_token_id(self) -> int:
        tok = self.tokenizer
        if tok.pad_token_id is not None:
            return tok.pad_token_id
        return tok.eos_token_id if tok.eos_token_id is not None else 0

    def batch_decode(self, ids: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens)


def register_processor() -> None:
    """Make ``AutoProcessor`` build a :class:`MovaProcessor` for a ``mova`` checkpoint (idempotent)."""
    from transformers import AutoProcessor

    try:
        AutoProcessor.register(MovaConfig, MovaProcessor)
    except ValueError:
        pass
