"""Preference pairs as model inputs: one shared prompt, two responses, scored in one pass.

A pair (question, image, chosen, rejected) shares everything up to the response. The usual DPO batch
(TRL's) stacks ``[prompt + chosen; prompt + rejected]`` padded to one width, so the visual experts, the
fusion network and the LLM all process the prompt twice, and padding costs as much as real tokens.
:class:`SharedPromptCollator` instead lays each pair out once -- prompt (branch 0), chosen (branch 1),
rejected (branch 2) -- packs several pairs into a row with no padding between them, and gives the
model ``sequence_ids`` and ``branch_ids`` so that attention is a tree: each response sees its prompt
and itself, never the other response nor another pair (:func:`mova.model.packing.packed_causal_mask_bool`).
Both responses continue the prompt's position ids, so every token sees exactly the context and
positions it would see alone. :class:`PaddedPairCollator` is the stacked layout, kept as the
reference the tests compare against and as the benchmark's baseline.

Both collators describe which logits score which tokens in ``score_*`` tensors, so one function
(:func:`response_logps`) computes the summed response log-probs for either layout: a response's first
token is predicted from the prompt's last position, which in the shared layout is not the position
just before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from mova.data.llava import concat_image_dicts, first_fit_rows
from mova.errors import ConfigError, MovaError
from mova.model.policy import PolicyKind, policy_kind
from mova.model.processing_text import as_processor
from mova.model.templates import IMAGE_PLACEHOLDER, render

logger = logging.getLogger(__name__)

CHOSEN, REJECTED = 1, 2


class BadPairError(MovaError, ValueError):
    """A preference pair that cannot be encoded (too long, placeholder mismatch...), named by index and id."""


@dataclass
class EncodedPair:
    """Token ids and position ids of one pair; ``images`` is the processed prompt image (or ``None``)."""

    index: int
    prompt_ids: torch.Tensor
    prompt_positions: torch.Tensor
    chosen_ids: torch.Tensor
    rejected_ids: torch.Tensor
    images: dict[str, torch.Tensor] | None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)

    def response_positions(self, n: int) -> torch.Tensor:
        """A response continues from the prompt's last position (text advances by one per token)."""
        start = int(self.prompt_positions[-1]) + 1 if len(self.prompt_positions) else 0
        return torch.arange(start, start + n)


class PairEncoder:
    """Turn :class:`~mova.data.preference.PreferencePair` records into :class:`EncodedPair` tensors.

    ``processor`` is the model's processor (a :class:`~mova.model.processing_mova.MovaProcessor`, or a
    :class:`~mova.model.processing_text.TextProcessor` for a text-only LM; a bare tokenizer is wrapped in one).
    With a template the prompt and each response are rendered as chat turns and tokenized segment by segment,
    so the prompt's ids are exactly a prefix of both sequences. With ``template="raw"`` a pair without an
    image is joined as ``prompt + response + eos`` and tokenized whole, the prompt ending where the joined
    tokenizations diverge: the layout TRL's ``DPOTrainer`` builds for non-conversational data (and what the
    parity test compares against).
    """

    def __init__(self, processor: Any, template: str, max_length: int | None = None):
        self.processor = as_processor(processor)
        self.template = template
        self.max_length = max_length
        self.tokenizer = self.processor.tokenizer
        if template != "raw":
            render(template, [{"from": "human", "value": "x"}], self.tokenizer)  # unknown names fail here

    # --- text ---------------------------------------------------------------------------------
    def _segments(self, prompt: list[dict[str, str]], response: str) -> tuple[list[Any], Any]:
        segs = render(self.template, [*prompt, {"from": "gpt", "value": response}], self.tokenizer)
        if not segs or not segs[-1].is_target:
            raise ValueError(f"template {self.template!r} rendered no response segment")
        return segs[:-1], segs[-1]

    def encode(self, pair: Any, index: int | None = None, *, has_image: bool | None = None) -> EncodedPair:
        """Encode one pair; errors name the pair (index and id).

        ``has_image`` given (with ``pair.image`` left undecoded, ``None``) encodes the text only: the
        image's place gets the most tokens it can take (every OCR expert at ``max_tokens``), so lengths
        and the ``max_length`` check are upper bounds, and no image is decoded or run through OCR.
        """
        idx = pair.index if index is None else index
        try:
            return self._encode(pair, idx, has_image)
        except (ValueError, KeyError) as e:
            raise BadPairError(f"pair {idx} (id {pair.id!r}): {e}") from e

    def _encode(self, pair: Any, index: int, text_only_image: bool | None) -> EncodedPair:
        proc = self.processor
        prompt = [dict(m) for m in pair.prompt]
        n_placeholders = sum(m["value"].count(IMAGE_PLACEHOLDER) for m in prompt)
        has_image = pair.image is not None if text_only_image is None else text_only_image
        if has_image and not proc.multimodal:
            raise ValueError("has an image but the model is text-only")
        if n_placeholders != int(has_image):
            raise ValueError(f"{n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {int(has_image)} image(s)")
        images, ocr_lengths = None, []
        if has_image and text_only_image is not None:
            ocr_lengths = [tuple(b.max_tokens for b in proc.layout.ocr_blocks)]
        elif has_image:
            images, ocr_lengths = proc.process_images([pair.image])
        if self.template == "raw" and not has_image:
            ids, (c, r) = proc.encode_joined("".join(m["value"] for m in prompt), [pair.chosen, pair.rejected])
        else:
            prompt_segs, chosen_seg = self._segments(prompt, pair.chosen)
            _, rejected_seg = self._segments(prompt, pair.rejected)
            ids, _ = proc.encode_segments(prompt_segs, list(ocr_lengths))
            c, _ = proc.encode_segments([chosen_seg], [], add_special_tokens=False)
            r, _ = proc.encode_segments([rejected_seg], [], add_special_tokens=False)
        prompt_ids = torch.tensor(ids)
        positions = proc.position_ids(prompt_ids, list(ocr_lengths))
        if not c or not r:
            raise ValueError("a response encodes to no tokens")
        enc = EncodedPair(index, prompt_ids, positions, torch.tensor(c), torch.tensor(r), images)
        longest = len(prompt_ids) + max(len(c), len(r))
        if self.max_length and longest > self.max_length:
            raise ValueError(f"too long: prompt + response = {longest} tokens > max_length {self.max_length}")
        return enc


class PairDataset(Dataset):
    """Pairs encoded lazily (image processing happens in ``__getitem__``, i.e. in loader workers).

    Text is encoded up front to learn each pair's length (for length-grouped batches) and to reject
    pairs that cannot be used before training starts; ``skip_invalid`` turns those errors into counted
    skips.
    """

    def __init__(self, pairs: Any, encoder: PairEncoder, skip_invalid: bool = False):
        self.pairs = pairs
        self.encoder = encoder
        self.skipped: list[tuple[int, str, str]] = list(getattr(pairs, "skipped", []))
        # A PreferenceDataset answers both without decoding a single image (SPA-VL: 93k of them).
        flags = list(pairs.has_image) if hasattr(pairs, "has_image") else [p.image is not None for p in pairs]
        text_of = getattr(pairs, "without_image", None) or (lambda i: pairs[i])
        self.keep: list[int] = []
        self._lengths: list[int] = []
        self._has_image: list[bool] = []
        for i, flag in enumerate(flags):
            pair = text_of(i)
            try:
                enc = encoder.encode(_TextOnly(pair), i, has_image=flag)
            except BadPairError as e:
                if not skip_invalid:
                    raise
                logger.warning("skipping %s", e)
                self.skipped.append((i, str(pair.id), str(e)))
                continue
            self.keep.append(i)
            self._lengths.append(enc.num_tokens)
            self._has_image.append(flag)
        if not self.keep:
            raise ConfigError(f"no usable preference pairs ({len(self.skipped)} skipped)")

    def __len__(self) -> int:
        return len(self.keep)

    @property
    def lengths(self) -> list[int]:
        return self._lengths

    @property
    def has_image(self) -> list[bool]:
        return self._has_image

    def __getitem__(self, i: int) -> EncodedPair:
        return self.encoder.encode(self.pairs[self.keep[i]], i)

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for _, _, why in self.skipped:
            key = why.split(": ", 1)[-1].split(" (")[0][:80]
            reasons[key] = reasons.get(key, 0) + 1
        return {"pairs": len(self.keep), "skipped": len(self.skipped), "skipped_by_reason": reasons}


class _TextOnly:
    """A pair's fields with its image hidden (``None``), for the up-front text pass."""

    def __init__(self, pair: Any):
        self._pair = pair
        self.image = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pair, name)


def _score_fields(rows: list[int], pred: list[int], targets: list[int], owner: list[int]) -> dict[str, torch.Tensor]:
    return {"score_rows": torch.tensor(rows, dtype=torch.long), "score_pred": torch.tensor(pred, dtype=torch.long),
            "score_targets": torch.tensor(targets, dtype=torch.long),
            "score_owner": torch.tensor(owner, dtype=torch.long)}


@dataclass
class SharedPromptCollator:
    """Pack pairs as prompt / chosen / rejected trees into rows of at most ``max_tokens`` (first-fit)."""

    pad_token_id: int
    max_tokens: int = 4096  # DpoConfig.max_tokens_per_row explains the choice

    def __call__(self, batch: list[EncodedPair]) -> dict[str, Any]:
        n = len(batch)
        rows = first_fit_rows([p.num_tokens for p in batch], self.max_tokens)  # a long pair: a row alone
        width = max(sum(batch[i].num_tokens for i in row) for row in rows)
        shape = (len(rows), width)
        ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        sequence_ids = torch.full(shape, -1, dtype=torch.long)
        branch_ids = torch.zeros(shape, dtype=torch.long)
        s_rows: list[int] = []
        s_pred: list[int] = []
        s_tgt: list[int] = []
        s_own: list[int] = []
        images = []
        for r, row in enumerate(rows):
            at = 0
            for s, i in enumerate(row):
                p = batch[i]
                lp = len(p.prompt_ids)
                ids[r, at:at + lp] = p.prompt_ids
                positions[r, at:at + lp] = p.prompt_positions
                sequence_ids[r, at:at + lp] = s
                last_prompt = at + lp - 1
                at += lp
                for branch, resp, owner in ((CHOSEN, p.chosen_ids, i), (REJECTED, p.rejected_ids, n + i)):
                    k = len(resp)
                    ids[r, at:at + k] = resp
                    positions[r, at:at + k] = p.response_positions(k)
                    sequence_ids[r, at:at + k] = s
                    branch_ids[r, at:at + k] = branch
                    s_rows += [r] * k
                    s_pred += [last_prompt] + list(range(at, at + k - 1))
                    s_tgt += resp.tolist()
                    s_own += [owner] * k
                    at += k
                if p.images:
                    images.append(p.images)
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": (sequence_ids >= 0).long(),
                               "position_ids": positions, "sequence_ids": sequence_ids, "branch_ids": branch_ids,
                               "pair_index": torch.tensor([p.index for p in batch], dtype=torch.long),
                               **_score_fields(s_rows, s_pred, s_tgt, s_own)}
        if images:
            out["images"] = concat_image_dicts(images)
        return out


@dataclass
class PaddedPairCollator:
    """The stacked layout: rows ``[prompt_i + chosen_i]`` then ``[prompt_i + rejected_i]``, right-padded.

    Each pair's image is encoded twice (once per row), as in the usual DPO batch.
    """

    pad_token_id: int

    def __call__(self, batch: list[EncodedPair]) -> dict[str, Any]:
        n = len(batch)
        seqs = [(p, p.chosen_ids) for p in batch] + [(p, p.rejected_ids) for p in batch]
        width = max(len(p.prompt_ids) + len(resp) for p, resp in seqs)
        ids = torch.full((2 * n, width), self.pad_token_id, dtype=torch.long)
        positions = torch.zeros((2 * n, width), dtype=torch.long)
        mask = torch.zeros((2 * n, width), dtype=torch.long)
        s_rows: list[int] = []
        s_pred: list[int] = []
        s_tgt: list[int] = []
        s_own: list[int] = []
        for row, (p, resp) in enumerate(seqs):
            lp, k = len(p.prompt_ids), len(resp)
            ids[row, :lp] = p.prompt_ids
            ids[row, lp:lp + k] = resp
            positions[row, :lp] = p.prompt_positions
            positions[row, lp:lp + k] = p.response_positions(k)
            mask[row, :lp + k] = 1
            s_rows += [row] * k
            s_pred += list(range(lp - 1, lp + k - 1))
            s_tgt += resp.tolist()
            s_own += [row] * k
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                               "pair_index": torch.tensor([p.index for p in batch], dtype=torch.long),
                               **_score_fields(s_rows, s_pred, s_tgt, s_own)}
        images = [p.images for p in batch if p.images] * 2
        if images:
            out["images"] = concat_image_dicts(images)
        return out


#: how a batch of pairs is laid out: ``shared`` (prompt and image once per pair, both responses as branches of
#: a tree) or ``padded`` (``[prompt + chosen; prompt + rejected]`` rows, the layout TRL uses).
PAIR_ENCODINGS = ("shared", "padded")


def pair_collator(encoding: str, pad_token_id: int,
                  max_tokens: int = 4096) -> SharedPromptCollator | PaddedPairCollator:
    """The collator of layout ``encoding`` (DPO, reward models and MetaRM share it)."""
    if encoding not in PAIR_ENCODINGS:
        from mova.errors import UnknownNameError

        raise UnknownNameError("pair encoding", encoding, PAIR_ENCODINGS)
    if encoding == "shared":
        return SharedPromptCollator(pad_token_id, max_tokens)
    return PaddedPairCollator(pad_token_id)


SCORE_KEYS = ("score_rows", "score_pred", "score_targets", "score_owner", "pair_index")


def response_logps(model: torch.nn.Module, batch: dict[str, Any], num_pairs: int,
                   kind: PolicyKind | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts of the chosen and rejected responses: ``(lp_c, lp_r, n_c, n_r)``.

    Only the positions that predict a response token go through the LM head (``logits_to_keep``), so
    the prompt's and padding's logits are never materialised. ``model`` is any policy (possibly wrapped by
    DDP / DeepSpeed / peft); its :class:`~mova.model.policy.PolicyKind` (``kind``, found from the model when
    not given) turns the shared-prompt tree into the inputs that model takes.
    """
    kind = kind or policy_kind(model)
    inputs = kind.tree_inputs(model, {k: v for k, v in batch.items() if k not in SCORE_KEYS})
    keep, where = torch.unique(batch["score_pred"], return_inverse=True)
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    logits = out.logits[batch["score_rows"], where]
    if logits.shape[0] != batch["score_targets"].shape[0]:
        raise ConfigError("the model ignored logits_to_keep; DPO needs a causal LM that supports it")
    from mova.model.label_loss import token_logprobs  # chunked: no full float32 log-softmax kept for backward

    token_logps = token_logprobs(logits, batch["score_targets"])
    owner = batch["score_owner"]
    sums = torch.zeros(2 * num_pairs, device=token_logps.device, dtype=token_logps.dtype).index_add(
        0, owner, token_logps)
    counts = torch.zeros(2 * num_pairs, device=token_logps.device).index_add(
        0, owner, torch.ones_like(token_logps))
    return sums[:num_pairs], sums[num_pairs:], counts[:num_pairs], counts[num_pairs:]
