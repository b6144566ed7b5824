"""MetaRM: keep the reward model able to tell the current policy's outputs apart.

As PPO moves the policy, its responses drift away from the preference data and a reward model trained
only on that data scores them all alike. MetaRM (Dou et al., 2024) adds a meta step on a "meta set" of
prompts, each with k responses sampled from the current policy:

1. the difference loss ``J(theta) = mean over prompts of 2/k^2 * sum_{i<j} sigmoid(|r(x, s_i) - r(x, s_j)|)``
   measures how far apart the reward model places the policy's samples;
2. one gradient-ascent step ``theta' = theta + eta * grad J(theta)`` moves towards parameters that
   separate them more;
3. the ordinary preference (BT) loss is evaluated at ``theta'`` and its gradient applied to ``theta``.

So the update prefers preference-data directions that also keep the policy's samples apart. The ascent
runs on the unwrapped model (no DDP / DeepSpeed hooks fire: it is not a training backward) and its
gradient is averaged over processes by hand, so every process steps to the same ``theta'``; the trainer
restores ``theta`` after the BT backward, before the optimizer step (:class:`~mova.trainers.rm.RmTrainer`).

A meta set is a JSONL of ``{"prompt": str or turns, "responses": [k strings], "image": optional path}``;
:func:`sample_meta_set` writes one from a policy checkpoint.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mova.data.pairs import PairEncoder
from mova.errors import DataError
from mova.rl.reward_model import pair_scores


def difference_loss(scores: torch.Tensor) -> torch.Tensor:
    """``J`` over a ``[P, k]`` matrix of rewards (P prompts, k responses each); higher = better separated."""
    p, k = scores.shape
    if k < 2:
        raise ValueError(f"the difference loss needs at least 2 responses per prompt, got {k}")
    gaps = (scores[:, :, None] - scores[:, None, :]).abs()
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=scores.device), diagonal=1)
    per_prompt = torch.sigmoid(gaps[:, upper]).sum(-1) * 2 / k**2
    return per_prompt.mean()


@dataclass
class MetaPrompt:
    """One prompt of the meta set and the policy's sampled responses to it."""

    id: str
    prompt: list[dict[str, str]]
    responses: list[str]
    image: Any = None


@dataclass
class _SlotPair:
    """Two responses of one prompt in the fields :class:`~mova.data.pairs.PairEncoder` reads."""

    id: str
    index: int
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    image: Any = None


class MetaSet:
    """Meta prompts and an encoder; :meth:`batch` lays k responses out as ``ceil(k / 2)`` pairs per prompt."""

    def __init__(self, prompts: list[MetaPrompt], encoder: PairEncoder):
        if not prompts:
            raise DataError("the MetaRM meta set is empty")
        ks = {len(p.responses) for p in prompts}
        if len(ks) != 1 or min(ks) < 2:
            raise DataError(f"every meta prompt needs the same number (>= 2) of responses; found {sorted(ks)}")
        self.prompts = prompts
        self.encoder = encoder
        self.k = ks.pop()

    def __len__(self) -> int:
        return len(self.prompts)

    def encode(self, indices: list[int]) -> list[Any]:
        """Encoded pairs of the given prompts; response ``j`` of prompt ``i`` is slot ``j`` of the pairs."""
        out = []
        for i in indices:
            mp = self.prompts[i]
            rs = list(mp.responses) + ([mp.responses[0]] if self.k % 2 else [])
            for j in range(0, len(rs), 2):
                pair = _SlotPair(mp.id, len(out), mp.prompt, rs[j], rs[j + 1], mp.image)
                out.append(self.encoder.encode(pair, len(out)))
        return out

    def scores(self, model: torch.nn.Module, collator: Any, indices: list[int], device: Any) -> torch.Tensor:
        """Rewards ``[len(indices), k]`` of the meta prompts' responses (with grad)."""
        encoded = self.encode(indices)
        batch = collator(encoded)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else
                 ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v) for k, v in batch.items()}
        n = len(encoded)
        r_a, r_b, _, _ = pair_scores(model, batch, n)
        per = (self.k + 1) // 2
        slots = torch.stack([r_a.view(len(indices), per), r_b.view(len(indices), per)], dim=-1)
        return slots.reshape(len(indices), 2 * per)[:, :self.k]


def load_meta_set(path: str | Path, encoder: PairEncoder) -> MetaSet:
    """A meta set JSONL (see the module docstring); images resolve against the file's folder."""
    from mova.data.records import resolve_image_path
    from mova.model.templates import IMAGE_PLACEHOLDER

    path = Path(path)
    if not path.is_file():
        raise DataError(f"rm.metarm_path: no file {path}")
    prompts = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt = row["prompt"]
            turns = [{"from": "human", "value": prompt}] if isinstance(prompt, str) else \
                [{"from": t.get("from", t.get("role")), "value": t.get("value", t.get("content"))} for t in prompt]
            responses = [str(r) for r in row["responses"]]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}: line {line_no}: not a meta prompt ({e}); expected "
                            '{"prompt": ..., "responses": [...]}') from e
        image = None
        if row.get("image"):
            from PIL import Image

            image = Image.open(resolve_image_path(path.parent, row["image"])).convert("RGB")
            if not any(IMAGE_PLACEHOLDER in t["value"] for t in turns):
                turns[0]["value"] = f"{IMAGE_PLACEHOLDER}\n{turns[0]['value']}"
        prompts.append(MetaPrompt(str(row.get("id", f"{path.stem}:{line_no}")), turns, responses, image))
    return MetaSet(prompts, encoder)


class MetaRmStep:
    """The ascent half of MetaRM: :meth:`ascend` moves the trainable weights to ``theta'``, :meth:`restore`
    puts ``theta`` back."""

    def __init__(self, meta_set: MetaSet, collator: Any, lr: float, batch_size: int = 4, seed: int = 0):
        self.meta_set = meta_set
        self.collator = collator
        self.lr = lr
        self.batch_size = min(batch_size, len(meta_set))
        self.rng = random.Random(seed)
        self._saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def next_indices(self) -> list[int]:
        return self.rng.sample(range(len(self.meta_set)), self.batch_size)

    def ascend(self, model: torch.nn.Module, indices: list[int] | None = None) -> tuple[float, float]:
        """One ascent step on ``J``; returns ``(J before, J after)`` on the same meta batch."""
        indices = indices if indices is not None else self.next_indices()
        params = [p for p in model.parameters() if p.requires_grad]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()  # the meta step measures the model, not a dropout sample of it
        j = difference_loss(self.meta_set.scores(model, self.collator, indices, device))
        grads = torch.autograd.grad(j, params, allow_unused=True)
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            for g in grads:
                if g is not None:
                    dist.all_reduce(g)
                    g.div_(world)
        self._saved = [(p, p.detach().clone()) for p, g in zip(params, grads) if g is not None]
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p.add_(g.to(p.dtype), alpha=self.lr)
            after = difference_loss(self.meta_set.scores(model, self.collator, indices, device))
        model.train(was_training)
        return float(j.detach()), float(after)

    def restore(self) -> None:
        with torch.no_grad():
            for p, saved in self._saved:
                p.copy_(saved)
        self._saved = []


def sample_meta_set(policy: torch.nn.Module, processor: Any, prompts: list[list[dict[str, str]]], out: str | Path,
                    k: int = 4, images: list[Any] | None = None, max_new_tokens: int = 64,
                    temperature: float = 1.0, seed: int = 0, batch_size: int = 16) -> Path:
    """Sample ``k`` responses per prompt from ``policy`` and write a meta-set JSONL (text prompts only:
    a prompt with an image keeps it in memory, so use :class:`MetaSet` directly for VLM meta sets)."""
    from mova.inference.generation import generate_answers

    if images is not None and any(im is not None for im in images):
        raise DataError("sample_meta_set writes text meta sets; build a MetaSet in memory for prompts with images")
    answers: list[list[str]] = [[] for _ in prompts]
    for j in range(k):
        outs = generate_answers(policy, processor, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                do_sample=True, temperature=temperature, seed=seed + 1000 * j, progress=False,
                                shard_across_processes=False)
        for i, text in enumerate(outs):
            answers[i].append(text if text.strip() else "(empty)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"id": f"meta:{i}", "prompt": p, "responses": a}) + "\n"
                           for i, (p, a) in enumerate(zip(prompts, answers))))
    return out
