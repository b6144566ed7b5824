"""Upload an exported folder to the Hugging Face Hub.

The token is never handled here: ``huggingface_hub`` finds it itself (``HF_TOKEN`` in the environment or
the file ``hf auth login`` wrote), so it cannot reach a log line, a config or the card. Any error text
that reaches the user is still scrubbed of the token's value, in case a library quotes a request.
A failed upload (no network, offline mode, no permission) raises :class:`PushError` with a message that
says what to do; the folder is only read, so it stays as it was.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mova.errors import MovaError

logger = logging.getLogger(__name__)

#: environment variables huggingface_hub reads a token from.
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class PushError(MovaError, RuntimeError):
    """The upload failed; the exported folder is untouched."""


@dataclass
class PushResult:
    repo_id: str
    url: str


def _scrub(text: str) -> str:
    """``text`` with every token value we can see replaced by ``***``."""
    secrets = [os.environ.get(v) for v in TOKEN_VARIABLES]
    try:
        from huggingface_hub import get_token

        secrets.append(get_token())
    except Exception:  # noqa: BLE001 -- an unreadable token file must not hide the real error
        pass
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
                commit_message: str | None = None) -> PushResult:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it; raises :class:`PushError` on failure."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise PushError(f"{folder} is not an exported model folder (no config.json); run `mova export` first")
    if _offline():
        raise PushError(f"cannot upload to {repo_id}: the Hub is in offline mode (HF_HUB_OFFLINE is set). The "
                        f"exported folder is intact at {folder}; upload it later with `mova export --push-only "
                        f"{folder} --push-to-hub {repo_id}` where the network is reachable")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
                                 commit_message=commit_message or "Upload model exported by mova export",
                                 ignore_patterns=["__pycache__/*", "*.pyc"])
    except Exception as e:  # noqa: BLE001 -- network, auth and HTTP errors all end the same way for the user
        reason = _scrub(f"{type(e).__name__}: {e}").splitlines()
        raise PushError(f"cannot upload {folder} to {repo_id}: {reason[0] if reason else type(e).__name__}. "
                        f"The exported folder is intact; check the network and your login (`hf auth login` or "
                        f"HF_TOKEN), then run `mova export --push-only {folder} --push-to-hub {repo_id}`") from None
    url = str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")
    logger.info("uploaded %s to %s", folder, repo_id)
    return PushResult(repo_id=repo_id, url=url)
