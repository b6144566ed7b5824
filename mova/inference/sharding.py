"""Multi-process evaluation: shard the samples over the processes of a ``torchrun`` launch, merge in order.

    torchrun --nproc_per_node 8 -m mova.cli eval run --checkpoint runs/sft/final --tasks vqa,gsm8k

Every process loads the model; inside :func:`sharded_generation` (which ``mova eval run`` and ``mova polish``
enter), :func:`mova.inference.generate_from_prompts` gives each process every ``world``-th sample (of the
length-sorted order, so every process gets a similar mix of long and short prompts), gathers the answers
from all processes and returns the full list in input order on every process. Tasks therefore need no
change to run sharded; only the main process writes result files.

Sharding is opt-in (the context, or ``shard_across_processes=True``) because it is collective: every
process must make the same generation calls. A training loop that evaluates on rank 0 alone would wait
forever for the other ranks; outside the context each process simply generates everything itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


_SHARDING = {"on": False}


@contextlib.contextmanager
def sharded_generation(enabled: bool = True) -> Iterator[None]:
    """Within this block, generation calls shard their samples over the processes of the process group
    (when there is one of more than one process); every process must make the same calls."""
    before = _SHARDING["on"]
    _SHARDING["on"] = enabled
    try:
        yield
    finally:
        _SHARDING["on"] = before


def sharding_enabled() -> bool:
    """True inside :func:`sharded_generation`."""
    return _SHARDING["on"]


def dist_active() -> bool:
    """True inside an initialised process group of more than one process."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist_active():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1).

    ``backend`` defaults to NCCL when CUDA is available and gloo otherwise. Returns whether this process is
    part of a multi-process run. Safe to call twice and outside ``torchrun`` (then it does nothing).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend=backend)
    return dist_active()


def local_device() -> str:
    """This process's device: its own GPU under ``torchrun`` (``LOCAL_RANK``), else cuda / cpu."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def shard(order: Sequence[int], rank: int, world: int) -> list[int]:
    """The entries of ``order`` that process ``rank`` of ``world`` handles: every ``world``-th from ``rank``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    return list(order[rank::world])


def merge_shards(n: int, shards: Sequence[Sequence[tuple[int, T]]]) -> list[T]:
    """The items of every shard (``(input index, item)`` pairs) as one list in input order.

    Raises when an index is missing or appears twice, which would mean the shards did not partition
    ``range(n)``: a silently dropped or duplicated sample would bias every metric computed on the result.
    """
    out: list[Any] = [None] * n
    seen = [False] * n
    for part in shards:
        for i, item in part:
            if not 0 <= i < n or seen[i]:
                raise RuntimeError(f"sample index {i} is {'duplicated' if 0 <= i < n else 'out of range'} "
                                   f"across the shards of {n} samples")
            seen[i] = True
            out[i] = item
    missing = [i for i, s in enumerate(seen) if not s]
    if missing:
        raise RuntimeError(f"{len(missing)} of {n} samples came back from no process (first: {missing[:5]})")
    return out


def gather_shards(n: int, local: Sequence[tuple[int, T]]) -> list[T]:
    """Every process's ``(index, item)`` pairs, merged in input order, on every process."""
    if not dist_active():
        return merge_shards(n, [local])
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, list(local))
    return merge_shards(n, parts)


__all__ = ["dist_active", "gather_shards", "init_distributed", "is_main_process", "local_device", "merge_shards",
           "rank_and_world", "shard", "sharded_generation", "sharding_enabled"]
