"""sha256 checksums of every file a folder holds, so that a corrupt, truncated or edited file is named, not misread.

Every folder fusekit writes is sealed when complete: CHECKSUMS lists the sha256 of each of its files (JSON and
YAML included), and each file is checked the first time it is read. In a folder that carries fusekit's marker, a
missing CHECKSUMS or a file without an entry is an error (a record cannot be deleted to hide an edit). Folders
written before then stay readable: merged folders of that time listed their tensor files in the manifest, runs
their tensor files in CHECKSUMS; folders with no record are read unchecked, with a warning.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from fusekit.artifacts.atomic import atomic_write_json
from fusekit.artifacts.layout import CHECKSUMS, MANIFEST, MARKER
from fusekit.artifacts.reading import read_json
from fusekit.errors import FusekitError
from fusekit.progress import console

CHUNK = 1 << 20


def sha256(path: Path) -> str:
    """Hex digest of a file, read in chunks (task vectors of large models need not fit in memory twice)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def seal(folder: Path) -> None:
    """Record the sha256 of every file under `folder` (a finished output) in its CHECKSUMS."""
    record = {path.relative_to(folder).as_posix(): sha256(path) for path in sorted(folder.rglob("*"))
              if path.is_file() and path.name != CHECKSUMS}
    atomic_write_json(folder / CHECKSUMS, record)


def reseal(folder: Path, name: str, create: bool = False) -> None:
    """Update the entry of file `name` after fusekit (re)wrote it (a sealed folder's eval.json, a new cached
    statistic); `create` starts a record (and seals the marker) where there is none yet."""
    path = folder / CHECKSUMS
    if path.is_file() or create:
        record = _record(path) if path.is_file() else {}
        if (folder / MARKER).is_file():
            record.setdefault(MARKER, sha256(folder / MARKER))
        atomic_write_json(path, {**record, name: sha256(folder / name)})


DIGEST = re.compile(r"[0-9a-f]{64}")


def _record(path: Path) -> dict[str, str]:
    record = read_json(path, "checksum record")
    if not all(isinstance(k, str) and isinstance(v, str) and DIGEST.fullmatch(v) for k, v in record.items()):
        raise FusekitError(f"{path} is not a mapping of file names to sha256 digests")
    return record


class ChecksummedFolder:
    """A folder's recorded checksums; each file is hashed once, the first time it is read."""

    def __init__(self, folder: Path, expected: dict[str, str], record: str, strict: bool):
        self.folder, self.expected, self.record, self.strict = folder, expected, record, strict
        self.verified: set[str] = set()

    @classmethod
    def open(cls, folder: Path) -> ChecksummedFolder:
        """The folder's record: CHECKSUMS (strict when the folder is marked), else a legacy merged manifest's
        list, else none (legacy folders only; warned)."""
        if (folder / CHECKSUMS).is_file():
            return cls(folder, _record(folder / CHECKSUMS), CHECKSUMS, strict=(folder / MARKER).is_file())
        if (folder / MARKER).is_file():
            raise FusekitError(f"{folder} has lost its {CHECKSUMS} (fusekit wrote one): its files cannot be trusted")
        legacy = read_json(folder / MANIFEST, "manifest").get("checksums") if (folder / MANIFEST).is_file() else None
        if isinstance(legacy, dict):
            return cls(folder, legacy, MANIFEST, strict=False)
        console.print(f"warning: {folder} records no checksums (written by an older fusekit): read unchecked")
        return cls(folder, {}, CHECKSUMS, strict=False)

    def path(self, name: str) -> Path:
        """The path of file `name` (relative to the folder), checked against its recorded sha256 on first use."""
        path = self.folder / name
        if name in self.verified or not path.is_file():
            return path
        if name in self.expected:
            if sha256(path) != self.expected[name]:
                raise FusekitError(f"{path} is corrupt or was edited (sha256 mismatch with {self.record})")
        elif self.strict:
            raise FusekitError(f"{path} has no entry in {self.folder / self.record}: it was added or its entry "
                               "removed after fusekit wrote the folder")
        self.verified.add(name)
        return path
