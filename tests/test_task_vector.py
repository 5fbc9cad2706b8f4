import pytest
import torch

from fusekit.artifacts.task_vector import TaskVector
from fusekit.errors import FusekitError

META = {"base_fingerprint": "abc", "kind": "lora", "rank": 2, "alpha": 4.0, "target_modules": ["query"],
        "linearize": None, "lora_init": "default"}


def vector(task: str, scale: float, **meta) -> TaskVector:
    init = {"a": torch.ones(2, 3), "b": torch.zeros(3, 2)}
    tuned = {"a": torch.ones(2, 3) * (1 + scale), "b": torch.full((3, 2), scale)}
    return TaskVector.from_weights(tuned, init, {**META, "tasks": [task], **meta})


def test_delta_and_weights():
    tv = vector("sst2", 0.5)
    assert torch.equal(tv.delta["a"], torch.full((2, 3), 0.5))
    assert torch.equal(tv.weights()["a"], torch.full((2, 3), 1.5))


def test_arithmetic():
    a, b = vector("sst2", 1.0), vector("rte", 2.0)
    s = a + b
    assert torch.equal(s.delta["b"], torch.full((3, 2), 3.0)) and s.tasks == ["sst2", "rte"]
    assert torch.equal((0.5 * s).delta["a"], torch.full((2, 3), 1.5))
    assert torch.equal((b - a).delta["a"], torch.ones(2, 3))
    assert torch.allclose((s * 0.3).weights()["a"], torch.ones(2, 3) + 0.9)  # φ0 + λ Σ τ
    assert torch.equal(s.init["a"], a.init["a"])


def test_round_trip(tmp_path):
    tv = vector("sst2", 0.25)
    tv.save(tmp_path / "tv.safetensors")
    back = TaskVector.load(tmp_path / "tv.safetensors")
    assert back.meta == tv.meta and all(torch.equal(back.delta[k], tv.delta[k]) for k in tv.delta)
    assert all(torch.equal(back.init[k], tv.init[k]) for k in tv.init)


def test_frozen_keys_are_not_stored():
    tv = TaskVector.from_weights({"a": torch.ones(1), "b": torch.ones(1)}, {"a": torch.zeros(1), "b": torch.zeros(1)},
                                 dict(META), frozen=("a",))
    assert set(tv.delta) == {"b"} and torch.equal(tv.weights()["a"], torch.zeros(1))


@pytest.mark.parametrize("field, value", [("base_fingerprint", "other"), ("rank", 4), ("kind", "l-lora"),
                                          ("target_modules", ["value"])])
def test_incompatible_vectors_are_refused(field, value):
    with pytest.raises(FusekitError, match=f"differ in {field}"):
        vector("sst2", 1.0) + vector("rte", 1.0, **{field: value})


def test_shape_mismatch_is_refused():
    a = vector("sst2", 1.0)
    b = TaskVector({"a": torch.ones(2, 2), "b": torch.ones(3, 2)}, a.init, a.meta)
    with pytest.raises(FusekitError, match=r"a has shape \(2, 3\) vs \(2, 2\)"):
        a + b


def test_loading_bad_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FusekitError, match="not a readable safetensors file"):
        TaskVector.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.ones(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(FusekitError, match="not a fusekit task vector"):
        TaskVector.load(tmp_path / "plain.safetensors")
    with pytest.raises(FusekitError, match="not found"):
        TaskVector.load(tmp_path / "missing.safetensors")
