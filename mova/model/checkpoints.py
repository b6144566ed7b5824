"""Turn a user's model reference (a folder, or a hub id) into something loadable, or say clearly why not.

Without this, a missing folder such as a recipe's default ``init_from: runs/tiny-align/final`` run from
another working directory reaches transformers, which reads it as a hub id and fails with a message about
repo-id syntax. Every loader of a user-given checkpoint goes through :func:`resolve_checkpoint` first.
"""

from __future__ import annotations

import os
from pathlib import Path

from mova.errors import ConfigError

#: the repository's recipes, searched to name the stage that writes a missing folder.
RECIPES = Path(__file__).resolve().parents[2] / "train" / "configs"


def _looks_like_hub_id(ref: str) -> bool:
    """``owner/name`` or ``name`` with no path syntax (a hub id); anything else is a local path."""
    if ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") > 1:
        return False
    return all(part and not part.startswith(".") for part in ref.split("/"))


def producing_recipe(ref: str | Path) -> tuple[str, Path] | None:
    """``(stage, recipe)`` of the repository recipe whose ``train.output_dir/final`` is ``ref``, if any."""
    import yaml

    want = Path(os.path.normpath(str(ref)))
    for recipe in sorted(RECIPES.glob("*.yaml")) if RECIPES.is_dir() else []:
        try:
            data = yaml.safe_load(recipe.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        out = (data.get("train") or {}).get("output_dir") if isinstance(data, dict) else None
        if out and Path(os.path.normpath(out)) / "final" == want:
            return str(data.get("stage", recipe.stem)), recipe
    return None


def resolve_checkpoint(ref: str | Path, what: str = "model") -> str:
    """``ref`` as a loadable reference: an existing local folder, or a hub id left for transformers. The name of
    a known model (:mod:`mova.model.known_models`, e.g. ``smollm2-135m-instruct``) becomes its cache folder,
    fetched first when needed.

    Raises :class:`ConfigError` naming ``what`` (``init_from``, ``--model``, ...) and the missing path (and
    the recipe that writes it, when a repository recipe does) for a local path that does not exist, and for a
    hub id that is neither a local folder nor in the local cache while downloads are off (``HF_HUB_OFFLINE``).
    """
    from mova.model.known_models import resolve_known

    text = resolve_known(ref) or str(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{what}: {text!r} is a folder but holds no config.json, so it is not a saved model "
                              "(a training stage writes its model to <train.output_dir>/final)")
        return str(path)
    if path.exists():
        raise ConfigError(f"{what}: {text!r} is a file; give the model's folder (the one with config.json)")
    if not _looks_like_hub_id(text):
        hint = "a training stage writes its model to <train.output_dir>/final when it ends"
        made_by = producing_recipe(text)
        if made_by:
            stage, recipe = made_by
            try:
                shown = recipe.relative_to(Path.cwd())
            except ValueError:
                shown = recipe
            hint = f"it is written by `mova train {stage} --config {shown}` (its train.output_dir + /final)"
        raise ConfigError(f"{what}: no model folder at {text!r} (looked for {path.absolute()}); {hint}. Run that "
                          "first, run from the folder it ran in, or give an absolute path.")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(text, "config.json"), str):
            raise ConfigError(f"{what}: {text!r} is not a local folder, and as a hub id it is not in the local "
                              "cache while downloads are off (HF_HUB_OFFLINE=1); give a folder, or download it "
                              "first with downloads allowed")
    return text
