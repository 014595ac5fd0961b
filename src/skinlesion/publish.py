"""Pushing a model folder to the Hugging Face Hub: checked before training starts, one commit at the end."""

from __future__ import annotations

from pathlib import Path

from .hub import HubUnavailableError, require_hub


def check_can_push(repo_id: str) -> None:
    """Fail at start-up (not after hours of training) when a push could not succeed."""
    require_hub(f"--push-to-hub {repo_id}")
    from huggingface_hub import get_token

    if not get_token():
        raise HubUnavailableError(
            f"--push-to-hub {repo_id}: no Hugging Face token; set HF_TOKEN or run `huggingface-cli login`"
        )


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, message: str | None = None) -> str:
    """Upload the model folder (weights, config, card, plots, manifest) in a single commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message=message or "Upload skin-lesion model",
                             ignore_patterns=["checkpoints/*", ".*", "*.tmp"])
    return str(getattr(info, "commit_url", info))
