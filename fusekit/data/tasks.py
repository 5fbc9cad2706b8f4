"""The GLUE task registry: where each task's text lives, its labels, its official metric, and how a generative
model is asked it (a prompt template and one answer word per label, the verbalizer).

Label order follows the hub's `glue` dataset so that local TSVs and hub data give the same label ids.

Prompts follow the FLAN templates that the L-LoRA paper and FusionBench finetune Flan-T5 with, shortened (each
prompt token costs a forward on every example): the sentences, then one question, then `Answer:`. Answers are
words a tokenizer keeps whole (` yes`, ` negative`), so a label is decided at one position; STS-B's answer is its
similarity rounded to a whole number, ` 0` … ` 5` (fusekit.data.text reads the expected value from the digits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    prompt: str = ""  # text objective: the template, {0} and {1} the example's sentences
    answers: tuple[str, ...] = ()  # text objective: the answer per label id (regression: per whole number)
    phrase_tree: bool = False  # training examples are every phrase of parsed sentences: held out whole (SST-2)
    # model family (head, text) → training settings chosen for this task by `fusekit tune` on held-out training
    # data (recipes/defaults-*.yaml); what fusekit.models.defaults fills a run's unset settings with
    defaults: dict[str, dict[str, object]] = field(default_factory=dict, hash=False, compare=False)

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

    def verbalizer_record(self) -> dict[str, object]:
        """How a text adapter of this task is asked and answers: recorded with it, so that an adapter trained on
        other words is refused rather than scored on words it never learned."""
        return {"prompt": self.prompt, "answers": list(self.answers)}

    @property
    def answer_values(self) -> tuple[float, ...] | None:
        """Regression: the number each answer writes (STS-B: 0 … 5); None for classification."""
        return tuple(float(a) for a in self.answers) if self.is_regression else None


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_MNLI = ("entailment", "neutral", "contradiction")
_MNLI_TRAIN = ("train", "train.tsv")
_NO_YES = (" no", " yes")
_YES_NO = (" yes", " no")
_PAIR = "Sentence 1: {0}\nSentence 2: {1}\n"
_NLI = "Premise: {0}\nHypothesis: {1}\nDoes the premise entail the hypothesis? Answer:"

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("cola", "CoLA", (3,), 1, _BINARY, ("matthews_correlation",), "cola", ("sentence",),
                 has_header=False, prompt="Sentence: {0}\nIs this sentence grammatically acceptable? Answer:",
                 answers=_NO_YES, defaults={"head": {"lr": 5e-4, "head_lr": 2e-2, "max_length": 64},
                                            "text": {"lr": 3e-3, "max_length": 64}}),
        TaskSpec("sst2", "SST-2", ("sentence",), "label", _BINARY, ("accuracy",), "sst2", ("sentence",),
                 prompt="Review: {0}\nSentiment:", answers=(" negative", " positive"), phrase_tree=True,
                 defaults={"head": {"lr": 1e-3, "head_lr": 5e-3, "max_length": 64, "subset_from": "sentences",
                                    "head_init": "fresh"},
                           "text": {"lr": 1e-3, "max_length": 96}, "text:l-lora": {"lr": 1e-2}}),
        TaskSpec("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", _BINARY, ("f1", "accuracy"), "mrpc",
                 ("sentence1", "sentence2"), prompt=_PAIR + "Do both sentences mean the same thing? Answer:",
                 answers=_NO_YES, defaults={"head": {"lr": 1e-3, "head_lr": 5e-3, "pair_encoding": "cross",
                                                     "max_length": 128},
                                            "text": {"lr": 3e-3, "max_length": 160}, "text:l-lora": {"lr": 3e-3}}),
        TaskSpec("qqp", "QQP", ("question1", "question2"), "is_duplicate", _BINARY, ("f1", "accuracy"), "qqp",
                 ("question1", "question2"),
                 prompt="Question 1: {0}\nQuestion 2: {1}\nDo both questions ask the same thing? Answer:",
                 answers=_NO_YES),
        TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), "stsb",
                 ("sentence1", "sentence2"),
                 prompt=_PAIR + "How similar are the two sentences, from 0 (unrelated) to 5 (same meaning)? Answer:",
                 answers=(" 0", " 1", " 2", " 3", " 4", " 5"),
                 defaults={"head": {"lr": 5e-4, "head_lr": 2e-2, "pair_encoding": "bi", "max_length": 160},
                           "text": {"lr": 3e-3, "max_length": 160}, "text:l-lora": {"lr": 3e-3}}),
        TaskSpec("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", _MNLI, ("accuracy",), "mnli",
                 ("premise", "hypothesis"), files=(_MNLI_TRAIN, ("validation", "dev_matched.tsv")),
                 head_family="mnli", prompt=_NLI, answers=(" yes", " maybe", " no")),
        TaskSpec("mnli-mm", "MNLI", ("sentence1", "sentence2"), "gold_label", _MNLI, ("accuracy",), "mnli",
                 ("premise", "hypothesis"), files=(_MNLI_TRAIN, ("validation", "dev_mismatched.tsv")),
                 head_family="mnli", prompt=_NLI, answers=(" yes", " maybe", " no")),
        TaskSpec("qnli", "QNLI", ("question", "sentence"), "label", _NLI2, ("accuracy",), "qnli",
                 ("question", "sentence"),
                 prompt="Question: {0}\nSentence: {1}\nDoes the sentence answer the question? Answer:",
                 answers=_YES_NO),
        TaskSpec("rte", "RTE", ("sentence1", "sentence2"), "label", _NLI2, ("accuracy",), "rte",
                 ("sentence1", "sentence2"), prompt=_NLI, answers=_YES_NO,
                 defaults={"head": {"max_length": 320}, "text": {"lr": 1e-3, "max_length": 320},
                           "text:l-lora": {"lr": 3e-3}}),
        TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",), "wnli",
                 ("sentence1", "sentence2"), prompt=_NLI, answers=_NO_YES,
                 defaults={"head": {"max_length": 128}, "text": {"max_length": 128}}),
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
