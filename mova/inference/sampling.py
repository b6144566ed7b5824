"""``SamplingParams``: how to decode, one object from the command line to ``model.generate``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SamplingParams:
    """Greedy unless ``do_sample``; ``temperature`` / ``top_p`` / ``top_k`` shape sampling; ``seed`` makes
    sampling repeatable per sample (each draws from its own generator, seeded by ``seed`` and its index, so a
    run repeats whatever the batch size or number of processes); ``stop`` strings end an answer (the text is
    cut before the stop string)."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = 0
    stop: list[str] = field(default_factory=list)

    @classmethod
    def with_options(cls, params: SamplingParams | None, options: dict[str, Any],
                     **defaults: Any) -> SamplingParams:
        """``params`` (or ``defaults``) updated by the sampling fields found in ``options``, which are removed
        from ``options`` (what is left there is meant for ``model.generate``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: options.pop(k) for k in list(options) if k in names}
        base = params if params is not None else cls(**defaults)
        out = dataclasses.replace(base, **given)
        if isinstance(out.stop, str):
            out.stop = [out.stop]
        out.stop = [s for s in (out.stop or []) if s]
        return out
