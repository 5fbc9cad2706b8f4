"""Writes that never leave a half-written file or run folder behind: write beside, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from fusekit.errors import FusekitError


def umask() -> int:
    """The process's file-creation mask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str, path: Path, mode: int = 0o666) -> None:
    """Give a temp file the permissions a plain open() would have, then rename it into place."""
    os.chmod(tmp, mode & ~umask())
    os.replace(tmp, path)


@contextmanager
def _beside(path: Path) -> Iterator[str]:
    """A temp file beside `path` to write, renamed onto it when the block ends; on any failure the temp file is
    removed and an error names `path` (a full disk says which output it could not write, not a temp name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        publish(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    except SafetensorError as error:
        Path(tmp).unlink(missing_ok=True)
        reason = str(error).replace(tmp, "").strip(" :")
        raise FusekitError(f"could not write {path}: {reason}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with _beside(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_json(path: Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The first tensor holding NaN or an infinity, or None. One sum per tensor (a NaN or an infinity makes it
    non-finite), copying nothing; only where a sum is not finite are entries checked (a huge sum may overflow)."""
    floats = {k: t.detach() for k, t in tensors.items() if t.is_floating_point()}
    if not floats or bool(torch.stack([t.sum(dtype=torch.float64) for t in floats.values()]).isfinite().all()):
        return None
    return next((k for k, t in floats.items() if not bool(t.isfinite().all())), None)


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse NaN or infinite weights before they are written (a merge of a damaged input, a diverged scale)."""
    bad = first_non_finite(tensors)
    if bad is not None:
        raise FusekitError(f"{what}: {bad} would hold NaN or infinite values (an input or a scale is not a finite "
                           "number): nothing was written")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors file written atomically (contiguous CPU copies, as safetensors requires), finite values only."""
    check_finite(tensors, path.name)
    with _beside(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file (never a pickle), with a one-line error on a bad file."""
    from safetensors import safe_open

    if not path.is_file():
        raise FusekitError(f"{path} not found")
    try:
        with safe_open(str(path), "pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise FusekitError(f"{path} is not a readable safetensors file ({error})") from None
