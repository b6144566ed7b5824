"""``TextProcessor``: the processor of a plain causal LM, with :class:`~mova.model.processing_mova.MovaProcessor`'s
interface and no images.

Every model Mova trains or evaluates comes with a processor, as every transformers model does. Code that
encodes prompts, pairs or conversations (pair encoding, generation, reward scoring, rollouts) talks to that
interface and never asks which kind of model it has: a ``TextProcessor`` simply has no visual tokens, and
refuses an image with an error that says the model is text-only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import BatchFeature, PreTrainedTokenizerBase

from mova.errors import ConfigError
from mova.model.start_token import start_ids
from mova.model.templates import IMAGE_PLACEHOLDER, render_text


class TextProcessor:
    """Tokenizer + chat template of a text-only causal LM."""

    #: no image ever becomes tokens here; pair encoders and generation read this instead of the model kind.
    multimodal = False
    image_token_id = None

    def __init__(self, tokenizer: PreTrainedTokenizerBase, padding_side: str = "left"):
        self.tokenizer = tokenizer
        self.padding_side = padding_side

    @property
    def template(self) -> str:
        """The default chat template: the tokenizer's own when it has one, else the texts as they are."""
        return "tokenizer" if getattr(self.tokenizer, "chat_template", None) else "raw"

    # --- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)

    # --- templates -----------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            template: str | None = None) -> str:
        return render_text(template or self.template, messages, self.tokenizer, add_generation_prompt)

    # --- images: none --------------------------------------------------------------------------
    def tokens_per_image(self) -> int:
        return 0

    def process_images(self, images: list[Any], **_: Any) -> tuple[dict[str, torch.Tensor], list[tuple[int, ...]]]:
        if images:
            raise ConfigError("the model is a plain language model (text-only): it cannot take images; drop them "
                              f"(and their {IMAGE_PLACEHOLDER} placeholders) or use a Mova VLM")
        return {}, []

    def position_ids(self, input_ids: torch.Tensor, ocr_lengths: list[tuple[int, ...]] | None = None) -> torch.Tensor:
        """Positions of one unpadded sample: one per token."""
        return torch.arange(len(input_ids))

    # --- text ----------------------------------------------------------------------------------
    def _check_text(self, text: str) -> None:
        if IMAGE_PLACEHOLDER in text:
            self.process_images([text])  # raises the text-only error

    def _bos(self, add_special_tokens: bool, text: str = "") -> list[int]:
        return start_ids(self.tokenizer, text) if add_special_tokens else []

    def encode_segments(self, segments: list[Any], ocr_lengths: list[tuple[int, ...]] | None = None,
                        add_special_tokens: bool = True) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of rendered template segments, tokenized one by one (labels -100 outside
        targets), as :meth:`MovaProcessor.encode_segments` does."""
        ids = self._bos(add_special_tokens, segments[0].text if segments else "")
        labels = [-100] * len(ids)
        for seg in segments:
            self._check_text(seg.text)
            piece = self.tokenizer(seg.text, add_special_tokens=False).input_ids
            ids += piece
            labels += piece if seg.is_target else [-100] * len(piece)
        return ids, labels

    def encode_joined(self, prompt: str, responses: list[str]) -> tuple[list[int], list[list[int]]]:
        """``prompt + response + eos`` tokenized whole for each response (:func:`joined_ids`)."""
        self._check_text(prompt)
        return joined_ids(self.tokenizer, prompt, responses)

    def pad_token_id(self) -> int:
        tok = self.tokenizer
        if tok.pad_token_id is not None:
            return tok.pad_token_id
        return tok.eos_token_id if tok.eos_token_id is not None else 0

    def __call__(self, text: str | list[str], images: Any = None, padding_side: str | None = None,
                 add_special_tokens: bool = True, return_tensors: str = "pt") -> BatchFeature:
        """Tokenize and pad a batch of prompts (left by default, for generation). The start token comes from
        :func:`~mova.model.start_token.start_ids` (once, as in training), and the tokenizer is not modified
        (many LLM tokenizers have no pad token)."""
        texts = [text] if isinstance(text, str) else list(text)
        flat = [x for group in (images or []) for x in (group if isinstance(group, (list, tuple)) else [group])
                if x is not None]
        self.process_images(flat)
        seqs = []
        for t in texts:
            self._check_text(t)
            seqs.append(self._bos(add_special_tokens, t) + self.tokenizer(t, add_special_tokens=False).input_ids)
        side = padding_side or self.padding_side
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id(), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
            ids[i, sl] = torch.tensor(s, dtype=torch.long)
            mask[i, sl] = 1
        return BatchFeature(data={"input_ids": ids, "attention_mask": mask},
                            tensor_type=None if return_tensors == "pt" else return_tensors)

    def batch_decode(self, ids: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens)


def joined_ids(tokenizer: Any, prompt: str, responses: list[str]) -> tuple[list[int], list[list[int]]]:
    """``prompt + response + eos`` tokenized whole for each response, the prompt ending where those
    tokenizations diverge (TRL's layout for non-conversational pairs): ``(prompt_ids, response_ids)``."""
    eos = tokenizer.eos_token or ""
    head = start_ids(tokenizer, prompt)
    p = head + tokenizer(prompt, add_special_tokens=False).input_ids
    full = [head + tokenizer(prompt + r + eos, add_special_tokens=False).input_ids for r in responses]
    n = min(_common_prefix(p, f) for f in full)
    return p[:n], [f[n:] for f in full]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def as_processor(processor_or_tokenizer: Any) -> Any:
    """A processor (Mova's or a :class:`TextProcessor`) for what a caller passed: a processor is returned as it
    is, a bare tokenizer gets a :class:`TextProcessor` around it. Public entry points that take either call
    this once, so everything below them speaks the processor interface."""
    if hasattr(processor_or_tokenizer, "encode_segments"):
        return processor_or_tokenizer
    if isinstance(processor_or_tokenizer, PreTrainedTokenizerBase) or hasattr(processor_or_tokenizer,
                                                                              "apply_chat_template"):
        return TextProcessor(processor_or_tokenizer)
    raise ConfigError(f"expected a processor or a tokenizer, got {type(processor_or_tokenizer).__name__}")
