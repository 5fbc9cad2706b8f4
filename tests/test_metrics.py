"""Each official metric against numbers computed by hand from its formula."""

import math

import pytest

from fusekit.data.tasks import get_task
from fusekit.evaluation.metrics import compute_metrics

Y = [1, 1, 1, 0, 0, 0, 1, 0]
P = [1, 1, 0, 0, 0, 1, 1, 0]  # TP=3 FN=1 FP=1 TN=3


def test_accuracy_and_f1():
    m = compute_metrics(get_task("mrpc"), Y, P)
    assert m["accuracy"] == pytest.approx(6 / 8)
    precision, recall = 3 / 4, 3 / 4
    assert m["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert m["score"] == pytest.approx((m["f1"] + m["accuracy"]) / 2)


def test_matthews():
    tp, tn, fp, fn = 3, 3, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute_metrics(get_task("cola"), Y, P)["matthews_correlation"] == pytest.approx(expected)  # 0.5


def test_matthews_of_constant_predictions_is_zero():
    assert compute_metrics(get_task("cola"), Y, [1] * 8)["matthews_correlation"] == 0.0


def test_pearson_and_spearman():
    y, p = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0]
    my, mp = 2.5, 2.75
    cov = sum((a - my) * (b - mp) for a, b in zip(y, p))
    pearson = cov / math.sqrt(sum((a - my) ** 2 for a in y) * sum((b - mp) ** 2 for b in p))
    ranks_p = [1, 3, 2, 4]  # ranks of p; y is already ranked 1..4
    spearman = 1 - 6 * sum((i + 1 - r) ** 2 for i, r in enumerate(ranks_p)) / (4 * (16 - 1))  # = 0.8
    m = compute_metrics(get_task("stsb"), y, p)
    assert m["pearson"] == pytest.approx(pearson) and m["spearman"] == pytest.approx(spearman)
    assert m["score"] == pytest.approx((pearson + spearman) / 2)


@pytest.mark.parametrize("name, metrics", [("sst2", ["accuracy"]), ("qqp", ["f1", "accuracy"]),
                                           ("mnli", ["accuracy"]), ("stsb", ["pearson", "spearman"]),
                                           ("cola", ["matthews_correlation"]), ("rte", ["accuracy"])])
def test_official_metric_per_task(name, metrics):
    assert list(get_task(name).metrics) == metrics


def test_normalized_score_is_undefined_without_own_skill():
    from fusekit.evaluation.metrics import mean_defined, normalized_score

    assert normalized_score(0.4, 0.8) == 0.5
    assert normalized_score(0.9, 0.75) == 1.2
    assert normalized_score(0.1, 0.0) is None  # MCC 0: the own adapter answers one class
    assert normalized_score(0.1, -0.05) is None
    assert mean_defined([0.5, None, 1.0]) == 0.75
    assert mean_defined([None]) is None


def test_bootstrap_standard_error_of_a_selection_score_by_hand():
    import numpy as np

    from fusekit.evaluation.metrics import bootstrap_standard_error

    sst2 = get_task("sst2")
    labels = np.array([0, 1] * 200)
    own = labels.copy()  # own accuracy 1: the normalized score is the merge's accuracy
    merged = labels.copy()
    merged[:100] = 1 - merged[:100]  # accuracy p = 0.75 on n = 400
    error = bootstrap_standard_error([sst2], [labels], [own], [merged], resamples=2000)
    assert error == pytest.approx(math.sqrt(0.75 * 0.25 / 400), rel=0.1)  # the binomial standard error 0.0217
    # Two tasks, both like this, resampled independently: the average's error is 1/√2 of one task's.
    both = bootstrap_standard_error([sst2, sst2], [labels] * 2, [own] * 2, [merged] * 2, resamples=2000)
    assert both == pytest.approx(math.sqrt(0.75 * 0.25 / 400 / 2), rel=0.1)
    assert bootstrap_standard_error([get_task("cola")], [labels], [1 - labels], [merged]) is None  # no own skill
