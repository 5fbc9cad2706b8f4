import random

import pytest

from fusekit.data.loading import EncodedSplit, Split, load_split
from fusekit.data.phrases import unseen_sentences, whole_sentences
from fusekit.data.tasks import TASKS, get_task, parse_tasks
from fusekit.errors import FusekitError


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_loads_train_and_validation(glue_dir, name):
    task = get_task(name)
    for split in ("train", "validation"):
        data = load_split(task, split, str(glue_dir))
        assert len(data) > 0
        assert all(len(t) == len(task.hub_text_fields) for t in data.texts)
        if task.is_regression:
            assert all(isinstance(y, float) for y in data.labels)
        else:
            assert set(data.labels) <= set(range(task.num_labels))


def test_layout_details(glue_dir):
    mrpc = load_split(get_task("mrpc"), "train", str(glue_dir))  # header behind a byte-order mark
    cola = load_split(get_task("cola"), "train", str(glue_dir))  # no header: label col 1, sentence col 3
    sst2 = load_split(get_task("sst2"), "train", str(glue_dir))
    assert mrpc.labels == sst2.labels and cola.labels == sst2.labels
    assert cola.texts[0] == sst2.texts[0]
    mm = load_split(get_task("mnli-mm"), "validation", str(glue_dir))
    assert set(mm.labels) == {0, 1, 2} and get_task("mnli-mm").family == "mnli"


def test_quotes_are_kept_verbatim(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text('sentence\tlabel\na "quoted\tword\n" b\t1\n')
    with pytest.raises(FusekitError, match=r"train.tsv:2: label 'word'"):
        load_split(get_task("sst2"), "train", str(tmp_path))
    (tmp_path / "SST-2" / "train.tsv").write_text('sentence\tlabel\nsays "hi\t1\n')
    assert load_split(get_task("sst2"), "train", str(tmp_path)).texts == [('says "hi',)]


def test_cap_is_a_seeded_subset(glue_dir):
    full = load_split(get_task("sst2"), "train", str(glue_dir))
    a, b, c = full.capped(10, seed=1), full.capped(10, seed=1), full.capped(10, seed=2)
    assert len(a) == 10 and a.texts == b.texts and a.texts != c.texts
    assert set(a.texts) <= set(full.texts)
    assert full.capped(None, 0) is full and full.capped(10**6, 0) is full


def test_hub_loading_maps_fields(monkeypatch):
    import datasets

    calls = {}

    def fake_load(name, config, split):
        calls.update(name=name, config=config, split=split)
        return {"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [2, 0]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = load_split(get_task("mnli-mm"), "validation", "nyu-mll/glue")
    assert calls == {"name": "nyu-mll/glue", "config": "mnli", "split": "validation_mismatched"}
    assert data.texts == [("p1", "h1"), ("p2", "h2")] and data.labels == [2, 0]


def test_hub_failure_is_one_line(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FusekitError, match="pass --data with a local GLUE folder"):
        load_split(get_task("rte"), "train", "nyu-mll/glue")


def test_encoding_pads_per_batch(glue_dir, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    split = load_split(get_task("rte"), "validation", str(glue_dir))
    encoded = EncodedSplit(split, tokenizer, max_length=8)
    batch = encoded.collate([encoded[0], encoded[1]])
    assert batch["input_ids"].shape == (2, 8)  # two sentences of 6 words, truncated
    assert batch["labels"].tolist() == split.labels[:2]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "nowhere", "data folder .*nowhere does not exist"),
        (lambda d: (d / "RTE").mkdir() or d, "RTE/train.tsv not found"),
    ],
)
def test_missing_data(tmp_path, make, message):
    with pytest.raises(FusekitError, match=message):
        load_split(get_task("rte"), "train", str(make(tmp_path)))


def test_malformed_row_names_file_and_line(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly\n")
    with pytest.raises(FusekitError, match=r"RTE/train.tsv:3: malformed row with 2 tab-separated fields"):
        load_split(get_task("rte"), "train", str(tmp_path))


def test_unknown_task():
    with pytest.raises(FusekitError, match="unknown task 'sst3': expected one of cola, sst2"):
        get_task("sst3")
    assert [t.name for t in parse_tasks("SST-2, rte,STS-B,rte")] == ["sst2", "rte", "stsb"]


def test_phrase_tree_tasks_hold_out_whole_sentences_no_trained_phrase_is_part_of():
    """SST-2 trains on phrases of parsed sentences: a held-out example is a whole sentence (no word span of another
    phrase) none of whose word spans was trained on, each sentence once."""
    phrases = ["a charming film", "charming film", "charming", "a dull plot", "dull plot", "dull", "an odd tale",
               "odd", "a dull plot", "plot twists", "film"]
    assert whole_sentences(tuple(phrases)) == {"a charming film", "a dull plot", "an odd tale", "plot twists"}
    assert unseen_sentences(phrases, {2}) == [3, 6, 9]  # "charming" was trained: its sentence is not held out
    assert unseen_sentences(phrases, {2, 7}) == [3, 9]  # "odd" too
    assert unseen_sentences(phrases, {3}) == [0, 6, 9]  # the trained sentence's duplicate is not held out either
    assert unseen_sentences(phrases, {10}) == [3, 6, 9]  # "film" alone is a word span of "a charming film"
    split = Split(get_task("sst2"), [(p,) for p in phrases], [1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1])
    held = split.held_out(9, 0)  # 9 random phrases trained: the two left out decide what remains
    trained = set(random.Random(0).sample(range(11), 9))  # the indices `capped(9, 0)` trains on
    assert [t[0] for t in held.texts] == [phrases[i] for i in unseen_sentences(phrases, trained)]
    assert split.why_none_held_out(None) == "it trained on every sst2 training example"
    assert split.why_none_held_out(10) == "every whole sst2 sentence shares a phrase with its training subset"
    rte = Split(get_task("rte"), [(p, p) for p in phrases], [0] * 11)
    assert len(rte.held_out(9, 0)) == 2  # other tasks: every example the subset left out


def test_a_sentences_subset_draws_whole_sentences_first_and_holds_out_the_rest():
    """`subset_from: sentences` trains on whole sentences first (SST-2's dev scores whole sentences), then random
    phrases once every sentence is drawn, and uncapped on everything; what it leaves out is held out whole, and
    tasks whose examples are sentences already draw as before."""
    phrases = ["a charming film", "charming film", "charming", "a dull plot", "dull plot", "dull", "an odd tale",
               "odd", "a dull plot", "plot twists", "film"]
    split = Split(get_task("sst2"), [(p,) for p in phrases], [1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1])
    pool = [0, 3, 6, 9]  # each whole sentence once, in file order ("a dull plot" again at 8 is not drawn twice)
    drawn = sorted(random.Random(0).sample(pool, 2))
    assert split.training_subset(2, 0, "sentences").texts == [(phrases[i],) for i in drawn]
    assert split.training_subset(None, 0, "sentences").texts == split.texts  # uncapped: the whole split
    rest = [i for i in range(11) if i not in pool]
    more = sorted(pool + random.Random(0).sample(rest, 2))
    assert split.training_subset(6, 0, "sentences").texts == [(phrases[i],) for i in more]
    assert split.training_subset(2, 0, "examples").texts == split.capped(2, 0).texts
    assert split.training_subset(2, 0).texts == split.capped(2, 0).texts  # runs recorded before the setting
    held = split.held_out(2, 0, "sentences")
    assert [t[0] for t in held.texts] == [phrases[i] for i in pool if i not in drawn]
    assert len(split.held_out(4, 0, "sentences")) == 0
    assert split.why_none_held_out(4, "sentences") == "it trained on every whole sst2 training sentence"
    rte = Split(get_task("rte"), [(p, p) for p in phrases], [0] * 11)
    assert rte.training_subset(9, 0, "sentences").texts == rte.capped(9, 0).texts
    assert len(rte.held_out(9, 0, "sentences")) == 2
