"""Where fusekit may write: the output-folder policy and the lock that keeps two commands off one output.

`--overwrite` replaces a folder only if fusekit wrote it (it holds MARKER, or has the layout of a folder written
before markers existed) and only if it is not, does not contain and is not inside any input of the command. An
output path that is a symbolic link, or that cannot be resolved, is refused before any work. A lock file
`<out>.lock`, created with O_EXCL and holding the writer's pid, keeps a second command from writing (or resuming)
the same output; a lock whose process is gone is stale and taken over.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from fusekit.artifacts.layout import CONFIG, LOCK_SUFFIX, MANIFEST, MARKER, STAGES, STAGING, TASK_VECTOR, TUNE
from fusekit.errors import FusekitError

# what folders written before MARKER existed hold (run, merged or joint, study, tune)
LEGACY_LAYOUTS = ((CONFIG, TASK_VECTOR), (MANIFEST, TASK_VECTOR), (STAGES,), (TUNE,))


def written_by_fusekit(folder: Path) -> bool:
    return (folder / MARKER).is_file() or any(all((folder / name).exists() for name in names)
                                              for names in LEGACY_LAYOUTS)


def mark(folder: Path, kind: str) -> None:
    """Record in `folder` that fusekit wrote it, and as what."""
    from importlib.metadata import version

    (folder / MARKER).write_text(json.dumps({"kind": kind, "fusekit": version("fusekit")}) + "\n")


def resolved(path: Path, what: str) -> Path:
    """`path` made absolute with its links followed; a symlink loop or an unreadable parent is one line."""
    try:
        return path.expanduser().resolve()
    except (RuntimeError, OSError) as error:
        raise FusekitError(f"{what} {path} cannot be resolved ({error})") from None


# the longest sibling fusekit makes beside an output: `<name>.tmp-old-<pid>` (pid up to 7 digits) or
# `<name>.tmp-<8 random characters>`, within the 255 bytes of a file name
MAX_NAME_BYTES = 255 - len(f"{STAGING}old-") - 7


def check_output(out: Path, overwrite: bool, inputs: Iterable[Path | str | None] = (),
                 what: str = "output folder", resumable: bool = False) -> None:
    """Refuse, before any work, every output that would lose something: see the module docstring. A `resumable`
    output (a study, a tune) may already hold what fusekit wrote there; it is continued, not replaced."""
    if out.is_symlink():
        raise FusekitError(f"{what} {out} is a symbolic link: give the folder's own path (fusekit replaces "
                           "folders whole)")
    if len(out.name.encode()) > MAX_NAME_BYTES:  # before any work, not when the staged sibling is made
        raise FusekitError(f"{what} name {out.name[:40]}… is {len(out.name.encode())} bytes: at most "
                           f"{MAX_NAME_BYTES} (its staged sibling `<name>{STAGING}…` must fit a file system's 255)")
    target = resolved(out, what)
    if target.is_file():
        raise FusekitError(f"{what} {out} is a file (expected a folder)")
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        source = resolved(Path(item), "input")
        if target == source or target in source.parents:
            raise FusekitError(f"{what} {out} holds the input {item}: writing there would replace it")
        if source in target.parents:
            raise FusekitError(f"{what} {out} is inside the input {item}: choose a folder outside it")
    if target.is_dir() and any(target.iterdir()):
        if not written_by_fusekit(target):
            raise FusekitError(f"{what} {out} holds files fusekit did not write: refusing to write there "
                               "(choose another folder or empty it yourself)")
        if not overwrite and not resumable:
            raise FusekitError(f"{what} {out} is not empty (it holds a fusekit output); pass --overwrite to "
                               "replace it")
    parent = next((p for p in target.parents if p.exists()), None)  # where the staged folder is made and renamed
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        raise FusekitError(f"{what} {out} cannot be written: {parent} is not writable")


def check_output_file(out: Path, inputs: Iterable[Path | str | None] = (), what: str = "output file") -> None:
    """The same policy for a JSON result file (`fusekit baseline`, `fusekit eval --out`): not a link or a folder,
    not inside an input, and replacing only a file fusekit wrote (a JSON record of scores by task)."""
    if out.is_symlink():
        raise FusekitError(f"{what} {out} is a symbolic link: give the file's own path")
    target = resolved(out, what)
    if target.is_dir():
        raise FusekitError(f"{what} {out} is a folder (expected a JSON file name)")
    for item in inputs:
        if item is not None and Path(item).exists():
            source = resolved(Path(item), "input")
            if target == source or source in target.parents:
                raise FusekitError(f"{what} {out} is inside the input {item}: choose a path outside it")
    if target.exists() and not _scores_json(target):
        raise FusekitError(f"{what} {out} holds a file fusekit did not write: refusing to replace it")
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        raise FusekitError(f"{what} {out} cannot be written: {parent} is not writable")


def _scores_json(path: Path) -> bool:
    """A file fusekit wrote: JSON scores keyed by task (a mapping with 'task', or a list of them)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    rows = data if isinstance(data, list) else [data]
    return bool(rows) and all(isinstance(row, dict) and "task" in row for row in rows)


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + LOCK_SUFFIX)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether `pid` exited and waits to be reaped by its parent (a killed Ray worker, for a moment): it still
    answers kill(pid, 0) but holds nothing. Linux says so in /proc; elsewhere it counts as alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


class OutputLock:
    """`<out>.lock` while a command writes `out`. Taking it again from the same process is allowed (a study's
    stages, a retried call); the file goes when the process releases it or exits."""

    def __init__(self, out: Path):
        self.path = lock_path(resolved(out, "output"))
        self.held = False

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner and owner.get("pid") != me["pid"] and (owner.get("host") != me["host"]
                                                                or _alive(owner["pid"])):
                    raise FusekitError(f"{self.path.with_suffix('')} is being written by process {owner['pid']} "
                                       f"on {owner.get('host')} (lock {self.path}; delete it if that process "
                                       "is gone)") from None
                self.path.unlink(missing_ok=True)  # stale, or ours
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            atexit.register(self.release)
            return self
        raise FusekitError(f"could not take the lock {self.path}")

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except (OSError, ValueError):
            return None  # unreadable: treated as stale

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim_output(out: Path, overwrite: bool, inputs: Iterable[Path | str | None] = (),
                 what: str = "output folder", resumable: bool = False) -> OutputLock:
    """Check `out` against the policy, lock it, and check again under the lock (so that the check stays true)."""
    check_output(out, overwrite, inputs, what, resumable)
    lock = OutputLock(out).acquire()
    try:
        check_output(out, overwrite, inputs, what, resumable)
    except BaseException:
        lock.release()
        raise
    return lock
