"""What produced a set of answers, recorded beside them so that an evaluation can be rerun and compared:
the checkpoint (path and a fingerprint of its config and weight index), the seed, the library versions,
the git commit of the code, the command line, the host's devices and the time."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

_SAMPLE = 1 << 20
LIBRARIES = ("mova", "torch", "transformers", "accelerate", "deepspeed", "vllm", "datasets", "trl", "peft")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(where: str | Path | None = None) -> str | None:
    """The commit (``+dirty`` when the tree has changes) of the checkout holding the code, if any."""
    root = Path(where) if where else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def checkpoint_fingerprint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's resolved path and a SHA-256 over its ``config.json`` and, for each weight file, its
    name, size and first and last MiB (cheap even for a 70B checkpoint; two trainings of one model differ
    there), so two runs can tell whether they saw the same model."""
    p = Path(path)
    if not p.is_dir():
        return {"path": str(path), "local": False}
    h = hashlib.sha256()
    config = p / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(_SAMPLE))
            fh.seek(max(0, size - _SAMPLE))
            h.update(fh.read(_SAMPLE))
    return {"path": str(p.resolve()), "local": True, "fingerprint": h.hexdigest()[:16]}


def run_provenance(checkpoint: str | Path | None, *, seed: int | None, argv: Any = None) -> dict[str, Any]:
    """The ``provenance`` block of a results file."""
    import torch

    return {"provenance": {
        "checkpoint": checkpoint_fingerprint(checkpoint) if checkpoint is not None else None,
        "seed": seed,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "arguments": argv,
        "devices": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"),
        "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }}


__all__ = ["checkpoint_fingerprint", "git_commit", "library_versions", "run_provenance"]
