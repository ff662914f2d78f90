"""Compare two methods over seeds with a paired interval, and word the verdict only as strongly as it allows.

One seed on a few hundred test images is one sample: two methods a point apart can swap places
with the next seed. The course runs every comparison that ends in a verdict over several seeds,
and both methods of a seed see the same training split, the same validation split and **the same
test images in the same order**. The comparison uses that pairing:

    For each seed s, d_s = (mean score of A) - (mean score of B) on that seed's test images.
    The verdict rests on the 95% t-interval of the mean of d_1 .. d_n (n seeds, n - 1 degrees
    of freedom). **A beat B** when the whole interval lies above 0; otherwise the two are
    **not separated**, and the interval is printed so a reader sees how close it came.

Why this procedure (:func:`paired`):

* **Paired, over seeds.** Each seed draws its own train, validation and test images, so d_s
  carries every source of noise this course has: which images trained the model, which ones
  chose its rate and step, which ones scored it, and the order of the batches (the sources
  Bouthillier et al. 2021 measure in ML benchmarks). Differencing within a seed cancels what both
  methods share (an easy test split lifts both); the spread of d_s over seeds then measures what
  is left, with nothing assumed about it but that the n seeds are independent.
* **A t-interval, not a bootstrap.** Each d_s is a mean over hundreds of test images, so it is
  close to normal, and with 3 to 5 seeds a bootstrap over seeds has only 10 to 126 distinct
  resamples: its interval is too narrow (it cannot see the tails) and under-covers. A bootstrap
  over test images within a seed ignores the seed-to-seed noise (the split, the choice of rate),
  which is usually the larger part. The t-interval is exact for normal d_s at any n >= 2 (rliable,
  Agarwal et al. 2021, makes the same point for few runs and recommends interval estimates over
  point estimates). ``tests/test_compare.py`` checks it by simulation: two identical methods are
  "beat" in about 5% of trials at 3 and at 5 seeds; a true +3 point gap at 5 seeds x 500 test
  images with correlated errors (a split that shifts both, images both find hard) is detected
  about 8 times in 10, where "every seed of A above every seed of B" (the course's old, unpaired
  rule) detected it about 2 times in 100.
* **Several contenders.** A table names one baseline and compares each other method with it
  (k comparisons, not every pair); :func:`against` widens each interval to 1 - 0.05 / k
  (Bonferroni), so the k verdicts together make a false "beat" at most 5% of the time.
* **What it could have seen.** :attr:`Paired.detectable` is the true gap this comparison would
  separate 4 times in 5, from the spread it saw: (t(1 - alpha/2) + t(0.8)) x the standard error.
  "Not separated" then reads "smaller than about X points here", not "equal".

One seed has no spread: :func:`paired` then returns an interval of NaNs and the verdict says one
seed cannot decide.

**When the seeds show no spread** (every seed's difference d_s is the same, for example all 0 because
both methods made the same predictions, or every seed +0.2 points) the t-interval collapses to a
point and its detectable gap to 0: it would claim a precision nobody measured. Three seeds agreeing
exactly says the seed-to-seed noise was too small to show on this many test images, not that it is
zero. :attr:`Paired.spread_from` says what the interval rests on instead:

* ``"seeds"``: the usual case above.
* ``"test images"``: the seeds agree, but the images within them do not (A gained some images and
  lost others). The standard error then comes from the per-image differences, their variance pooled
  over the seeds: sqrt(pooled variance / (seeds x images)), with the same n - 1 degrees of freedom.
  That is the noise of drawing the test images alone, the smallest part of what a seed's
  difference carries, so the interval is a floor, and its string says so.
* ``"none"``: nothing varies at all: every test image of every seed gave the same difference (the
  two methods scored alike on every image, or one value per seed that repeats exactly). No
  interval can be computed: ``low`` and ``high`` are the one difference seen, ``detectable`` is
  NaN and :meth:`Paired.could_detect` says it cannot say what gap would have been separated. The
  verdict is "not separated" when that difference is 0; when it is not, the only statement left
  that assumes nothing is a sign test over the seeds (all n on one side happens by chance with
  probability 2 x 0.5^n): "beat"/"lost" only when that is below the (Bonferroni) alpha, so never
  with fewer than 6 seeds. Scores are per test image (1.0 correct, 0.0 wrong) for accuracies; any other
paired measurement works the same way as a (repeats, 1) array, such as timings taken in turns
(pass ``higher_is_better=False`` and ``percent=False``). Imports nothing else from tlhelpers.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: The confidence of every interval the course prints (before a Bonferroni correction).
CONFIDENCE = 0.95
#: The power at which :attr:`Paired.detectable` is quoted: a true gap of that size is separated 4 times in 5.
POWER = 0.8


@dataclass(frozen=True)
class Spread:
    """Results of one method over several seeds: mean, standard deviation, range (for description, not verdicts)."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("a Spread needs at least one value (one result per seed)")
        if any(not isinstance(v, (int, float)) or math.isnan(v) for v in self.values):
            raise ValueError(f"results must be numbers, got {self.values!r}")

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0.0 for a single seed)."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def format(self, percent: bool = True, digits: int = 1) -> str:
        """``71.2% ± 1.3 (69.8-72.5)``: mean ± std over seeds, and the range."""
        scale, unit = (100.0, "%") if percent else (1.0, "")
        return (f"{self.mean * scale:.{digits}f}{unit} ± {self.std * scale:.{digits}f} "
                f"({self.low * scale:.{digits}f}-{self.high * scale:.{digits}f})")

    def __str__(self) -> str:
        return self.format()


def spread(values: Iterable[float]) -> Spread:
    """A :class:`Spread` of ``values`` (one result per seed)."""
    return Spread(tuple(float(v) for v in values))


@dataclass(frozen=True)
class Paired:
    """The paired comparison of A with B over seeds: mean difference A - B and its interval.

    ``mean``, ``low``, ``high`` and ``detectable`` are fractions for accuracies (0.018 is 1.8
    points) or plain units with ``percent=False``. ``low``/``high`` are NaN for one seed.
    """

    mean: float
    low: float
    high: float
    per_seed: tuple[float, ...]
    items: int
    confidence: float
    detectable: float
    higher_is_better: bool = True
    percent: bool = True
    unit: str = "test images"
    spread_from: str = "seeds"    # what the interval rests on: "seeds", "test images" or "none" (module docstring)

    @property
    def seeds(self) -> int:
        return len(self.per_seed)

    @property
    def _sign_test_separates(self) -> bool:
        """No spread at all: every seed on one side happens by chance with probability 2 x 0.5^n."""
        return self.mean != 0 and 2 * 0.5 ** self.seeds < 1 - self.confidence

    @property
    def a_beat_b(self) -> bool:
        """The interval lies wholly on A's better side of 0."""
        if self.spread_from == "none":
            better = self.mean > 0 if self.higher_is_better else self.mean < 0
            return bool(better and self._sign_test_separates)
        return bool(self.low > 0) if self.higher_is_better else bool(self.high < 0)

    @property
    def b_beat_a(self) -> bool:
        if self.spread_from == "none":
            worse = self.mean < 0 if self.higher_is_better else self.mean > 0
            return bool(worse and self._sign_test_separates)
        return bool(self.high < 0) if self.higher_is_better else bool(self.low > 0)

    @property
    def verdict(self) -> str:
        """``"beat"``, ``"lost"`` (B beat A), ``"not separated"`` or ``"one seed"``."""
        if self.seeds < 2:
            return "one seed"
        return "beat" if self.a_beat_b else "lost" if self.b_beat_a else "not separated"

    def _number(self, value: float, sign: bool = True) -> str:
        if self.percent:
            return f"{value * 100:{'+' if sign else ''}.1f}"
        return f"{value:{'+' if sign else ''}.3g}"

    def interval(self) -> str:
        """``+1.8 points [+0.4, +3.2]`` (``[n/a]`` for one seed)."""
        what = " points" if self.percent else ""
        if self.seeds < 2:
            return f"{self._number(self.mean)}{what} [one seed: no interval]"
        bounds = f"{self._number(self.low)}, {self._number(self.high)}"
        if self.spread_from == "none":
            return f"{self._number(self.mean)}{what} [{bounds}: no spread seen]"
        if self.spread_from == "test images":
            return f"{self._number(self.mean)}{what} [{bounds}: spread of the test images only]"
        return f"{self._number(self.mean)}{what} [{bounds}]"

    def could_detect(self) -> str:
        """``a gap of about 2.1 points would have been separated`` (from the spread seen)."""
        if self.seeds < 2:
            return "one seed cannot separate any gap"
        if self.spread_from == "none":
            rows = "repeat" if self.items == 1 else "seed and test image"
            return (f"no spread seen (every {rows} gave the same difference): cannot say what gap would have "
                    "been separated")
        what = " points" if self.percent else ""
        text = f"a gap of about {self._number(self.detectable, sign=False)}{what} would have been separated"
        if self.spread_from == "test images":
            text += " (at least: every seed gave the same difference, so this counts only the test images' noise)"
        return text

    def size(self) -> str:
        """``5 seeds x 500 test images`` (or ``4 paired calls`` for one value per row).

        A ``unit`` that begins with a number spells the count itself (``"400 images x 3 shifts"``:
        ``3 seeds x 400 images x 3 shifts``); its numbers must multiply to the count of items.
        """
        if self.items == 1:     # one measurement per row: paired repeats (timings taken in turns)
            unit = self.unit[:-1] if self.seeds == 1 and self.unit.endswith("s") else self.unit
            return f"{self.seeds} paired {unit}"
        seeds = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        if _spells_count(self.unit):
            return f"{seeds} x {self.unit}"
        return f"{seeds} x {self.items} {self.unit}"

    def __str__(self) -> str:
        return f"{self.interval()}, {self.size()}"

    def sentence(self, name_a: str, name_b: str) -> str:
        """``fine-tuning beat the probe: +1.8 points [+0.4, +3.2], 5 seeds x 500 test images``."""
        if self.verdict == "beat":
            return f"{name_a} beat {name_b}: {self}"
        if self.verdict == "lost":
            return f"{name_b} beat {name_a}: {name_a} - {name_b} = {self}"
        if self.verdict == "one seed":
            return f"one seed cannot decide between {name_a} and {name_b}: {name_a} - {name_b} = {self}"
        return (f"{name_a} and {name_b} not separated: {name_a} - {name_b} = {self}; "
                f"{self.could_detect()}")


def _scores(values, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:
        array = array[:, None]          # one measurement per seed or repeat
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"{what} must be shaped (seeds, test images), got shape {np.shape(values)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} holds NaN or infinite scores: score each test image 1.0 (correct) or 0.0")
    return array


def _spells_count(unit: str) -> bool:
    """A unit such as ``"400 images x 3 shifts"`` carries its own count (it begins with a number)."""
    return bool(re.match(r"\s*\d", unit))


def _check_unit(unit: str, items: int) -> None:
    if not isinstance(unit, str) or not unit.strip():
        raise ValueError(f"unit must be words such as 'test images', got {unit!r}")
    if items > 1 and _spells_count(unit):
        numbers = [int(n) for n in re.findall(r"\d+", unit)]
        if math.prod(numbers) != items:
            raise ValueError(f"the unit {unit!r} spells {' x '.join(map(str, numbers))} = {math.prod(numbers)} "
                             f"items per seed, but the scores hold {items} per seed")


def _t(quantile: float, df: int) -> float:
    return float(stats.t.ppf(quantile, df))


def paired(a, b, *, confidence: float = CONFIDENCE, comparisons: int = 1, higher_is_better: bool = True,
           percent: bool = True, unit: str = "test images") -> Paired:
    """Compare A with B, paired by seed and test image (see the module docstring for the procedure).

    ``a`` and ``b`` are shaped (seeds, test images): per-image scores, row s of both from the same
    seed's test images in the same order. A 1-D array is one value per seed (or per repeat).
    ``comparisons=k`` widens the interval to ``1 - (1 - confidence) / k`` (Bonferroni) for a
    table that compares k contenders with one baseline. ``unit`` names the items of a row in
    ``str()``: ``"shifted test images"`` gives ``3 seeds x 1200 shifted test images``; a unit that
    begins with a number spells the count itself, ``"400 images x 3 shifts"`` gives
    ``3 seeds x 400 images x 3 shifts`` (its numbers must multiply to the items per seed).

    When every seed's difference is the same (no spread over seeds), the interval comes from the
    per-image differences, or, when those do not vary either, there is none (``spread_from``;
    see the module docstring): a collapsed interval never claims a precision it did not measure.
    """
    a, b = _scores(a, "a"), _scores(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired: the same seeds and test images, got shapes {a.shape} and "
                         f"{b.shape}. Score both methods on each seed's same test split.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")
    if not isinstance(comparisons, int) or comparisons < 1:
        raise ValueError(f"comparisons must be a positive count, got {comparisons!r}")
    _check_unit(unit, a.shape[1])
    differences = a - b
    per_seed = differences.mean(axis=1)
    n, items = differences.shape
    mean = float(per_seed.mean())
    if n < 2:
        nan = float("nan")
        return Paired(mean, nan, nan, tuple(per_seed.tolist()), items, confidence, nan,
                      higher_is_better, percent, unit)
    alpha = (1 - confidence) / comparisons
    spread_from = "seeds"
    se = float(per_seed.std(ddof=1)) / math.sqrt(n)
    if np.ptp(per_seed) <= 1e-12 * max(1.0, abs(mean)):      # every seed gave the same difference
        pooled = float(differences.var(axis=1, ddof=1).mean()) if items > 1 else 0.0
        if pooled > 1e-24:
            spread_from, se = "test images", math.sqrt(pooled / (n * items))
        else:
            nan = float("nan")
            return Paired(mean, mean, mean, tuple(per_seed.tolist()), items, 1 - alpha, nan,
                          higher_is_better, percent, unit, spread_from="none")
    half = _t(1 - alpha / 2, n - 1) * se
    detectable = (_t(1 - alpha / 2, n - 1) + _t(POWER, n - 1)) * se
    return Paired(mean, mean - half, mean + half, tuple(per_seed.tolist()), items, 1 - alpha,
                  detectable, higher_is_better, percent, unit, spread_from)


def against(baseline: str, scores: Mapping[str, object], *, higher_is_better: bool = True,
            percent: bool = True, unit: str = "test images") -> dict[str, Paired]:
    """Each contender of ``scores`` (name -> (seeds, test images) scores) compared with ``baseline``.

    k = len(scores) - 1 comparisons, each interval Bonferroni-widened to 1 - 0.05 / k so the k
    verdicts hold together. Returns ``{name: Paired}`` for every name but the baseline, in order.
    """
    if baseline not in scores:
        raise ValueError(f"the baseline {baseline!r} is not among the contenders {list(scores)}")
    others = [name for name in scores if name != baseline]
    if not others:
        raise ValueError("against needs at least one contender besides the baseline")
    return {name: paired(scores[name], scores[baseline], comparisons=len(others),
                         higher_is_better=higher_is_better, percent=percent, unit=unit) for name in others}


def verdict(name_a: str, a, name_b: str, b, **kwargs) -> str:
    """One sentence comparing A with B by the paired rule: ``paired(a, b).sentence(name_a, name_b)``."""
    return paired(a, b, **kwargs).sentence(name_a, name_b)


def report(baseline: str, scores: Mapping[str, object], **kwargs) -> str:
    """Lines comparing every contender with ``baseline`` (see :func:`against`), and how many comparisons."""
    results = against(baseline, scores, **kwargs)
    k = len(results)
    lines = [result.sentence(name, baseline) for name, result in results.items()]
    note = (f"{k} comparisons with the baseline, {baseline}: each interval at {1 - (1 - CONFIDENCE) / k:.1%} "
            f"(Bonferroni), so the {k} verdicts together hold at {CONFIDENCE:.0%}" if k > 1 else
            f"one comparison, interval at {CONFIDENCE:.0%}")
    return "\n".join(lines + [note])


def scores_of(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Stack per-seed score vectors into the (seeds, test images) array :func:`paired` takes."""
    rows = [np.asarray(row, dtype=float) for row in rows]
    if not rows:
        raise ValueError("no seeds to stack")
    if len({len(row) for row in rows}) != 1:
        raise ValueError(f"every seed needs the same number of test images, got {[len(r) for r in rows]}")
    return np.stack(rows)
