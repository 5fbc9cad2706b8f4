"""Where a study's stages run: one after another in this process (`local`, the default), or fanned out over a Ray
cluster (`ray`), each stage a task with its own resource request, started as soon as the stages it needs are
finished. Either way each stage writes its own folder (staged, then renamed), so the results, the resume rules and
the folders are the same; another scheduler (SLURM through submitit, Dask) is one more class with `run`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fusekit.artifacts.layout import STAGES, checkpoint_dir
from fusekit.artifacts.reading import read_jsonl
from fusekit.errors import FusekitError
from fusekit.progress import JsonlLog, console
from fusekit.study.plan import Stage

# runs one stage in whatever process the executor chose and returns its cost (seconds, peak memory …)
StageRunner = Callable[[Stage, Path], dict]


class Executor(Protocol):
    def run(self, stages: list[Stage], out: Path, run_one: StageRunner, log: JsonlLog | None) -> None:
        """Run `stages` (each with `run_one`), recording each stage's progress to `log` (see `record`)."""


def record(log: JsonlLog | None, stage: Stage, status: str, fields: dict | None = None) -> None:
    """One `stages.jsonl` line: the stage, its family (what a later stage's memory request reads), its status and
    `fields`. Every stage a run will run is `queued` when the run starts, `running` once handed to a worker (with
    `resumes`: whether an earlier try left work it goes on from), then `done` (with its wall time and peak memory),
    `failed` (with the error's line) or `stopped` (interrupted, with the seconds it ran: it resumes on the next run).
    The latest line of a stage is its state."""
    if log:
        log.write({"stage": stage.name, "kind": stage.kind, "family": stage.id.family, "status": status,
                   **(fields or {})})


class LocalExecutor:
    """The stages in plan order, in this process (and its data-parallel peers under torchrun); the first error
    stops the study."""

    def run(self, stages: list[Stage], out: Path, run_one: StageRunner, log: JsonlLog | None) -> None:
        for stage in stages:
            record(log, stage, "queued")
        for number, stage in enumerate(stages, 1):
            console.rule(f"[{number}/{len(stages)}] {stage.name}")
            record(log, stage, "running", {"resumes": resumes(out / stage.name)})
            start = time.perf_counter()
            try:
                usage = run_one(stage, out)
            except Exception as error:
                record(log, stage, "failed", {"error": _one_line(error)})
                raise
            except BaseException:  # Ctrl-C, a signal: the stage resumes from its checkpoint on the next run
                record(log, stage, "stopped", {"seconds": round(time.perf_counter() - start, 2)})
                raise
            record(log, stage, "done", usage)


def resumes(folder: Path) -> bool:
    """Whether a stage's earlier try left work this one goes on from: a training checkpoint beside its folder, or a
    tune's finished grid points inside it (a merge writes nothing until it is done: a stopped merge starts over)."""
    return folder.exists() or checkpoint_dir(folder).exists()


@dataclass
class RayExecutor:
    """Each stage a Ray task asking for `cpus` cores, `gpus` GPUs and the memory its kind measured before, submitted
    once the stages it needs are finished. A stage whose worker dies is retried once and resumes from its
    checkpoint; a stage that fails fails its dependants only, and the study ends with one line per failed stage."""

    address: str | None = None  # an existing cluster (`ray start --head`), or None: a local one for this run
    cpus: float = 1.0
    gpus: float = 0.0

    def run(self, stages: list[Stage], out: Path, run_one: StageRunner, log: JsonlLog | None) -> None:
        ray = _ray()
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, configure_logging=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(self.cpus)))}})
        try:
            failed = self._schedule(ray, stages, out, run_one, log)
        finally:
            if started:
                ray.shutdown()
        if failed:
            lines = "; ".join(f"{name}: {why}" for name, why in failed.items())
            raise FusekitError(f"{len(failed)} of {len(stages)} stages failed ({lines})")

    def _schedule(self, ray, stages: list[Stage], out: Path, run_one: StageRunner,
                  log: JsonlLog | None) -> dict[str, str]:
        task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=1)(_in_worker)
        memory = memory_requests(stages, out / STAGES, ray.cluster_resources().get("memory", 0.0))
        planned = {s.name for s in stages}
        waiting, running, done, failed = list(stages), {}, set(), {}
        for stage in stages:
            record(log, stage, "queued")
        try:
            while waiting or running:
                for stage in list(waiting):
                    broken = next((n for n in stage.needs if n in failed), None)
                    if broken:
                        waiting.remove(stage)
                        failed[stage.name] = f"needs {broken}, which failed"
                        record(log, stage, "failed", {"error": failed[stage.name]})
                    elif all(n in done or n not in planned for n in stage.needs):
                        waiting.remove(stage)
                        options = {"memory": memory[stage.name]} if stage.name in memory else {}
                        running[task.options(**options).remote(run_one, stage, out, self.cpus)] = stage
                        record(log, stage, "running", {"resumes": resumes(out / stage.name)})
                if not running:
                    if waiting:  # every waiting stage needs one that never runs: a plan cannot do that
                        raise FusekitError(f"{waiting[0].name} waits for stages that never ran")
                    break
                self._status(waiting, running, done, failed)
                (ready,), _ = ray.wait(list(running), num_returns=1)
                stage = running.pop(ready)
                try:
                    usage = ray.get(ready)
                except Exception as error:  # the stage's own error, re-raised by Ray: recorded, the study goes on
                    failed[stage.name] = _one_line(error)
                    record(log, stage, "failed", {"error": failed[stage.name]})
                    console.print(f"[red]failed[/red] {stage.name}: {failed[stage.name]}")
                else:
                    done.add(stage.name)
                    record(log, stage, "done", usage)
                    console.print(f"done {stage.name} ({usage['seconds'] / 60:.1f} min)")
        except BaseException:  # the driver interrupted: what was running resumes on the next run
            for stage in running.values():
                record(log, stage, "stopped")
            raise
        self._status(waiting, running, done, failed)
        return failed

    @staticmethod
    def _status(waiting, running, done, failed) -> None:
        names = ", ".join(s.name for s in running.values())
        console.print(f"study: {len(waiting)} queued · {len(running)} running{f' ({names})' if names else ''} · "
                      f"{len(done)} done · {len(failed)} failed")


MEMORY_MARGIN = 1.25  # over a measured peak: the same stage of another seed need not peak at the same place


def memory_requests(stages: list[Stage], log: Path, available: float) -> dict[str, float]:
    """Bytes of memory each stage asks Ray for, so that no machine takes more stages than fit: its own last
    measured peak RSS (a rerun), else the largest its family (the same stage of another seed or subset) measured,
    with a margin and never above what the cluster has; nothing for a family not yet measured."""
    records = [r for r in (read_jsonl(log, "stage log") if log.is_file() else []) if "peak_rss_mb" in r]
    peaks = {r["stage"]: r["peak_rss_mb"] * 2**20 for r in records}
    by_family: dict[str, float] = {}
    for record in records:
        if "family" in record:
            by_family[record["family"]] = max(by_family.get(record["family"], 0.0), record["peak_rss_mb"] * 2**20)
    requests = {}
    for stage in stages:
        peak = peaks.get(stage.name) or by_family.get(stage.id.family)
        if peak:
            requests[stage.name] = min(MEMORY_MARGIN * peak, available) if available else MEMORY_MARGIN * peak
    return requests


def _in_worker(run_one: StageRunner, stage: Stage, out: Path, cpus: float) -> dict:
    """A stage on a Ray worker, with as many torch threads as cores it asked for."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    return run_one(stage, out)


def _ray():
    try:
        import ray
    except ImportError:
        raise FusekitError("--executor ray needs Ray: pip install -e \".[ray]\" (or pip install ray)") from None
    return ray


def _one_line(error: BaseException) -> str:
    """What went wrong, in one line: a FusekitError's message, else the exception's type and first line."""
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, FusekitError):
        return str(cause).splitlines()[0]
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".rstrip(": ")


EXECUTORS = ("local", "ray")


def make_executor(name: str, address: str | None, cpus: float, gpus: float | None) -> LocalExecutor | RayExecutor:
    """`--executor`: local, or ray with each stage's request (GPUs: one per stage when this machine has any)."""
    if name == "local":
        if address is not None:
            raise FusekitError("--address names a Ray cluster: use it with --executor ray")
        return LocalExecutor()
    if name != "ray":
        raise FusekitError(f"--executor {name!r}: expected one of {', '.join(EXECUTORS)}")
    if cpus <= 0 or (gpus is not None and gpus < 0):
        raise FusekitError("--stage-cpus must be > 0 and --stage-gpus ≥ 0")
    if gpus is None:
        import torch

        gpus = 1.0 if torch.cuda.is_available() else 0.0
    return RayExecutor(address or os.environ.get("RAY_ADDRESS"), cpus, gpus)
