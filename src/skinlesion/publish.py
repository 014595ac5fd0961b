"""Pushing a model folder to the Hugging Face Hub: checked before training starts, one commit at the end."""

from __future__ import annotations

from pathlib import Path

from .hub import HubUnavailableError, hub_offline_mode, require_hub


def check_can_push(repo_id: str) -> None:
    """Fail at start-up (not after hours of training) when a push could not succeed.

    Cheapest first: the repo id's form, offline mode and the token need no network; only then is the
    Hub probed (a few seconds at most).
    """
    what = f"--push-to-hub {repo_id}"
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{what}: a Hub repo id has the form owner/name")
    if hub_offline_mode():
        require_hub(what)  # raises, naming HF_HUB_OFFLINE
    from huggingface_hub import get_token

    if not get_token():
        raise HubUnavailableError(f"{what}: no Hugging Face token; set HF_TOKEN or run `hf auth login`")
    require_hub(what)


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, message: str | None = None) -> str:
    """Upload the model folder (weights, config, card, plots, manifest) in a single commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message=message or "Upload skin-lesion model",
                             ignore_patterns=["checkpoints/*", ".*", "*.tmp"])
    return str(getattr(info, "commit_url", info))
