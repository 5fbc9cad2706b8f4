"""A run folder: what `fusekit train` writes, and how `fusekit eval` rebuilds the model from it.

Its files are listed in fusekit.artifacts.layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from fusekit import __version__
from fusekit.artifacts.atomic import atomic_write_json, atomic_write_text, load_tensors, save_tensors
from fusekit.artifacts.checksums import ChecksummedFolder, reseal
from fusekit.artifacts.layout import CHECKSUMS, CONFIG, EVAL, HEAD, PEFT_CONFIG, PEFT_WEIGHTS, TASK_VECTOR
from fusekit.artifacts.reading import load_recipe, read_json
from fusekit.artifacts.task_vector import TaskVector, VectorHeader
from fusekit.config import TrainConfig, to_yaml
from fusekit.data.tasks import TaskSpec, get_task
from fusekit.errors import FusekitError
from fusekit.models.adapters import AdaptedModel, AdapterSpec, add_lora
from fusekit.models.base import BaseModel, load_base_model
from fusekit.models.heads import HeadSpec, TaskHead
from fusekit.models.linearize import LinearizedModel


def adapter_spec(cfg: TrainConfig) -> AdapterSpec:
    targets = tuple(cfg.target_modules) if cfg.target_modules else None
    linearize = (cfg.linearize or "module") if cfg.adapter == "l-lora" else cfg.linearize
    return AdapterSpec(cfg.adapter, cfg.rank, cfg.alpha, cfg.dropout, targets, cfg.init_seed, cfg.lora_init,
                       linearize)


# The one place an adapter kind is registered: its model class (forward, trainable weights, export).
ADAPTERS: dict[str, type[AdaptedModel]] = {"lora": AdaptedModel, "l-lora": LinearizedModel}


def build_adapted_model(base: BaseModel, spec: AdapterSpec, init: dict[str, torch.Tensor] | None = None,
                        nonlinear: bool = False, network_backward: str = "lean") -> AdaptedModel:
    """The model class of `spec.kind` (or the plain nonlinear LoRA forward when `nonlinear`) at φ0; a linearized
    one trains network scope the `network_backward` way (TrainConfig.network_backward)."""
    model = add_lora(base, spec, AdaptedModel if nonlinear else ADAPTERS[spec.kind], init)
    if isinstance(model, LinearizedModel):
        model.network_backward = network_backward
    return model


def write_peft_folder(folder: Path, model: AdaptedModel) -> None:
    """A plain-peft folder (peft's config + PEFT_WEIGHTS) of `model`'s nonlinear forward at φ."""
    config, tensors = model.peft_export()
    config.save_pretrained(str(folder))
    save_tensors(folder / PEFT_WEIGHTS, tensors, {"format": "pt"})


def vector_meta(model: AdaptedModel, base: BaseModel, tasks: list[TaskSpec]) -> dict:
    """What a task vector records of the adapter that made it: its setup, tasks, base model and, asked in text,
    each task's prompt and answer words."""
    meta = {**model.spec.meta(), "target_modules": model.target_modules(), "tasks": [t.name for t in tasks],
            "base_model": base.name, "base_fingerprint": base.fingerprint, "fusekit_version": __version__}
    if base.head.text:
        meta["verbalizers"] = {t.name: t.verbalizer_record() for t in tasks}
    return meta


def save_run(folder: Path, cfg: TrainConfig, base: BaseModel, model: AdaptedModel, task: TaskSpec) -> TaskVector:
    vector = TaskVector.from_weights(model.adapter_state(), model.init_state(), vector_meta(model, base, [task]),
                                     frozen=model.frozen_keys())
    vector.save(folder / TASK_VECTOR)
    save_tensors(folder / HEAD, model.head_state(), {"task": task.name, "family": task.family, **base.head.meta()})
    write_peft_folder(folder, model)
    atomic_write_text(folder / CONFIG, to_yaml(cfg))
    return vector


@dataclass
class Run:
    """A finished run; its task vector is read when first used (merging streams instead)."""

    folder: Path
    config: TrainConfig
    head: TaskHead
    head_task: str
    files: ChecksummedFolder = field(repr=False)

    @cached_property
    def vector(self) -> TaskVector:
        return TaskVector.load(self.files.path(TASK_VECTOR))

    def header(self) -> VectorHeader:
        return VectorHeader.read(self.files.path(TASK_VECTOR))


def load_run(folder: Path) -> Run:
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        if (folder / PEFT_CONFIG).is_file():
            raise FusekitError(f"{folder} is a plain PEFT adapter (no {CONFIG}: not trained or merged from fusekit "
                               "runs): load it with peft, PeftModel.from_pretrained(base_model, folder)")
        raise FusekitError(f"{folder} is not a fusekit run (expected {CONFIG} written by fusekit train)")
    files = ChecksummedFolder.open(folder)
    cfg = load_recipe(files.path(CONFIG), TrainConfig)
    cfg.subset_from = cfg.subset_from or "examples"  # recorded before the setting existed: drawn from all examples
    head, head_meta = load_tensors(files.path(HEAD))
    run = Run(folder, cfg, TaskHead(head, HeadSpec.from_meta(head_meta)), head_meta.get("task", cfg.task), files)
    check_records_agree(run)  # the task vector is hashed once here, not halfway through a job
    if (folder / EVAL).is_file():
        files.path(EVAL)  # an edited score record is refused before any command updates and re-seals it
    return run


def check_records_agree(run: Run) -> None:
    """config.yaml, the task vector's metadata and tensors, and the PEFT config describe one adapter: a folder
    whose records disagree (edited, or files mixed from two runs) is refused, as plain peft would misread it."""
    header, spec = run.header(), adapter_spec(run.config)
    meta, where = header.meta, f"{run.folder}: the records disagree:"
    for key, value in spec.meta().items():
        if key in ("kind", "rank", "alpha", "lora_init", "linearize") and meta.get(key) != value:
            raise FusekitError(f"{where} {CONFIG} says {key} {value!r}, {TASK_VECTOR} {meta.get(key)!r}")
    if spec.target_modules and set(spec.target_modules) != set(meta.get("target_modules") or ()):
        raise FusekitError(f"{where} {CONFIG} targets {list(spec.target_modules)}, {TASK_VECTOR} "
                           f"{meta.get('target_modules')}")
    check_verbalizers(run.folder, meta, [run.head_task])
    ranks = {shape[0] for key, shape in header.shapes.items() if ".lora_A." in key}
    if ranks - {spec.rank}:
        raise FusekitError(f"{where} rank {spec.rank} recorded, {TASK_VECTOR} holds rank "
                           f"{min(ranks - {spec.rank})} tensors")
    if (run.folder / PEFT_CONFIG).is_file():
        peft = read_json(run.files.path(PEFT_CONFIG), "PEFT config")
        folded = 2 if spec.lora_init == "nonzero" else 1  # the export folds B0·A0 in as rank r more
        if (peft.get("r"), peft.get("lora_alpha")) != (folded * spec.rank, folded * spec.alpha):
            raise FusekitError(f"{where} {PEFT_CONFIG} says r={peft.get('r')!r}, lora_alpha="
                               f"{peft.get('lora_alpha')!r} for a rank-{spec.rank} adapter of alpha {spec.alpha:g}")


def check_verbalizers(folder: Path, meta: dict, tasks: list[str]) -> None:
    """A text adapter answers `tasks` in the words it was trained on: refused once fusekit asks them otherwise, as
    its scores would be of words it never learned. Adapters that learn heads record no words, nor do those from
    before the words were recorded: fusekit has asked each task in the same words since it first asked in text (a
    test holds them fixed)."""
    recorded = meta.get("verbalizers") or {}
    for name in tasks:
        now = get_task(name).verbalizer_record()
        if name in recorded and recorded[name] != now:
            then = recorded[name].get("answers") if isinstance(recorded[name], dict) else recorded[name]
            raise FusekitError(f"{folder}: its {name} adapter was trained with answers {then}; fusekit now asks "
                               f"{name} {now['prompt']!r} answered by {now['answers']}: train it again")


def check_recorded_words(folder: Path) -> None:
    """check_verbalizers on the task vector a run, merged or joint folder holds, from its header alone."""
    meta = VectorHeader.read(folder / TASK_VECTOR).meta
    check_verbalizers(folder, meta, list(meta.get("tasks", [])))


def model_for_run(run: Run, task: TaskSpec, vector: TaskVector | None = None,
                  nonlinear: bool = False) -> tuple[BaseModel, AdaptedModel]:
    """Base model + adapter at φ = φ0 + τ (`vector`, default the run's own) with the run's head for `task`.

    `nonlinear` evaluates an L-LoRA vector with the plain LoRA forward at φ (what its PEFT folder holds).
    """
    if get_task(run.head_task).family != task.family and not run.head.spec.text:  # a text adapter has no head
        raise FusekitError(f"{run.folder} holds a head for {run.head_task}, not for {task.name}")
    return model_for_vector(run.config.model, vector or run.vector, run.head, task, str(run.folder), nonlinear)


def model_for_vector(model_name: str | None, vector: TaskVector, head: TaskHead, task: TaskSpec,
                     source: str, nonlinear: bool = False) -> tuple[BaseModel, AdaptedModel]:
    """Load the base model with the head's pooling and pair encoding, check it is the one `vector` was made on,
    and set adapter and head weights."""
    base = load_base_model(model_name, task, head.spec.pooling, head.spec.pair_encoding, head.spec.objective)
    if base.fingerprint != vector.meta.get("base_fingerprint"):
        raise FusekitError(
            f"{source}: task vector was made on a base model with fingerprint {vector.meta.get('base_fingerprint')}"
            f", but {base.name} has {base.fingerprint} (expected the same pretrained weights)"
        )
    spec = AdapterSpec.from_meta(vector.meta, f"{source}/{TASK_VECTOR}")
    model = build_adapted_model(base, spec, vector.init, nonlinear)
    model.load_adapter_state(vector.weights())
    model.load_head_state(head.weights)
    return base, model


def record_eval(folder: Path, task: str, metrics: dict) -> None:
    """Update the folder's EVAL file (run or merged folder) with this task's latest scores."""
    path = folder / EVAL
    if path.is_file() and (folder / CHECKSUMS).is_file():
        ChecksummedFolder.open(folder).path(EVAL)  # an edited record is refused, never re-sealed as fusekit's
    results = read_json(path, "scores") if path.is_file() else {}
    results[task] = metrics
    atomic_write_json(path, results)
    reseal(folder, EVAL)
