"""Resumable training and checksummed artifacts: killed runs resume bit for bit, bad files are named."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from fusekit.artifacts.atomic import load_tensors
from fusekit.artifacts.checkpoint import Checkpoints
from fusekit.artifacts.layout import checkpoint_dir
from fusekit.artifacts.merged_folder import load_merged
from fusekit.artifacts.run_folder import load_run
from fusekit.config import JointConfig
from fusekit.errors import FusekitError
from fusekit.merging.config import MergeConfig
from fusekit.merging.merge import run_merge
from fusekit.models.defaults import resolve_defaults
from fusekit.training.balancers import BALANCERS, make_balancer
from fusekit.training.joint import train_joint
from fusekit.training.train import train

ROOT = Path(__file__).resolve().parent.parent
TIMING = ("seconds", "train_seconds", "examples_per_second")


class Interrupted(Exception):
    """Stands for a crash right after a checkpoint was written."""


def crash_after_checkpoint(monkeypatch, step: int, job: Callable[[], object]) -> None:
    """Run `job`, killing it right after it saves the checkpoint of `step`."""
    save = Checkpoints.save

    def save_then_crash(self, state):
        save(self, state)
        if state["step"] == step:
            raise Interrupted

    monkeypatch.setattr(Checkpoints, "save", save_then_crash)
    with pytest.raises(Interrupted):
        job()
    monkeypatch.undo()


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)[0]


def metric_lines(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_same_outputs(a: Path, b: Path, files: list[str]) -> None:
    """Equal tensors (exactly), eval results and metric lines (timing aside)."""
    for name in files:
        x, y = tensors(a / name), tensors(b / name)
        assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x), name
    assert json.loads((a / "eval.json").read_text()) == json.loads((b / "eval.json").read_text())
    assert metric_lines(a) == metric_lines(b)


RUN_FILES = ["task_vector.safetensors", "head.safetensors", "adapter_model.safetensors"]


@pytest.fixture(scope="module")
def cfg(tiny_config):
    """4 steps per epoch, 3 epochs: checkpoints every 2 steps fall mid-epoch and at epoch ends."""
    return replace(tiny_config, task="rte", epochs=3, max_train=32, checkpoint_every=2)


@pytest.fixture(scope="module")
def reference(cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    train(replace(cfg, out=str(out), checkpoint_every=0))
    return out


def test_sigterm_stops_a_command_like_ctrl_c(cfg, tmp_path):
    """A scheduler's SIGTERM mid-run: one line, exit code 143, no staged folder or lock left beside the output."""
    out = tmp_path / "run"
    args = ["train", "--task", "rte", "--model", cfg.model, "--data", cfg.data, "--rank", "4", "--epochs", "3",
            "--batch-size", "8", "--max-length", "32", "--max-train", "32", "--device", "cpu", "--checkpoint-every",
            "2", "--out", str(out)]
    hang_at_step_2 = (
        "import sys, time\n"
        "from fusekit.artifacts.checkpoint import Checkpoints\n"
        "save = Checkpoints.save\n"
        "def save_then_hang(self, state):\n"
        "    save(self, state)\n"
        "    time.sleep(600)\n"
        "Checkpoints.save = save_then_hang\n"
        "from cli.main import main\n"
        "main()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", hang_at_step_2, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (checkpoint_dir(out) / "manifest.json").is_file():
            assert child.poll() is None and time.monotonic() < deadline, "the child ended before its checkpoint"
            time.sleep(0.05)
        assert list(tmp_path.glob("run.tmp-*")) and (tmp_path / "run.lock").exists()  # mid-run
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 128 + signal.SIGTERM
    assert [line for line in stderr.splitlines() if line.startswith("error") or "interrupted" in line] == [
        "interrupted: nothing was written"]
    assert not out.exists() and not list(tmp_path.glob("run.tmp-*")) and not (tmp_path / "run.lock").exists()


def test_sigkilled_train_resumes_bit_for_bit(cfg, reference, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--task", "rte", "--model", cfg.model, "--data", cfg.data, "--rank", "4", "--alpha", "8",
            "--lr", str(cfg.lr), "--head-lr", str(cfg.head_lr), "--target-modules", "query,value", "--epochs", "3",
            "--batch-size", "8", "--max-length", "32", "--max-train", "32",
            "--device", "cpu", "--checkpoint-every", "2", "--out", str(out)]
    hang_after_step_6 = (  # the child stops after its third checkpoint (mid-epoch 2) until it is killed
        "import sys, time\n"
        "from fusekit.artifacts.checkpoint import Checkpoints\n"
        "save = Checkpoints.save\n"
        "def save_then_hang(self, state):\n"
        "    save(self, state)\n"
        "    if state['step'] == 6:\n"
        "        time.sleep(600)\n"
        "Checkpoints.save = save_then_hang\n"
        "from cli.main import app\n"
        "app(sys.argv[1:])\n"
    )
    child = subprocess.Popen([sys.executable, "-c", hang_after_step_6, *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = checkpoint_dir(out) / "manifest.json"
    try:
        deadline = time.monotonic() + 300
        while not (manifest.is_file() and json.loads(manifest.read_text())["step"] == 6):
            assert child.poll() is None and time.monotonic() < deadline, "the child ended before its checkpoint"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL and not out.exists()
    assert sorted(p.name for p in checkpoint_dir(out).iterdir()) == ["manifest.json", "step-000006.pt"]

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resuming from step 6" in result.stderr
    assert_same_outputs(reference, out, RUN_FILES)
    assert not checkpoint_dir(out).exists()


def test_crash_at_an_epoch_end_resumes_with_its_eval(cfg, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    # the last step of epoch 1, before its evaluation
    crash_after_checkpoint(monkeypatch, 4, lambda: train(replace(cfg, out=str(out))))
    result = train(replace(cfg, out=str(out), checkpoint_every=5))  # checkpoint_every does not change the run
    assert result.steps == 12
    assert_same_outputs(reference, out, RUN_FILES)


def test_joint_coba_resumes_bit_for_bit(tiny_model, glue_dir, tmp_path, monkeypatch):
    cfg = JointConfig(tasks="sst2,stsb", balancer="coba", coba_warmup=1, coba_window=4, model=str(tiny_model),
                      data=str(glue_dir), rank=4, alpha=8.0, lr=2e-2, epochs=1, batch_size=4, max_length=32,
                      max_train=24, validation_examples=8, device="cpu", checkpoint_every=2)  # 6 steps
    files = ["task_vector.safetensors", "heads/sst2.safetensors", "heads/stsb.safetensors"]
    train_joint(replace(cfg, out=str(tmp_path / "whole")))
    # past the warm-up: CoBa's histories must come back
    crash_after_checkpoint(monkeypatch, 4, lambda: train_joint(replace(cfg, out=str(tmp_path / "resumed"))))
    train_joint(replace(cfg, out=str(tmp_path / "resumed")))
    assert_same_outputs(tmp_path / "whole", tmp_path / "resumed", files)
    weights = [r["weights"] for r in metric_lines(tmp_path / "resumed") if r.get("step", 0) > 4 and "weights" in r]
    assert any(abs(w - 1.0) > 1e-3 for row in weights for w in row)  # the resumed steps used CoBa's weights


def test_joint_famo_resumes_bit_for_bit(tiny_model, glue_dir, tmp_path, monkeypatch):
    """FAMO's logits and their Adam moments come back, and the post-step forward replays alike."""
    cfg = JointConfig(tasks="sst2,stsb", balancer="famo", model=str(tiny_model), data=str(glue_dir), rank=4,
                      alpha=8.0, lr=2e-2, epochs=1, batch_size=4, max_length=32, max_train=24, device="cpu",
                      checkpoint_every=2)  # 6 steps
    files = ["task_vector.safetensors", "heads/sst2.safetensors", "heads/stsb.safetensors"]
    train_joint(replace(cfg, out=str(tmp_path / "whole")))
    crash_after_checkpoint(monkeypatch, 4, lambda: train_joint(replace(cfg, out=str(tmp_path / "resumed"))))
    train_joint(replace(cfg, out=str(tmp_path / "resumed")))
    assert_same_outputs(tmp_path / "whole", tmp_path / "resumed", files)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_state_round_trips(name):
    """A balancer restored from its state (through a weights-only file) takes the next step exactly alike."""
    from fusekit.config import JointConfig
    from fusekit.training.balancers import RunFacts

    cfg = JointConfig(coba_interval=1, coba_warmup=1, coba_window=4)
    run = RunFacts(total_steps=20, priors=[0.7, 1.0, 0.4])
    scales = torch.tensor([[1.0, 2.0], [-3.0, 0.5], [0.2, -1.0]])

    def step(balancer, shared, number):
        losses = ((scales * shared).sum(dim=1) - number) ** 2
        grads = torch.stack([torch.autograd.grad(loss, shared, retain_graph=True)[0] for loss in losses])
        shared.grad, weights = balancer.balance(losses, grads)
        if balancer.validation_interval:
            balancer.observe(number, losses.detach())
        if balancer.needs_loss_after_step:  # FAMO: the same losses after an SGD step
            with torch.no_grad():
                balancer.after_step(((scales * (shared - 0.05 * shared.grad)).sum(dim=1) - number) ** 2)
        return weights, shared.grad.clone()

    first, shared = make_balancer(name, 3, cfg, run), torch.nn.Parameter(torch.tensor([0.5, -0.5]))
    for number in range(1, 4):
        step(first, shared, number)
        shared.grad = None
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = make_balancer(name, 3, cfg, run)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    copy = torch.nn.Parameter(shared.detach().clone())
    for number in (4, 5):  # step 5 sees what step 4 learned from the restored state (FAMO: ξ's Adam moments)
        (w1, g1), (w2, g2) = step(first, shared, number), step(second, copy, number)
        assert torch.equal(w1, w2) and torch.equal(g1, g2)
        shared.grad = copy.grad = None


def test_corrupt_checkpoint_is_named(cfg, tmp_path, monkeypatch):
    out = tmp_path / "run"
    crash_after_checkpoint(monkeypatch, 4, lambda: train(replace(cfg, out=str(out))))
    path = checkpoint_dir(out) / "step-000004.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FusekitError, match=r"step-000004\.pt is corrupt \(sha256 mismatch\): delete .*run\.checkpoint"):
        train(replace(cfg, out=str(out)))
    path.write_bytes(bytes(data[: len(data) // 3]))  # truncated
    with pytest.raises(FusekitError, match=r"step-000004\.pt is corrupt"):
        train(replace(cfg, out=str(out)))
    train(replace(cfg, out=str(out)), overwrite=True)  # --overwrite discards it and starts again
    assert (out / "config.yaml").is_file() and not checkpoint_dir(out).exists()


@pytest.mark.parametrize("target", ["torch.save", "atomic_write_json"])
def test_failed_save_keeps_the_previous_checkpoint(cfg, reference, tmp_path, monkeypatch, target):
    import fusekit.artifacts.checkpoint as module

    out = tmp_path / "run"
    owner, name = (torch, "save") if target == "torch.save" else (module, "atomic_write_json")
    real, calls = getattr(owner, name), []

    def disk_full(obj, where, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint (step 4): half written, then the disk is full
            if target == "torch.save":
                where.write(b"PK\x03\x04 partial")
            raise OSError(28, "No space left on device")
        return real(obj, where, *args, **kwargs)

    monkeypatch.setattr(owner, name, disk_full)
    with pytest.raises(FusekitError, match=r"could not write checkpoint .*step-000004\.pt .*No space left"):
        train(replace(cfg, out=str(out)))
    monkeypatch.undo()
    resolved = resolve_defaults(replace(cfg, out=str(out))).config  # what the run recorded
    assert Checkpoints(out, resolved, overwrite=False).load()["step"] == 2
    assert not any(p.name.endswith(".tmp") for p in checkpoint_dir(out).iterdir())
    train(replace(cfg, out=str(out)))
    assert_same_outputs(reference, out, RUN_FILES)


def test_checkpoint_of_another_config_is_refused(cfg, tmp_path, monkeypatch):
    out = tmp_path / "run"
    crash_after_checkpoint(monkeypatch, 2, lambda: train(replace(cfg, out=str(out))))
    with pytest.raises(FusekitError, match=r"run\.checkpoint was written by a different config \(lr, seed differ\)"):
        train(replace(cfg, out=str(out), lr=1e-3, seed=1))
    assert (checkpoint_dir(out) / "manifest.json").is_file()


def test_corrupt_run_files_are_named(reference, tmp_path, capsys):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(reference, folder)
    vector = folder / "task_vector.safetensors"
    intact = vector.read_bytes()
    every_file = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"checksums.json"}
    record = json.loads((folder / "checksums.json").read_text())
    assert record.keys() == every_file >= {*RUN_FILES, "config.yaml", "adapter_config.json", ".fusekit.json"}
    vector.write_bytes(intact[: len(intact) - 100])  # truncated
    with pytest.raises(FusekitError, match=r"task_vector\.safetensors is corrupt or was edited \(sha256 mismatch"):
        load_run(folder)
    vector.write_bytes(intact)
    head = folder / "head.safetensors"
    head.write_bytes(head.read_bytes()[:-1] + b"!")
    with pytest.raises(FusekitError, match=r"head\.safetensors is corrupt"):
        load_run(folder)
    del record["head.safetensors"]  # deleting an entry does not hide the edit
    (folder / "checksums.json").write_text(json.dumps(record))
    with pytest.raises(FusekitError, match=r"head\.safetensors has no entry in .*checksums\.json"):
        load_run(folder)
    (folder / "checksums.json").unlink()  # nor does deleting the whole record
    with pytest.raises(FusekitError, match="has lost its checksums.json"):
        load_run(folder)
    shutil.copy(reference / "head.safetensors", head)
    (folder / ".fusekit.json").unlink()  # a folder from before markers and checksums loads unchecked, with a warning
    assert load_run(folder).vector.meta["tasks"] == ["rte"]
    assert "records no checksums" in capsys.readouterr().err


def test_corrupt_merged_files_are_named(reference, tmp_path):
    out = tmp_path / "merged"
    run_merge(MergeConfig(lam=0.5, val_examples=16, device="cpu"), [reference], out)
    record = json.loads((out / "checksums.json").read_text())
    assert {"manifest.json", "task_vector.safetensors", "heads/rte.safetensors",
            "peft/rte/adapter_model.safetensors", "peft/rte/adapter_config.json"} <= set(record)
    head = out / "heads" / "rte.safetensors"
    intact = head.read_bytes()
    head.write_bytes(intact[:-8])
    with pytest.raises(FusekitError, match=r"heads/rte\.safetensors is corrupt or was edited \(sha256 mismatch"):
        load_merged(out)
    manifest = json.loads((out / "manifest.json").read_text())  # a folder as fusekit wrote it before checksums.json:
    manifest["checksums"] = {name: record[name] for name in ("task_vector.safetensors", "heads/rte.safetensors")}
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "checksums.json").unlink()
    (out / ".fusekit.json").unlink()
    with pytest.raises(FusekitError, match=r"heads/rte\.safetensors is corrupt or was edited .*manifest\.json"):
        load_merged(out)
    head.write_bytes(intact)
    assert load_merged(out)[0]["inputs"][0]["task"] == "rte"


def test_a_killed_runs_temp_folder_is_cleared_by_the_next_write(tmp_path):
    from fusekit.artifacts.staging import staged_dir

    stale = tmp_path / "run.tmp-abc123"
    stale.mkdir()
    (stale / "task_vector.safetensors").write_bytes(b"half")
    with staged_dir(tmp_path / "run", overwrite=False, kind="run") as stage:
        (stage / "config.yaml").write_text("task: sst2\n")
    assert not stale.exists() and (tmp_path / "run" / "config.yaml").is_file()
