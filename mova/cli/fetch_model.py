"""``mova fetch-model NAME``: fetch a known pretrained model into Mova's cache folder (once; later runs reuse it)."""

from __future__ import annotations

import argparse

from mova.cli.command import Command


def _add_args(p: argparse.ArgumentParser) -> None:
    from mova.model.known_models import CACHE_ENV, KNOWN_MODELS

    p.add_argument("name", nargs="?", help=f"a known model: {', '.join(sorted(KNOWN_MODELS))}")
    p.add_argument("--force", action="store_true", help="fetch again even when the cache folder is complete")
    p.add_argument("--list", action="store_true", help=f"list the known models and where they go (${CACHE_ENV})")


def _run(args: argparse.Namespace) -> int:
    from mova.errors import ConfigError
    from mova.model.known_models import KNOWN_MODELS, ensure_model, is_fetched, model_folder

    if args.list or not args.name:
        for name, known in sorted(KNOWN_MODELS.items()):
            state = "fetched" if is_fetched(name) else "not fetched"
            print(f"{name}: {known.description}\n  {model_folder(name)} ({state})")
        return 0
    if args.name not in KNOWN_MODELS:
        raise ConfigError(f"unknown model {args.name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    was = is_fetched(args.name)
    folder = ensure_model(args.name, force=args.force)
    if was and not args.force:
        print(f"{args.name}: already in the cache (--force fetches it again)")
    print(folder)
    return 0


COMMAND = Command("fetch-model", "fetch a known pretrained model (smollm2-135m-instruct) into Mova's cache folder",
                  _add_args, _run)
