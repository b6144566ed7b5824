"""Decoding helpers that ``model.generate`` runs at every step: stop strings and per-sample seeded sampling.

Both work per row of a batch, so that a sample's answer does not depend on which other samples share its
batch, how the batch is sorted, or which process of a multi-process run generates it:

* :class:`StopOnStrings` ends a row once its decoded continuation contains a stop string (the batch ends
  when every row has ended); :func:`truncate_at_stop` cuts the text at the first stop string.
* :class:`SeededSampler` draws each row's next token from that row's own random generator, seeded by the
  run seed and the sample's index in the input. The same seed gives the same samples whatever the batch
  size or the number of processes (``model.generate``'s own sampling draws from one global generator for
  the whole batch, so a sample changes when its batch-mates change).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to (without) the earliest occurrence of any stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StopOnStrings(StoppingCriteria):
    """Stops each row when the text it generated so far contains one of ``stop``.

    Only the last ``window`` new tokens are decoded at each step (a token decodes to at least part of a
    character, so a window a little longer than the longest stop string sees any stop string that the newest
    token completed). ``stopped_at[row]`` records how many new tokens the row had when it stopped.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_length: int):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.prompt_length = prompt_length
        self.window = max((len(s) for s in self.stop), default=0) + 8
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new = input_ids[:, self.prompt_length:]
        if not self.stop or new.shape[1] == 0:
            return done
        tail = new[:, -self.window:].tolist()
        for row, tokens in enumerate(tail):
            if row in self.stopped_at:
                done[row] = True
                continue
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if any(s in text for s in self.stop):
                self.stopped_at[row] = new.shape[1]
                done[row] = True
        return done


def sample_seed(seed: int, index: int) -> int:
    """The random seed of sample ``index`` in a run seeded with ``seed`` (distinct per sample and per seed)."""
    return (seed * 1_000_003 + index * 7_919 + 1) % (2**63 - 1)


class SeededSampler(LogitsProcessor):
    """Temperature / top-k / top-p sampling with one random generator per row.

    Runs as the last logits processor of a *greedy* ``generate`` call: it draws each row's token and leaves
    only that token finite, so the greedy step picks it. The raw logits that ``output_logits`` records are
    unaffected. ``indices[row]`` is the input index of the sample in that row.
    """

    def __init__(self, seed: int, indices: Sequence[int], temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float().cpu() / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        if self.top_p < 1:
            sorted_p, order = probs.sort(-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        chosen = [int(torch.multinomial(p, 1, generator=g)) for p, g in zip(probs, self.generators)]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0]), torch.tensor(chosen, device=scores.device)] = 0.0
        return out


__all__ = ["SeededSampler", "StopOnStrings", "sample_seed", "truncate_at_stop"]
