"""driving/stats.py: paired differences, two-way bootstrap, win/tie/loss, mCE and mRR."""

import numpy as np
import pytest

from driving import stats as S


def _naive(d, n_boot, seed):
    """The definition, one grid at a time: seeds and roads resampled, mean of the grid."""
    rng = np.random.default_rng(seed)
    s, r = d.shape
    si = rng.integers(0, s, size=(n_boot, s))
    ri = rng.integers(0, r, size=(n_boot, r))
    return np.array([np.nanmean(d[np.ix_(a, b)]) for a, b in zip(si, ri)])


def test_bootstrap_matches_the_definition_and_is_seeded():
    d = np.array([[1.0, 2.0, 0.5], [3.0, 4.0, -1.0], [0.0, np.nan, 2.0]])
    got = S.bootstrap_means(d, 500, seed=3)
    assert np.allclose(got, _naive(d, 500, 3), equal_nan=True)
    assert np.array_equal(S.bootstrap_means(d, 500, seed=3), got)  # same seed, same draws
    assert not np.array_equal(S.bootstrap_means(d, 500, seed=4), got)


def test_bootstrap_interval_of_a_hand_computed_grid():
    # d[i, j] = 1 + 2i + j: a draw's mean is 1 + 2·A + B, A and B the means of two fair
    # draws from {0, 1}: P(A = 0) = P(B = 0) = 1/4, so P(mean = 1) = P(mean = 4) = 1/16 > 2.5 %:
    # the 95 % percentile interval is exactly [1, 4]; the distribution's mean is 2.5.
    d = np.array([[1.0, 2.0], [3.0, 4.0]])
    means = S.bootstrap_means(d, 8000, seed=0)
    assert set(np.unique(means)) <= {1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0}
    assert np.mean(means) == pytest.approx(2.5, abs=0.03)
    assert np.mean(means == 1.0) == pytest.approx(1 / 16, abs=0.01)
    res = S.paired({(0, 0): 1.0, (0, 1): 2.0, (1, 0): 3.0, (1, 1): 4.0},
                   {(0, 0): 0.0, (0, 1): 0.0, (1, 0): 0.0, (1, 1): 0.0}, [0, 1], [0, 1],
                   higher_is_better=True, n_boot=8000)
    assert res.mean_diff == 2.5 and res.ci95 == (1.0, 4.0)
    assert (res.wins, res.ties, res.losses, res.cells) == (4, 0, 0, 4)
    assert res.verdict == "better"


def test_paired_uses_common_cells_and_names_ties():
    pol = {(0, 0): 2.0, (0, 1): 1.0, (1, 0): 0.0, (1, 1): 5.0}
    ref = {(0, 0): 1.0, (0, 1): 1.0, (1, 0): 3.0}  # (1, 1) missing: not counted
    r = S.paired(pol, ref, [0, 1], [0, 1], policy="x", reference="ncp-ltc",
                 higher_is_better=False, tol=0.0, n_boot=2000)
    assert r.cells == 3
    assert r.mean_diff == pytest.approx((1.0 + 0.0 - 3.0) / 3)
    # lower is better: +1 is a loss, 0 a tie, −3 a win
    assert (r.wins, r.ties, r.losses) == (1, 1, 1)
    assert r.tie_cells == [(0, 1)]
    lo, hi = r.ci95
    assert lo <= r.mean_diff <= hi and lo >= -3.0 and hi <= 1.0
    assert r.verdict == "no difference shown"
    d = r.to_dict()
    assert d["tie_cells"] == [[0, 1]] and d["reference"] == "ncp-ltc"


def test_win_tie_loss_with_a_tolerance():
    w, t, loss, tied = S.win_tie_loss(np.array([[0.004, -0.2], [0.3, np.nan]]),
                                      higher_is_better=False, tol=0.01, keys=["a", "b", "c", "d"])
    assert (w, t, loss, tied) == (1, 1, 1, ["a"])


def test_all_ties_give_a_zero_interval_and_no_verdict_of_difference():
    cells = {(s, r): 1.0 for s in range(2) for r in range(3)}
    res = S.paired(cells, cells, [0, 1], [0, 1, 2], higher_is_better=True)
    assert res.mean_diff == 0.0 and res.ci95 == (0.0, 0.0)
    assert (res.wins, res.ties, res.losses) == (0, 6, 0)
    assert res.verdict == "no difference shown"
    empty = S.paired({}, cells, [0], [0], higher_is_better=True)
    assert empty.cells == 0 and empty.ci95 is None and empty.verdict == "n/a"


def test_corruption_error_and_mce_by_hand():
    errors = {
        "cnn": {"noise": {3: 10.0, 4: 30.0}, "fog": {3: 0.0}, "rain": {3: 20.0}},
        "ncp-ltc": {"noise": {3: 5.0, 4: 15.0}, "fog": {3: 2.0}, "rain": {3: 30.0}},
    }
    out = S.corruption_errors(errors, "cnn")
    assert out["cnn"]["ce"] == {"noise": 1.0, "rain": 1.0} and out["cnn"]["mce"] == 1.0
    assert out["ncp-ltc"]["ce"] == {"noise": 0.5, "rain": 1.5}
    assert out["ncp-ltc"]["mce"] == pytest.approx(1.0)
    assert out["ncp-ltc"]["undefined"] == ["fog"]  # the baseline made no error under fog


def test_resilience_rate_and_mrr_by_hand():
    scores = {"cnn": {"noise": {3: 50.0, 4: 30.0}, "fog": {3: 90.0}},
              "lstm": {"noise": {3: 80.0, 4: 80.0}, "fog": {3: 40.0}}}
    out = S.resilience_rates(scores, {"cnn": 100.0, "lstm": 80.0})
    assert out["cnn"]["rr"] == {"noise": 0.4, "fog": 0.9}
    assert out["cnn"]["mrr"] == pytest.approx(0.65)
    assert out["lstm"]["rr"] == {"noise": 1.0, "fog": 0.5}
    assert S.resilience_rates(scores, {"cnn": 0.0})["cnn"]["mrr"] is None


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="seeds, roads"):
        S.bootstrap_means(np.zeros(3))
    with pytest.raises(ValueError, match="n_boot"):
        S.bootstrap_means(np.zeros((2, 2)), n_boot=0)
