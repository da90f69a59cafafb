"""Accuracy-matrix metrics against values computed by hand."""
import pytest

import torch

from plasticity_lab.metrics import avg_accuracy, bwt, forgetting, fwt, online_accuracy

# R[i][j]: accuracy on task j after training task i (3 tasks).
R = [
    [0.9, None, None],
    [0.7, 0.8, None],
    [0.5, 0.6, 0.95],
]


def test_average_accuracy_is_mean_of_last_row():
    assert avg_accuracy(R) == pytest.approx((0.5 + 0.6 + 0.95) / 3)


def test_bwt_compares_final_row_with_diagonal():
    # ((0.5 - 0.9) + (0.6 - 0.8)) / 2
    assert bwt(R) == pytest.approx(-0.3)


def test_forgetting_uses_best_earlier_accuracy():
    # task 0: max(0.9, 0.7) - 0.5 = 0.4 ; task 1: max(0.8) - 0.6 = 0.2
    assert forgetting(R) == pytest.approx(0.3)
    peaked = [[0.5, None], [0.9, 0.4], [0.6, 0.8]]
    # task 0 best earlier is 0.9 (after task 1), not the diagonal 0.5: 0.9-0.6=0.3; task 1: 0.4-0.8=-0.4
    assert forgetting(peaked) == pytest.approx((0.3 - 0.4) / 2)


def test_fwt_against_untrained_baseline():
    full = [[0.9, 0.2, 0.1], [0.7, 0.8, 0.3], [0.5, 0.6, 0.95]]
    # ((0.2 - 0.1) + (0.3 - 0.1)) / 2
    assert fwt(full, [0.1, 0.1, 0.1]) == pytest.approx(0.15)


def test_unevaluated_entries_are_skipped_and_empty_gives_none():
    partial = [[0.9, None], [None, 0.8]]
    assert bwt(partial) is None and forgetting(partial) is None
    assert avg_accuracy(partial) == pytest.approx(0.8)
    assert avg_accuracy([]) is None


def test_online_accuracy_bins_pre_update_flags():
    flags = torch.tensor([1, 0, 1, 1, 0, 0, 1])
    assert online_accuracy(flags, 3) == pytest.approx([2 / 3, 1 / 3, 1.0])


def test_results_keep_entries_and_score_like_the_dense_definitions():
    """The run's sparse bookkeeping gives the same ACC/BWT/forgetting as the
    dense-matrix functions, for windowed and strided evaluation."""
    import random

    from plasticity_lab.lab.results import Results
    from plasticity_lab.metrics import avg_accuracy, bwt, forgetting

    rng = random.Random(0)
    for window, every in ((None, 1), (3, 1), (4, 2), (1, 3)):
        r = Results()
        for i in range(12):
            evals = {}
            if (i + 1) % every == 0 or i == 11:
                first = 0 if window is None else max(0, i - window + 1)
                evals = {j: round(rng.random(), 3) for j in range(first, i + 1)}
            r.add_task(0.5, 1.0, evals)
            R = r.dense()
            while R and all(v is None for v in R[-1]):
                R = R[:-1]
            expected = {"avg_accuracy": avg_accuracy(R), "bwt": bwt(R), "forgetting": forgetting(R)}
            got = r.scores()
            for key, value in expected.items():
                assert (got[key] is None and value is None) or abs(got[key] - value) < 1e-12, (window, every, i, key)
        assert len(r.acc_entries) == sum(1 for row in r.dense() for v in row if v is not None)
