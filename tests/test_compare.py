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
    b = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=float)    # A - B per seed: +0.5, +0.75, +0.5
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


def test_identical_predictions_on_every_seed_claim_no_precision():
    """Both methods scored alike on every image of every seed: not separated, and no detectable gap
    is claimed (a collapsed t-interval would say 0.0, as if any gap at all would have shown)."""
    rng = np.random.default_rng(3)
    a = (rng.random((3, 500)) < 0.8).astype(float)
    same = compare.paired(a, a.copy())
    assert same.verdict == "not separated" and np.isnan(same.detectable)   # was 0.0: "any gap would show"
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0) and same.spread_from == "none"
    assert str(same) == "+0.0 points [+0.0, +0.0: no spread seen], 3 seeds x 500 test images"
    assert "cannot say what gap would have been separated" in same.could_detect()
    sentence = same.sentence("A", "B")
    assert sentence.startswith("A and B not separated: A - B = +0.0 points") and "cannot say what gap" in sentence
    assert "a gap of about 0.0" not in sentence


def _same_net_gain(rng, seeds: int, images: int, gained: int, lost: int) -> tuple[np.ndarray, np.ndarray]:
    """Every seed: A right on `gained` images B got wrong and wrong on `lost` B got right (other images alike)."""
    a = (rng.random((seeds, images)) < 0.7).astype(float)
    b = a.copy()
    for s in range(seeds):
        rows = rng.permutation(images)
        a[s, rows[:gained]], b[s, rows[:gained]] = 1.0, 0.0
        a[s, rows[gained:gained + lost]], b[s, rows[gained:gained + lost]] = 0.0, 1.0
    return a, b


def test_the_same_difference_on_every_seed_falls_back_to_the_spread_of_the_test_images():
    """Every seed +2 points (6 images gained, 2 lost of 200): the seeds show no spread, so the interval
    comes from the per-image differences pooled over seeds, and says so; it is not a point at +2.0."""
    rng = np.random.default_rng(4)
    a, b = _same_net_gain(rng, 3, 200, gained=6, lost=2)
    result = compare.paired(a, b)
    assert result.per_seed == pytest.approx((0.02, 0.02, 0.02))
    assert result.low < 0.02 < result.high                            # was [+2.0, +2.0], a "beat"
    assert result.spread_from == "test images"
    d = a - b
    se = np.sqrt(d.var(axis=1, ddof=1).mean() / d.size)
    assert (result.low, result.high) == pytest.approx((0.02 - stats.t.ppf(0.975, 2) * se,
                                                       0.02 + stats.t.ppf(0.975, 2) * se))
    assert result.low < 0.02 < result.high and result.detectable > 0.02
    assert result.verdict == "not separated"                         # 8 images moved of 600 decide nothing
    assert "spread of the test images only" in str(result) and "at least" in result.could_detect()
    # no net difference on any seed, yet images moved both ways: not separated, with a real detectable gap
    even = compare.paired(*_same_net_gain(rng, 5, 300, gained=4, lost=4))
    assert even.mean == 0 and even.verdict == "not separated" and even.spread_from == "test images"
    assert even.low < 0 < even.high and 0 < even.detectable < 0.1
    # many images gained on every seed: still a "beat", on the images' spread
    big = compare.paired(*_same_net_gain(rng, 5, 500, gained=60, lost=10))
    assert big.verdict == "beat" and big.spread_from == "test images" and big.low > 0


def test_one_value_per_seed_that_never_varies_needs_a_sign_test():
    """Timings A - B = -1.0 on every repeat: no spread to build an interval from; a verdict only when all
    repeats on one side could not happen by chance (2 x 0.5^n below alpha: 6 repeats or more)."""
    few = compare.paired([1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0], higher_is_better=False, percent=False,
                         unit="calls")
    assert few.verdict == "not separated" and np.isnan(few.detectable)      # was "beat" on [-1, -1]
    assert few.spread_from == "none"
    assert str(few) == "-1 [-1, -1: no spread seen], 4 paired calls"
    assert "every repeat gave the same difference" in few.could_detect()
    many = compare.paired(np.arange(7.0), np.arange(7.0) + 1, higher_is_better=False, percent=False)
    assert many.verdict == "beat" and compare.paired(np.arange(7.0) + 1, np.arange(7.0), higher_is_better=False,
                                                     percent=False).verdict == "lost"
    # Bonferroni over 4 comparisons: alpha 0.0125 needs 2 x 0.5^n < 0.0125, 8 repeats
    assert compare.paired(np.arange(7.0) + 1, np.arange(7.0), comparisons=4).verdict == "not separated"
    assert compare.paired(np.arange(8.0) + 1, np.arange(8.0), comparisons=4).verdict == "beat"


def test_the_unit_names_what_each_seed_scored():
    rng = np.random.default_rng(5)
    a, b = (rng.random((3, 1200)) < 0.8).astype(float), (rng.random((3, 1200)) < 0.7).astype(float)
    assert str(compare.paired(a, b, unit="shifted test images")).endswith(", 3 seeds x 1200 shifted test images")
    spelled = compare.paired(a, b, unit="400 images x 3 shifts")
    assert str(spelled) == f"{spelled.interval()}, 3 seeds x 400 images x 3 shifts"
    assert compare.against("b", {"a": a, "b": b}, unit="400 images x 3 shifts")["a"].size() == \
        "3 seeds x 400 images x 3 shifts"
    with pytest.raises(ValueError, match=r"spells 400 x 2 = 800 items per seed, but the scores hold 1200"):
        compare.paired(a, b, unit="400 images x 2 shifts")


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


def test_one_paired_repeat_is_named_in_the_singular():
    one = compare.paired([0.8], [0.7], unit="validation splits")
    assert one.size() == "1 paired validation split"
    assert compare.paired([0.8, 0.9], [0.7, 0.6], unit="validation splits").size() == "2 paired validation splits"
