"""sha256 checksums of the tensor files a folder holds, so that a corrupt or truncated file is named, not misread.

Run folders record them in their CHECKSUMS file, merged and joint folders in their manifest. Folders written before
checksums existed record none, and their files are read unchecked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fusekit.artifacts.layout import CHECKSUMS
from fusekit.errors import FusekitError

CHUNK = 1 << 20


def sha256(path: Path) -> str:
    """Hex digest of a file, read in chunks (task vectors of large models need not fit in memory twice)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digests(folder: Path, pattern: str = "**/*.safetensors") -> dict[str, str]:
    """sha256 of every file under `folder` matching `pattern`, keyed by its path relative to the folder."""
    return {path.relative_to(folder).as_posix(): sha256(path) for path in sorted(folder.glob(pattern))}


def read_checksums(folder: Path) -> dict[str, str]:
    """A run folder's recorded checksums ({} for a folder written before checksums existed)."""
    path = folder / CHECKSUMS
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise FusekitError(f"{path} is not a JSON mapping of file names to sha256 ({error})") from None


class ChecksummedFolder:
    """A folder's recorded checksums; each file is hashed once, the first time it is read."""

    def __init__(self, folder: Path, expected: dict[str, str], record: str):
        self.folder, self.expected, self.record = folder, expected, record
        self.verified: set[str] = set()

    def path(self, name: str) -> Path:
        """The path of file `name` (relative to the folder), checked against its recorded sha256 on first use."""
        path = self.folder / name
        if name not in self.verified and name in self.expected and path.is_file():
            if sha256(path) != self.expected[name]:
                raise FusekitError(f"{path} is corrupt (sha256 mismatch with {self.record})")
            self.verified.add(name)
        return path
