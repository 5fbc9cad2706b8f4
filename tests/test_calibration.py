"""Answer calibration: offsets checked against the closed form on constant scores, the optimality condition
(mean calibrated distribution = label frequencies) on random ones, a text regression's expected value by hand, and
the out-of-fold calibration a search scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fusekit.data.tasks import get_task
from fusekit.data.text import split_targets
from fusekit.errors import FusekitError
from fusekit.evaluation.calibration import (
    answer_count,
    apply_offsets,
    check_offsets,
    fit_offsets,
    held_out_calibration,
    out_of_fold,
)

SST2, STSB = get_task("sst2"), get_task("stsb")


def test_on_constant_scores_the_offsets_are_the_log_label_frequencies():
    """softmax(0 + b) = label frequencies: b1 − b0 = ln(3/1) for three positives and one negative."""
    offsets = fit_offsets(SST2, np.zeros((4, 2)), np.array([1, 1, 1, 0]))
    assert offsets[0] == 0 and offsets[1] == pytest.approx(math.log(3), abs=1e-9)


def test_at_the_fitted_offsets_the_mean_calibrated_distribution_is_the_label_frequencies():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(200, 2)) - [0, 1.5], (rng.random(200) < 0.7).astype(int)  # a biased model
    offsets = fit_offsets(SST2, scores, labels)
    mean = torch.tensor(scores + offsets).softmax(dim=-1).mean(dim=0)
    assert mean[1].item() == pytest.approx(labels.mean(), abs=1e-8)
    calibrated = apply_offsets(SST2, scores, offsets)
    assert np.allclose(calibrated, scores + offsets)


def test_a_text_regression_is_calibrated_over_its_numbers_and_its_expected_value_recomputed():
    grid = torch.tensor(STSB.answer_values)
    assert split_targets(torch.tensor([3.4, 5.0, -1.0]), grid).tolist()[0] == pytest.approx([0, 0, 0, 0.6, 0.4, 0])
    rng = np.random.default_rng(1)
    labels = rng.uniform(0, 5, 300)
    scores = np.concatenate([np.zeros((300, 1)), rng.normal(size=(300, 6))], axis=1)  # column 0: expected value
    offsets = fit_offsets(STSB, scores, labels)
    mean = torch.tensor(scores[:, 1:] + offsets).softmax(dim=-1).mean(dim=0)
    assert torch.allclose(mean, split_targets(torch.tensor(labels), grid).double().mean(dim=0), atol=1e-8)
    row = np.array([[9.0, *np.log([0.5, 0.5, 1e-12, 1e-12, 1e-12, 1e-12])]])  # half on 0, half on 1
    assert apply_offsets(STSB, row, [0, 0, 0, 0, 0, 0])[0, 0] == pytest.approx(0.5)
    shifted = apply_offsets(STSB, row, [0, math.log(3), 0, 0, 0, 0])  # 1 now three times as likely
    assert shifted[0, 0] == pytest.approx(0.75)


def test_a_regression_head_has_nothing_to_calibrate_and_wrong_offsets_are_named():
    assert fit_offsets(STSB, np.zeros((5, 1)), np.arange(5.0)) is None
    assert (answer_count(STSB, text=True), answer_count(STSB, text=False), answer_count(SST2, text=False)) == (6, 0, 2)
    assert check_offsets([0, 1.5], 2, "m.json") == [0.0, 1.5]
    for bad in ([], [0, float("nan")], "0,1", [0, 1e9], [True, 0], [0, 1, 2]):
        with pytest.raises(FusekitError, match="m.json: calibration.sst2: expected 2 finite numbers"):
            check_offsets(bad, 2, "m.json: calibration.sst2")


def test_a_search_scores_each_half_with_offsets_fitted_on_the_other():
    labels = np.array([1, 1, 1, 0, 1, 0, 0, 0])  # even-numbered: three of four positive; odd-numbered: one of four
    calibrated = out_of_fold(SST2, np.zeros((8, 2)), labels)
    assert np.allclose(calibrated[0::2], [0, -math.log(3)])  # offsets from the odd half: ln(1/3)
    assert np.allclose(calibrated[1::2], [0, math.log(3)])  # from the even half: ln 3
    assert np.array_equal(out_of_fold(STSB, np.ones((8, 1)), np.arange(8.0)), np.ones((8, 1)))  # a regression head


def test_a_task_is_calibrated_only_where_its_held_out_examples_score_better_calibrated():
    rng = np.random.default_rng(2)
    x = rng.normal(size=100)
    labels = (x > 0).astype(int)
    shifted = np.stack([np.zeros(100), x - 3], axis=1)  # ranks perfectly, answers 0 nearly always
    scored, offsets = held_out_calibration(SST2, shifted, labels)
    assert offsets is not None and offsets[1] > 2 and (scored.argmax(axis=1) == labels).mean() > 0.9
    exact = np.stack([np.zeros(100), x], axis=1)  # already right: nothing to gain
    scored, offsets = held_out_calibration(SST2, exact, labels)
    assert offsets is None and scored is exact
