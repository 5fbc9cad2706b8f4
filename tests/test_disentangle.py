"""Weight disentanglement: the distance by hand, the grid's structure, and ξ against a brute-force computation."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from fusekit.artifacts.run_folder import load_run, model_for_vector
from fusekit.data.loading import EncodedSplit, load_split
from fusekit.data.tasks import get_task
from fusekit.study.disentangle import disentangle, distance
from tests.test_cli import invoke


def test_distance_by_hand():
    a = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    b = np.array([[0.0, 1.0], [0.0, 3.0], [5.0, 0.0], [1.0, 0.0]])
    assert distance(get_task("sst2"), a, b) == pytest.approx(2 / 4)  # two of four predictions differ
    assert distance(get_task("stsb"), np.array([[1.0], [4.0]]), np.array([[2.0], [1.0]])) == \
        pytest.approx((1 + 3) / 2 / 5)  # mean |Δ| over the 0–5 scale


@pytest.fixture(scope="module")
def pair(sst2_run, tiny_config, tmp_path_factory):
    from fusekit.training.train import train

    out = tmp_path_factory.mktemp("dis") / "stsb"
    train(replace(tiny_config, task="stsb", epochs=3, max_train=32, out=str(out)))
    return [load_run(sst2_run[0]), load_run(out)]


def brute_force_logits(run, vector, examples):
    """Logits in file order, the whole split in one batch, through a model built from the vector directly."""
    task = get_task(run.head_task)
    base, model = model_for_vector(run.config.model, vector, run.head, task, "brute force")
    data = EncodedSplit(load_split(task, "validation", run.config.data).capped(examples, 0), base.tokenizer,
                        run.config.max_length, base.head.pair_encoding)
    model.eval()
    with torch.no_grad():
        return model(data.collate([data[i] for i in range(len(data))])).numpy()


def test_xi_matches_brute_force_and_vanishes_where_the_other_vector_is_absent(pair):
    alphas = [0.0, 1.0, 2.0]
    result = disentangle(pair, alphas, 16, "factors", torch.device("cpu"))
    assert result.per_task.shape == (2, 3, 3)
    assert np.all(result.per_task[0, :, 0] == 0)  # α2 = 0: task 1's model is its own, whatever α1
    assert np.all(result.per_task[1, 0, :] == 0)  # α1 = 0: likewise for task 2
    first, second = (run.vector for run in pair)
    for a, b in [(1, 1), (2, 1), (1, 2)]:
        both = first * alphas[a] + second * alphas[b]
        expected = sum(distance(get_task(run.head_task), brute_force_logits(run, own * alpha, 16),
                                brute_force_logits(run, both, 16))
                       for run, own, alpha in zip(pair, (first, second), (alphas[a], alphas[b])))
        assert result.xi[a, b] == pytest.approx(expected)
    assert result.xi.max() > 0  # the vectors do interfere somewhere: the test can fail


def test_the_command_writes_the_grid_and_one_figure(pair, tmp_path):
    out = tmp_path / "dis"
    runs = [str(run.folder) for run in pair]
    result = invoke("disentangle", *runs, *runs, "--out", out, "--alphas", "0,1", "--examples", "8",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    records = json.loads((out / "disentanglement.json").read_text())
    assert len(records) == 2 and records[0]["xi"] == records[1]["xi"] and records[0]["tasks"] == ["sst2", "stsb"]
    assert (out / "disentanglement.png").stat().st_size > 0
    assert invoke("disentangle", runs[0], "--out", tmp_path / "x").exit_code == 1  # not a pair


def test_a_studys_pairs_side_by_side_per_variant(tmp_path):
    from fusekit.errors import FusekitError
    from fusekit.study.plan import study_pairs

    (tmp_path / ".fusekit.json").write_text('{"kind": "study"}')
    (tmp_path / "recipe.yaml").write_text("tasks: [sst2, rte, cola]\nadapters: {lora: {}, l-lora: {}}\n")
    for task in ("sst2", "rte", "cola"):
        for variant in ("lora", "l-lora"):
            (tmp_path / "train" / f"{task}-{variant}").mkdir(parents=True)
    folders, columns = study_pairs(tmp_path, "all")
    assert columns == 2 and len(folders) == 3 * 2 * 2  # 3 pairs × 2 variants × 2 runs
    assert [f.name for f in folders[:4]] == ["sst2-lora", "rte-lora", "sst2-l-lora", "rte-l-lora"]
    assert [f.name for f in study_pairs(tmp_path, "rte+cola")[0]] == ["rte-lora", "cola-lora", "rte-l-lora",
                                                                      "cola-l-lora"]
    (tmp_path / "recipe.yaml").write_text("tasks: [sst2, rte, cola, mrpc]\nadapters: {lora: {}, l-lora: {}}\n")
    with pytest.raises(FusekitError, match="mrpc-lora is missing"):
        study_pairs(tmp_path, "sst2+mrpc")
    for pairs in ("sst2", "sst2+sst2", "sst2+qqp", "sst2+rte+cola"):
        with pytest.raises(FusekitError, match=r"expected two different tasks of sst2, rte, cola, mrpc joined by"):
            study_pairs(tmp_path, pairs)


def test_the_figure_titles_each_heatmap_with_its_kind_runs_and_mean_error():
    import numpy as np

    from fusekit.study.disentangle import Disentanglement
    from fusekit.study.plots import disentanglement_figure

    per_task = np.zeros((2, 2, 2))
    per_task[0, 1, 1], per_task[1, 0, 1] = 0.4, 0.2  # ξ = [[0, 0.2], [0, 0.4]]: mean 0.15
    result = Disentanglement(("sst2", "mrpc"), [0.0, 1.0], per_task, "factors", 8)
    figure = disentanglement_figure([("lora · sst2-lora + mrpc-lora", result), ("l-lora · a + b", result)])
    first, second = figure.axes[:2]
    assert first.get_title() == "lora\nsst2-lora + mrpc-lora\nmean ξ 0.150"
    assert second.get_title().startswith("l-lora\na + b") and second.get_ylabel() == "α2 (mrpc)"
