"""A folder written whole: built in a temporary sibling, marked as fusekit's, sealed with checksums, then swapped
in, so that a folder under its final name is always finished."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fusekit.artifacts.atomic import umask
from fusekit.artifacts.checksums import seal
from fusekit.artifacts.layout import STAGING
from fusekit.artifacts.output import check_output, mark


@contextmanager
def staged_dir(final: Path, overwrite: bool, kind: str) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success mark it as fusekit's `kind`, seal it (checksums of every
    file) and swap it in for `final`; on failure delete it."""
    check_output(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f"{final.name}{STAGING}*"):  # left by a killed process: never a finished run
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{final.name}{STAGING}"))
    os.chmod(stage, 0o777 & ~umask())
    try:
        yield stage
        mark(stage, kind)
        seal(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    trash = None
    if final.exists():
        trash = final.with_name(f"{final.name}{STAGING}old-{os.getpid()}")
        os.replace(final, trash)
    os.replace(stage, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
