"""Attention inputs for packed rows: several samples in one row, none attending to another.

Why not let transformers find the boundaries? Its padding-free path (``find_packed_sequence_indices``,
and flash-attention's ``_is_packed_sequence``) starts a new sample wherever the position id does not
grow by exactly one. Mova's compressed schemes repeat ids inside an image block (``share_by_row`` gives
a whole row of SAM tokens one id), so that rule would cut one sample into many pieces. The boundaries
are known exactly when the batch is built, so the collator passes them as ``sequence_ids`` and the mask
is built here from them alone, in the form the LLM's attention implementation expects:

* ``sdpa`` (and ``flex_attention`` through a ``BlockMask``): a boolean mask, True = may attend;
* ``eager``: an additive float mask (0 or the dtype's minimum), which eager attention adds to the scores;
* ``flash_attention_*``: no mask but ``cu_seq_lens`` over the flattened batch (the varlen kernel).

transformers returns a ready 4D mask as is (``create_causal_mask`` exits early on a 4D tensor), so what
is built here is what attention sees.

Under ``sdpa`` a dense ``[L, L]`` mask makes attention cost the square of the *row* length although each
token attends within its own sample only: on a CPU, where the kernel cannot skip masked-out blocks, a row
of 8 DPO pairs spent as long in attention as in every matrix product of the model. So
:func:`packed_attention_inputs` also hands the model the samples' spans (:class:`SampleSpans`, under the
keyword :data:`SPANS_KWARG`), and :func:`sample_sdpa_attention` -- registered as transformers' ``sdpa``
function, delegating to the stock one for every call without spans -- runs attention sample by sample,
each under its own small mask (a tree's, or plain causal). The dense mask is still passed, so a model
whose attention cannot take spans (sliding windows, attention sinks) falls back to it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mova.errors import ConfigError

#: attention implementations that take an additive float mask.
ADDITIVE_MASK = ("eager",)
#: attention implementations that take a boolean mask (True = attend).
BOOLEAN_MASK = ("sdpa", "paged|sdpa")


def packed_causal_mask_bool(sequence_ids: torch.Tensor, branch_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, 1, L, L]`` bool: token q may see key k iff k <= q and both belong to the same sample.

    Padding (``sequence_id < 0``) sees only itself: a query with no key at all would make softmax
    produce NaN, and padding's outputs are never used (labels -100), while no real token sees padding.

    ``branch_ids`` turns each sample into a tree with one shared trunk: branch 0 is the trunk (a
    preference pair's prompt, image tokens included) and branches 1, 2, ... (its chosen and rejected
    responses) each see the trunk and themselves but never one another. One forward pass then scores
    both responses of a pair while the prompt runs through the LLM once.
    """
    seq = sequence_ids
    length = seq.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
    same = (seq[:, :, None] == seq[:, None, :]) & (seq[:, None, :] >= 0)
    if branch_ids is not None:
        key_branch = branch_ids[:, None, :]
        same = same & ((key_branch == 0) | (key_branch == branch_ids[:, :, None]))
    eye = torch.eye(length, dtype=torch.bool, device=seq.device)
    return ((same & causal) | eye).unsqueeze(1)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attending, the dtype's minimum elsewhere (what eager attention adds to the scores)."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)


def flash_varlen_kwargs(sequence_ids: torch.Tensor) -> dict[str, Any]:
    """``cu_seq_lens_*`` / ``max_length_*`` over the flattened ``[B * L]`` tokens, one span per sample.

    A span ends where the sample id changes or a row ends; trailing padding forms its own span.
    """
    bsz, length = sequence_ids.shape
    flat = sequence_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::length] = True  # every row starts a span, even if its first id equals the last row's last id
    idx = starts.nonzero().flatten()
    cu = torch.cat([idx, idx.new_tensor([bsz * length])]).to(torch.int32)
    longest = int(cu.diff().max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def flex_block_mask(sequence_ids: torch.Tensor, branch_ids: torch.Tensor | None = None) -> Any:
    """A flex-attention ``BlockMask`` with the same pattern as :func:`packed_causal_mask_bool`."""
    from torch.nn.attention.flex_attention import create_block_mask

    seq = sequence_ids
    branch = branch_ids if branch_ids is not None else torch.zeros_like(seq)

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        same = (seq[b, q] == seq[b, k]) & (seq[b, k] >= 0) & ((branch[b, k] == 0) | (branch[b, k] == branch[b, q]))
        return (same & (k <= q)) | (q == k)

    bsz, length = seq.shape
    return create_block_mask(mask_mod, bsz, None, length, length, device=seq.device)


#: the keyword under which the model's forward carries :class:`SampleSpans` down to attention.
SPANS_KWARG = "mova_sample_spans"


@dataclass(frozen=True)
class SampleSpans:
    """Each sample of a packed batch: its row, ``[start, end)`` and its own attention mask (``None``: causal).

    Built once per batch and read by every attention layer (:func:`sample_sdpa_attention`).
    """

    spans: tuple[tuple[int, int, int, torch.Tensor | None], ...]

    def __len__(self) -> int:
        return len(self.spans)


def sample_spans(sequence_ids: torch.Tensor, branch_ids: torch.Tensor | None = None) -> SampleSpans:
    """The maximal runs of one sample id (``>= 0``) in each row, with a ``[1, 1, n, n]`` tree mask per run when
    ``branch_ids`` marks branches in it (a run of branch 0 only is plain causal: no mask)."""
    seq = sequence_ids.detach().cpu()
    branch = branch_ids.detach().cpu() if branch_ids is not None else None
    out = []
    for r in range(seq.shape[0]):
        row = seq[r]
        change = torch.ones_like(row, dtype=torch.bool)
        change[1:] = row[1:] != row[:-1]
        starts = change.nonzero().flatten().tolist() + [row.numel()]
        for s, e in zip(starts[:-1], starts[1:], strict=True):
            if int(row[s]) < 0:
                continue
            mask = None
            if branch is not None and bool((branch[r, s:e] != 0).any()):
                mask = packed_causal_mask_bool(seq[r:r + 1, s:e], branch[r:r + 1, s:e]).to(sequence_ids.device)
            out.append((r, s, e, mask))
    return SampleSpans(tuple(out))


def _stock_sdpa() -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def sample_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, sample by sample when the call carries :data:`SPANS_KWARG`.

    Same inputs and output layout as ``transformers.integrations.sdpa_attention.sdpa_attention_forward``
    (``[B, H, L, D]`` in, ``[B, L, H, D]`` out), to which every other call goes unchanged, as do calls with
    options the per-sample path does not implement (a sliding window, a position bias, attention sinks, a KV
    cache longer than the queries). Token slots outside every span (padding) get zeros: nothing reads them.
    """
    spans = kwargs.pop(SPANS_KWARG, None)
    unsupported = any(kwargs.get(k) is not None for k in ("sliding_window", "position_bias", "s_aux", "softcap"))
    if spans is None or unsupported or key.shape[2] != query.shape[2]:
        return _stock_sdpa()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                             is_causal=is_causal, **kwargs)
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[-1])
    for r, s, e, mask in spans.spans:
        piece = torch.nn.functional.scaled_dot_product_attention(
            query[r:r + 1, :, s:e], key[r:r + 1, :, s:e], value[r:r + 1, :, s:e], attn_mask=mask,
            dropout_p=dropout, scale=scaling, is_causal=mask is None and e - s > 1)
        out[r, s:e] = piece[0].transpose(0, 1)
    return out, None


def register_sample_attention() -> None:
    """Make :func:`sample_sdpa_attention` transformers' ``sdpa`` function (idempotent; calls without spans are
    the stock function's)."""
    from transformers import AttentionInterface

    AttentionInterface.register("sdpa", sample_sdpa_attention)


register_sample_attention()


def packed_attention_inputs(sequence_ids: torch.Tensor, attn_implementation: str,
                            dtype: torch.dtype, branch_ids: torch.Tensor | None = None) -> dict[str, Any]:
    """The LLM keyword arguments that keep packed samples apart under ``attn_implementation``.

    Returns ``{"attention_mask": ...}``, under ``sdpa`` also the samples' spans (:data:`SPANS_KWARG`, see the
    module docstring), and for flash attention the varlen ``cu_seq_lens`` keywords
    (with ``attention_mask=None``, since a 2D mask would send flash attention down its unpadding path).
    ``branch_ids`` (shared-prompt trees, see :func:`packed_causal_mask_bool`) need a mask, so flash
    attention's varlen spans cannot express them.
    """
    impl = attn_implementation or "eager"
    if impl == "sdpa":
        return {"attention_mask": packed_causal_mask_bool(sequence_ids, branch_ids),
                SPANS_KWARG: sample_spans(sequence_ids, branch_ids)}
    if impl in BOOLEAN_MASK:
        return {"attention_mask": packed_causal_mask_bool(sequence_ids, branch_ids)}
    if impl in ADDITIVE_MASK:
        return {"attention_mask": additive_mask(packed_causal_mask_bool(sequence_ids, branch_ids), dtype)}
    if "flash" in impl:
        if branch_ids is not None:
            raise ConfigError(f"shared-prompt pair packing needs an attention mask, which {impl} cannot take; "
                              "use attn_implementation=sdpa (or flex_attention), or dpo.pair_encoding=padded")
        return {"attention_mask": None, **flash_varlen_kwargs(sequence_ids)}
    if impl == "flex_attention":
        return {"attention_mask": flex_block_mask(sequence_ids, branch_ids)}
    raise ConfigError(f"packed batches (sequence_ids) are not supported with attn_implementation={impl!r}; "
                      "use sdpa, eager, flex_attention or flash_attention_2/3")
