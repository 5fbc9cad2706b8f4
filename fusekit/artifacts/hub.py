"""Sharing an output on the Hugging Face Hub (online users): one call, one line of error when it cannot."""

from __future__ import annotations

from pathlib import Path

from fusekit.errors import FusekitError


def push_to_hub(folder: Path, repo: str, private: bool = False) -> str:
    """Upload `folder` (a merged adapter with its model card) to the Hub repo `repo`, created if missing; returns
    the commit URL. Needs a token (`huggingface-cli login` or HF_TOKEN) and a connection."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo,
                                   commit_message="Upload a LoRA adapter merged by fusekit")
    except Exception as error:  # noqa: BLE001 — offline, no token, no rights: all one line
        first = str(error).splitlines()[0][:120] if str(error) else ""
        raise FusekitError(f"could not push {folder} to the Hub repo {repo!r} ({type(error).__name__}: {first}); "
                           "the merged folder is kept: check the connection and HF_TOKEN, then push it again")
    return str(getattr(commit, "commit_url", commit))
