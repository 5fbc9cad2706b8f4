"""The GLUE task registry: where each task's text lives, its labels and its official metric.

Label order follows the hub's `glue` dataset so that local TSVs and hub data give the same label ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusekit.errors import FusekitError

DEFAULT_HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    folder: str  # sub-folder of a GLUE-layout directory
    text_columns: tuple[str | int, ...]  # header names, or column indices for header-less files
    label_column: str | int
    labels: tuple[str, ...] | None  # label strings as written in the TSVs, in id order; None = regression
    metrics: tuple[str, ...]  # official GLUE metrics, see fusekit.evaluation.metrics
    hub_config: str
    hub_text_fields: tuple[str, ...]
    files: tuple[tuple[str, str], ...] = (("train", "train.tsv"), ("validation", "dev.tsv"))
    has_header: bool = True
    head_family: str = ""  # tasks with one family share a head (MNLI matched / mismatched)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def family(self) -> str:
        return self.head_family or self.name

    def file_for(self, split: str) -> str:
        return dict(self.files)[split]


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_MNLI = ("entailment", "neutral", "contradiction")
_MNLI_TRAIN = ("train", "train.tsv")

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("cola", "CoLA", (3,), 1, _BINARY, ("matthews_correlation",), "cola", ("sentence",),
                 has_header=False),
        TaskSpec("sst2", "SST-2", ("sentence",), "label", _BINARY, ("accuracy",), "sst2", ("sentence",)),
        TaskSpec("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", _BINARY, ("f1", "accuracy"), "mrpc",
                 ("sentence1", "sentence2")),
        TaskSpec("qqp", "QQP", ("question1", "question2"), "is_duplicate", _BINARY, ("f1", "accuracy"), "qqp",
                 ("question1", "question2")),
        TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), "stsb",
                 ("sentence1", "sentence2")),
        TaskSpec("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", _MNLI, ("accuracy",), "mnli",
                 ("premise", "hypothesis"), files=(_MNLI_TRAIN, ("validation", "dev_matched.tsv")),
                 head_family="mnli"),
        TaskSpec("mnli-mm", "MNLI", ("sentence1", "sentence2"), "gold_label", _MNLI, ("accuracy",), "mnli",
                 ("premise", "hypothesis"), files=(_MNLI_TRAIN, ("validation", "dev_mismatched.tsv")),
                 head_family="mnli"),
        TaskSpec("qnli", "QNLI", ("question", "sentence"), "label", _NLI2, ("accuracy",), "qnli",
                 ("question", "sentence")),
        TaskSpec("rte", "RTE", ("sentence1", "sentence2"), "label", _NLI2, ("accuracy",), "rte",
                 ("sentence1", "sentence2")),
        TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",), "wnli",
                 ("sentence1", "sentence2")),
    ]
}

# Hub validation split names differ from "validation" for MNLI.
HUB_SPLITS = {("mnli", "validation"): "validation_matched", ("mnli-mm", "validation"): "validation_mismatched"}


def get_task(name: str) -> TaskSpec:
    key = name.lower().replace("_", "-").replace("sst-2", "sst2").replace("sts-b", "stsb")
    if key not in TASKS:
        raise FusekitError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[key]


def parse_tasks(names: str | list[str]) -> list[TaskSpec]:
    """Parse 'sst2,rte' or ['sst2', 'rte'] into task specs, in order, without duplicates."""
    items = names.split(",") if isinstance(names, str) else names
    specs = [get_task(n.strip()) for n in items if n.strip()]
    if not specs:
        raise FusekitError("no task given: expected a comma-separated list such as sst2,rte")
    return list(dict.fromkeys(specs))
