"""``mova cache-features``: run a model's frozen experts over a dataset's images once, store their outputs.

Training then reads the features from the cache (:mod:`mova.data.feature_cache`) instead of running the
experts. Importing this module registers the sub-command with :mod:`mova.cli`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mova.cli.command import Command
from mova.errors import ConfigError


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """LLaVA-format records: a JSON list (``[{"image": ..., "conversations": ...}, ...]``) or JSONL."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON{' lines' if path.suffix == '.jsonl' else ''}: {e}") from e
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ConfigError(f"{path}: expected a list of records (objects)")
    return records


def _args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="preset name (tiny) or model YAML; experts load their pretrained weights")
    source.add_argument("--checkpoint", help="a saved Mova model folder (its experts' weights are cached)")
    p.add_argument("overrides", nargs="*", help="key=value overrides for --config")
    p.add_argument("--data", required=True, help="LLaVA-format JSON (records with an 'image' field) or JSONL")
    p.add_argument("--image-folder", help="folder the records' image paths are relative to (default: the data's)")
    p.add_argument("--out", required=True, help="cache root folder")
    p.add_argument("--dtype", default="bfloat16", help="storage dtype: bfloat16 (default), float16 or float32")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers that load and transform images")
    p.add_argument("--shard-size-mb", type=float, default=1024, help="target shard size (default 1024 MB)")
    p.add_argument("--experts", help="comma-separated expert names to cache (default: all)")
    p.add_argument("--device", help="where the experts run (default: cuda when available, else cpu)")
    p.add_argument("--seed", type=int, default=0,
                   help="torch seed set before building, so random-init experts (the tiny preset) are reproducible")
    p.add_argument("--skip-unreadable", action="store_true", help="skip (and count) unreadable images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run(args: argparse.Namespace) -> int:
    import torch

    from mova.data.feature_cache import build_cache, storage_dtype

    dtype = storage_dtype(args.dtype)
    records = read_records(args.data)
    folder = Path(args.image_folder) if args.image_folder else Path(args.data).resolve().parent
    torch.manual_seed(args.seed)
    if args.checkpoint:
        if args.overrides:
            raise ConfigError("key=value overrides apply to --config, not to --checkpoint")
        from mova.model.builder import load_pretrained

        model, processor = load_pretrained(args.checkpoint, what="--checkpoint")
    else:
        from mova.config import load_model_config
        from mova.model.builder import build_model

        model, processor = build_model(load_model_config(args.config, args.overrides), load_weights=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.experts.to(device)  # the LLM is not needed and stays where it is
    experts = [n.strip() for n in args.experts.split(",") if n.strip()] if args.experts else None
    with_image = [r for r in records if r.get("image")]
    stats = build_cache(model, processor, with_image, args.out, batch_size=args.batch_size, dtype=dtype,
                        image_folder=folder, experts=experts, shard_bytes=int(args.shard_size_mb * 2**20),
                        num_workers=args.num_workers, skip_unreadable=args.skip_unreadable,
                        progress=not args.no_progress)
    print(f"records: {len(records)} ({len(records) - len(with_image)} without image)")
    print(f"images : {stats.images} (cached new: {stats.new}, already cached: {stats.cached}, "
          f"unreadable: {len(stats.failed)})")
    for name, path in stats.folders.items():
        print(f"  {name:<12} {stats.entries[name]:>7} new  {path}")
    print(f"on disk: {stats.bytes_on_disk / 2**20:.1f} MB; {stats.images_per_s:.1f} images/s "
          f"({stats.seconds:.1f} s)")
    return 0


COMMAND = Command("cache-features", "run the frozen experts over a dataset's images once and cache their features",
                  _args, _run)
