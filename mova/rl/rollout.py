"""Rollouts: prompts in, sampled responses and the per-token tensors PPO needs out.

Layout of a rollout batch: prompts left-padded to width ``P`` and responses right-padded to width ``R``,
side by side in one ``[B, P + R]`` sequence. Padding takes no position (position ids come from the mask
and, for Mova, the experts' layouts), so every row is scored exactly as if it were alone. The logits at
columns ``P-1 .. P+R-2`` predict the response tokens; the state value of response token ``t`` is read at
column ``P-1+t`` (the state before the token was chosen).

For a Mova policy each prompt's image goes through the frozen experts once: their features are kept in
the batch (``images["<expert>.features"]``) and reused by generation and by the policy, reference,
critic and reward passes, which then run only their own fusion network and LLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mova.data.batch import to_device
from mova.inference.generation import _encode, build_prompts
from mova.model.policy import policy_kind, unwrap
from mova.model.processing_text import as_processor
from mova.rl.ppo_math import token_logprobs
from mova.rl.prompts import PromptRecord


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor  # [B, P] left padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] right padded
    response_mask: torch.Tensor  # [B, R] float: 1 on generated tokens up to and including EOS
    images: dict[str, torch.Tensor] | None
    prompts: list[str]
    completions: list[str]
    records: list[PromptRecord]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask.to(self.prompt_mask.dtype)], dim=1)

    @property
    def columns(self) -> dict[str, list[Any]]:
        keys = sorted({k for r in self.records for k in r.columns})
        return {k: [r.columns.get(k) for r in self.records] for k in keys}

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, idx: Sequence[int] | torch.Tensor) -> RolloutBatch:
        """Rows ``idx`` (a minibatch); images are selected per row (one image per prompt or none)."""
        idx_t = torch.as_tensor(list(idx) if not isinstance(idx, torch.Tensor) else idx, dtype=torch.long)
        images = None
        if self.images is not None:
            rows = torch.tensor([i for i, r in enumerate(self.records) if r.image is not None], dtype=torch.long)
            pos = {int(r): k for k, r in enumerate(rows)}
            keep = torch.tensor([pos[int(i)] for i in idx_t if int(i) in pos], dtype=torch.long)
            images = {k: v[keep] for k, v in self.images.items()} if len(keep) else None
        return RolloutBatch(self.prompt_ids[idx_t], self.prompt_mask[idx_t], self.response_ids[idx_t],
                            self.response_mask[idx_t], images, [self.prompts[int(i)] for i in idx_t],
                            [self.completions[int(i)] for i in idx_t], [self.records[int(i)] for i in idx_t],
                            {k: v[idx_t] for k, v in self.extra.items()})


def concat_rollouts(batches: Sequence[RolloutBatch], pad_id: int) -> RolloutBatch:
    """One batch of several (prompts left-padded, responses right-padded to the widest); rows keep their order
    and their images. Only fresh rollouts (no ``extra`` tensors yet) are joined."""
    import torch.nn.functional as F

    if any(b.extra for b in batches):
        raise ValueError("concat_rollouts joins fresh rollouts only (their extra tensors are not padded)")
    P = max(b.prompt_ids.shape[1] for b in batches)
    R = max(b.response_ids.shape[1] for b in batches)

    def cat(name: str, left: bool, value: float) -> torch.Tensor:
        width = P if left else R
        parts = []
        for b in batches:
            x = getattr(b, name)
            gap = width - x.shape[1]
            parts.append(F.pad(x, (gap, 0) if left else (0, gap), value=value))
        return torch.cat(parts)

    with_images = [b.images for b in batches if b.images]
    images = {k: torch.cat([im[k] for im in with_images]) for k in with_images[0]} if with_images else None
    return RolloutBatch(cat("prompt_ids", True, pad_id), cat("prompt_mask", True, 0),
                        cat("response_ids", False, pad_id), cat("response_mask", False, 0), images,
                        [p for b in batches for p in b.prompts], [c for b in batches for c in b.completions],
                        [r for b in batches for r in b.records])


def encode_prompts(processor: Any, records: Sequence[PromptRecord], template: str | None,
                   device: torch.device) -> tuple[list[str], dict[str, Any]]:
    """Rendered prompt strings and the left-padded model inputs for ``records``."""
    images = [r.image for r in records]
    templated = [i for i, r in enumerate(records) if r.text is None]
    rendered = build_prompts(processor, [records[i].messages for i in templated], [images[i] for i in templated],
                             template) if templated else []
    by_index = dict(zip(templated, rendered))
    prompts = [by_index[i] if r.text is None else r.text for i, r in enumerate(records)]
    return prompts, to_device(_encode(processor, prompts, images), device)


def repeat_rows(times: int, prompts: list[str], records: list[PromptRecord], enc: dict[str, Any],
                images: dict[str, torch.Tensor] | None) -> tuple[list[str], list[PromptRecord], dict[str, Any], Any]:
    """Each prompt's row ``times`` times in a row: text, records, token inputs and (one per image-bearing
    prompt) expert features, so every copy keeps its prompt's image without running the experts again."""
    def rep(x: Any) -> Any:
        return x.repeat_interleave(times, dim=0) if isinstance(x, torch.Tensor) else x

    enc = {k: rep(x) for k, x in enc.items() if k != "images"}  # the pixels are done with: features go on
    images = {k: rep(v) for k, v in images.items()} if images else images
    return ([p for p in prompts for _ in range(times)], [r for r in records for _ in range(times)], enc, images)


def response_mask_from(tokens: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 on every token up to and including the first EOS of each row (all of a row without one)."""
    if eos_id is None:
        return torch.ones_like(tokens, dtype=torch.float)
    is_eos = tokens == eos_id
    after_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    return (~after_eos).float()


@torch.no_grad()
def generate_rollouts(policy: torch.nn.Module, processor: Any, records: Sequence[PromptRecord], *,
                      template: str | None, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                      top_k: int = 0, device: torch.device, num_generations: int = 1) -> RolloutBatch:
    """Sample one response per prompt with the policy's KV cache (``generate``); greedy at temperature 0.

    ``num_generations`` G > 1 samples G responses per prompt (GRPO's groups): the batch then holds each prompt's
    G rows one after another, and a prompt's image goes through the frozen experts once, its features repeated
    for the G rows."""
    model = unwrap(policy)
    processor = as_processor(processor)
    prompts, enc = encode_prompts(processor, records, template, device)
    images = policy_kind(model).shared_image_features(model, enc.get("images"))
    if num_generations > 1:
        prompts, records, enc, images = repeat_rows(num_generations, prompts, list(records), enc, images)
    tokenizer = processor.tokenizer
    eos_id = tokenizer.eos_token_id
    pad_id = processor.pad_token_id()
    gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id, "eos_token_id": eos_id,
                           "do_sample": temperature > 0}
    if temperature > 0:
        gen.update(temperature=temperature, top_p=top_p, top_k=top_k)
    if processor.image_token_id is not None:  # no image can fill an <image> the policy writes
        gen["suppress_tokens"] = [processor.image_token_id]
    was_training = model.training
    model.eval()
    try:
        kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if images:
            kwargs["images"] = images
        sequences = model.generate(**kwargs, **gen)
    finally:
        model.train(was_training)
    P = enc["input_ids"].shape[1]
    response = sequences[:, P:]
    if response.shape[1] == 0:
        response = torch.full((len(records), 1), pad_id, dtype=torch.long, device=device)
    mask = response_mask_from(response, eos_id)
    response = torch.where(mask.bool(), response, torch.full_like(response, pad_id))
    completions = []
    for row, m in zip(response.tolist(), mask.tolist()):
        n = int(sum(m))
        completions.append(tokenizer.decode(row[:n], skip_special_tokens=True).strip())
    return RolloutBatch(enc["input_ids"], enc["attention_mask"], response, mask, images, prompts, completions,
                        list(records))


def position_ids_for(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     images: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Position ids that skip padding (Mova's layout-aware ids for a VLM), from the model's policy kind."""
    return policy_kind(model).position_ids(model, input_ids, attention_mask, images)


def forward_response(model: torch.nn.Module, batch: RolloutBatch, *, hidden: bool = False) -> Any:
    """One forward over prompt + response; returns ``(logits [B, R, V] predicting the response tokens,
    last hidden states [B, R, H] at the states before each response token (or None))``."""
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    P, R = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask,
                              "position_ids": position_ids_for(model, input_ids, attention_mask, batch.images),
                              "logits_to_keep": R + 1, "use_cache": False}
    if batch.images:
        kwargs["images"] = batch.images
    if hidden:
        kwargs["output_hidden_states"] = True
    out = model(**kwargs)
    logits = out.logits[:, :-1]
    states = out.hidden_states[-1][:, P - 1:P + R - 1] if hidden else None
    return logits, states


def response_logprobs(model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    logits, _ = forward_response(model, batch)
    return token_logprobs(logits, batch.response_ids)
