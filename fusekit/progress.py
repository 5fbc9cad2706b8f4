"""Progress (rich bars on a terminal, periodic plain lines in a log) and JSONL metric logs: how long work shows
itself."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# soft_wrap: a message is one line however narrow the terminal; in a log, lines and tables are not cut at 80 columns
console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)
T = TypeVar("T")
LOG_EVERY = {"normal": 30.0, "verbose": 5.0}  # seconds between plain progress lines in a log
_verbosity = "normal"


def set_verbosity(level: str) -> None:
    """quiet (only errors and results), normal, or verbose (more frequent progress lines, library warnings)."""
    global _verbosity
    _verbosity = level
    console.quiet = level == "quiet"
    if level == "verbose":
        import transformers

        transformers.utils.logging.set_verbosity_warning()


def progress_bar() -> Progress | LogLines:
    """A rich bar on a terminal; in a log, a plain line per task every LOG_EVERY seconds and when it ends."""
    if not console.is_terminal:
        return LogLines(LOG_EVERY.get(_verbosity, float("inf")))
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console, transient=False,
    )


def tracked(items: Iterable[T], description: str, total: int | None = None, show: bool = True) -> Iterator[T]:
    """`items`, one at a time, with a progress bar over them (or nothing, when `show` is False: inner loops of
    work that shows its own progress)."""
    if not show:
        yield from items
        return
    with progress_bar() as bar:
        job = bar.add_task(description, total=total, status="")
        for item in items:
            yield item
            bar.update(job, advance=1)


class LogLines:
    """The part of rich's Progress that fusekit uses, as lines a log keeps: `desc: 120/301 (40%) · 2m10s elapsed ·
    ~3m15s left · loss 0.41`."""

    def __init__(self, every: float):
        self.every, self.tasks, self.next_id = every, {}, 0

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc) -> None:
        for task_id in list(self.tasks):
            self._line(task_id)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        self.next_id += 1
        now = time.monotonic()
        self.tasks[self.next_id] = {"description": description, "total": total, "completed": completed,
                                    "start": now, "start_done": completed, "shown": now, "fields": fields,
                                    "printed": None}
        return self.next_id

    def update(self, task_id: int, advance: float = 0, completed: float | None = None, **fields) -> None:
        task = self.tasks[task_id]
        task["completed"] = completed if completed is not None else task["completed"] + advance
        task["fields"].update(fields)
        finished = task["total"] is not None and task["completed"] >= task["total"]
        if finished or time.monotonic() - task["shown"] >= self.every:
            self._line(task_id)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _line(self, task_id: int) -> None:
        task = self.tasks[task_id]
        if task["printed"] == task["completed"] or console.quiet:
            return
        elapsed = time.monotonic() - task["start"]
        done, total = task["completed"], task["total"]
        parts = [f"{task['description']}: {done:g}" + (f"/{total:g} ({100 * done / total:.0f}%)" if total else "")]
        parts.append(f"{_duration(elapsed)} elapsed")
        rate = (done - task["start_done"]) / elapsed if elapsed > 0 else 0
        if total and rate > 0 and done < total:
            parts.append(f"~{_duration((total - done) / rate)} left")
        status = task["fields"].get("status")
        console.print(" · ".join(parts + ([status] if status else [])), highlight=False)
        task["shown"], task["printed"] = time.monotonic(), done


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class JsonlLog:
    """Append-only metrics log, one JSON object per line, flushed per record so a crash keeps what was logged."""

    def __init__(self, path: Path):
        self.path = path
        _drop_partial_line(path)  # a kill mid-append left half a record: the next record starts on its own line
        self.handle = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record, sort_keys=True) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _drop_partial_line(path: Path) -> None:
    """Cut a file back to its last complete line (the record a killed process was writing is lost, no other)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, 2)
        if handle.read(1) == b"\n":
            return
        data = handle.seek(0) or handle.read()
        handle.truncate(data.rfind(b"\n") + 1)
