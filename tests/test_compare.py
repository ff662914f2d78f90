"""tlhelpers.compare: a paired interval over seeds, calibrated (A/A) and with power (a true gap is found)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tlhelpers import compare


def test_spread_statistics_and_format():
    s = compare.spread([0.70, 0.72, 0.74])
    assert s.n == 3 and s.mean == pytest.approx(0.72) and s.std == pytest.approx(0.02)
    assert (s.low, s.high) == (0.70, 0.74)
    assert s.format() == "72.0% ± 2.0 (70.0-74.0)"
    assert compare.spread([3.0]).std == 0.0


def test_paired_interval_is_the_t_interval_of_the_per_seed_differences():
    rng = np.random.default_rng(0)
    a = (rng.random((4, 200)) < 0.8).astype(float)
    b = (rng.random((4, 200)) < 0.7).astype(float)
    result = compare.paired(a, b)
    d = (a - b).mean(axis=1)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert result.mean == pytest.approx(d.mean())
    assert (result.low, result.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert result.seeds == 4 and result.items == 200
    assert str(result) == f"{result.interval()}, 4 seeds x 200 test images"
    assert result.interval() == f"{d.mean() * 100:+.1f} points [{result.low * 100:+.1f}, {result.high * 100:+.1f}]"


def test_beat_only_when_the_interval_lies_above_zero():
    a = np.array([[1, 1, 1, 0], [1, 1, 0, 1], [1, 1, 1, 1]], dtype=float)
    b = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 1]], dtype=float)
    win = compare.paired(a, b)
    assert win.verdict == "beat" and win.low > 0
    assert compare.verdict("A", a, "B", b).startswith("A beat B: +")
    assert compare.paired(b, a).verdict == "lost"
    assert compare.verdict("B", b, "A", a).startswith("A beat B: B - A = -")
    # a higher mean alone is not enough: one seed of three goes the other way
    mixed = compare.paired(np.array([[1, 1], [1, 1], [0, 1]], float), np.array([[0, 1], [1, 0], [1, 1]], float))
    assert mixed.mean > 0 and mixed.verdict == "not separated"
    sentence = compare.verdict("A", [[1, 1], [1, 1], [0, 1]], "B", [[0, 1], [1, 0], [1, 1]])
    assert sentence.startswith("A and B not separated: A - B = ") and "would have been separated" in sentence


def test_detectable_gap_grows_with_the_spread_and_shrinks_with_seeds():
    rng = np.random.default_rng(1)
    noisy = compare.paired(rng.normal(0, 0.05, (3, 1)), np.zeros((3, 1)))
    calm = compare.paired(rng.normal(0, 0.01, (3, 1)), np.zeros((3, 1)))
    assert noisy.detectable > calm.detectable > 0
    d = rng.normal(0, 0.02, 10)
    assert compare.paired(d[:, None], 0 * d[:, None]).detectable < compare.paired(d[:3, None], 0 * d[:3, None]).detectable
    assert calm.could_detect().startswith("a gap of about ") and calm.could_detect().endswith("points would have been separated")


def test_lower_is_better_for_timings_and_one_seed():
    fast, slow = np.array([1.0, 1.1, 1.05, 1.0]), np.array([2.0, 2.2, 2.1, 2.05])
    timing = compare.paired(fast, slow, higher_is_better=False, percent=False, unit="calls")
    assert timing.verdict == "beat" and str(timing).endswith(", 4 paired calls")
    one = compare.paired([[1.0, 1.0]], [[0.0, 0.0]])
    assert one.verdict == "one seed" and np.isnan(one.low)
    assert compare.verdict("A", [[1.0]], "B", [[0.0]]).startswith("one seed cannot decide between A and B")


def test_against_a_baseline_counts_its_comparisons_and_widens_each_interval():
    rng = np.random.default_rng(2)
    scores = {name: (rng.random((5, 300)) < p).astype(float) for name, p in
              (("probe", 0.7), ("fine-tune", 0.8), ("scratch", 0.3))}
    results = compare.against("probe", scores)
    assert list(results) == ["fine-tune", "scratch"]                  # every contender with the baseline, not every pair
    single = compare.paired(scores["fine-tune"], scores["probe"])
    assert results["fine-tune"].confidence == pytest.approx(0.975)    # Bonferroni over 2
    assert results["fine-tune"].high - results["fine-tune"].low > single.high - single.low
    text = compare.report("probe", scores)
    assert "fine-tune beat probe" in text and "probe beat scratch" in text
    assert text.endswith("2 comparisons with the baseline, probe: each interval at 97.5% (Bonferroni), "
                         "so the 2 verdicts together hold at 95%")
    with pytest.raises(ValueError, match="baseline 'nope' is not among"):
        compare.against("nope", scores)


@pytest.mark.parametrize("a, b, message", [
    (np.ones((3, 10)), np.ones((3, 9)), "must be paired"),
    (np.ones((2, 2, 2)), np.ones((2, 2, 2)), "shaped \\(seeds, test images\\)"),
    ([[1.0, float("nan")]], [[1.0, 0.0]], "NaN"),
    (np.ones((0, 3)), np.ones((0, 3)), "shaped"),
])
def test_bad_scores_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        compare.paired(a, b)


@pytest.mark.parametrize("values", [[], [float("nan")], ["a"]])
def test_bad_values_are_refused(values):
    with pytest.raises(ValueError, match="Spread|numbers"):
        compare.spread(values) if values != ["a"] else compare.Spread(("a",))


# --------------------------------------------------------------------------- simulations

def simulate(rng, seeds: int, images: int, gap: float, base: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Two methods scored on the same seeds' test images, with correlated errors.

    Each seed draws its own split (an easy or hard test set shifts both methods: sd 3 points) and
    its own choice noise (each method's accuracy on that seed moves by sd 0.5 points on its own);
    each image has a difficulty both methods share (latent correlation 0.9, as two models fine-tuned from the same weights), so their errors are
    correlated. ``gap`` is the true mean difference A - B.
    """
    rho = 0.9
    a = np.empty((seeds, images))
    b = np.empty((seeds, images))
    for s in range(seeds):
        level = base + rng.normal(0, 0.03)
        pa = np.clip(level + gap / 2 + rng.normal(0, 0.005), 0.01, 0.99)
        pb = np.clip(level - gap / 2 + rng.normal(0, 0.005), 0.01, 0.99)
        shared = rng.normal(size=images)
        za = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(size=images)
        zb = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(size=images)
        a[s] = za < stats.norm.ppf(pa)
        b[s] = zb < stats.norm.ppf(pb)
    return a, b


def ranges_do_not_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """The course's old rule: every seed of A above every seed of B."""
    return a.mean(axis=1).min() > b.mean(axis=1).max()


@pytest.mark.parametrize("seeds", [3, 5])
def test_two_identical_methods_are_beat_about_5_percent_of_the_time(seeds):
    rng = np.random.default_rng(seeds)
    trials = 1500
    beats = sum(compare.paired(*simulate(rng, seeds, 500, gap=0.0)).verdict == "beat" for _ in range(trials))
    # one-sided false alarms of a two-sided 95% interval: 2.5%; "beat" either way: 5%
    either = beats * 2 / trials
    assert 0.025 <= either <= 0.08, f"A/A: a 'beat' in {either:.1%} of trials at {seeds} seeds"


def test_a_true_3_point_gap_is_found_as_often_as_a_paired_t_interval_finds_it():
    rng = np.random.default_rng(7)
    trials = 600
    found = old = 0
    for _ in range(trials):
        a, b = simulate(rng, 5, 500, gap=0.03)
        found += compare.paired(a, b).verdict == "beat"
        old += ranges_do_not_overlap(a, b)
        d = (a - b).mean(axis=1)
        assert (stats.ttest_1samp(d, 0).pvalue < 0.05 and d.mean() > 0) == (compare.paired(a, b).verdict == "beat")
    power, old_power = found / trials, old / trials
    assert power >= 0.75, f"a true +3 points detected only {power:.0%} of the time"
    assert old_power < 0.5 * power, f"the paired rule ({power:.0%}) should clearly beat the range rule ({old_power:.0%})"
