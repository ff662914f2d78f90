"""Compare results over several seeds, and word the verdict only as strongly as they allow.

One seed on a few hundred images is one sample: two methods a point apart can swap places with
the next seed. The course runs every comparison that ends in a verdict over several seeds and
uses one rule everywhere:

    A **beats** B only when every seed of A scored above every seed of B
    (their ranges over seeds do not overlap); otherwise there is **no clear difference**.

With three seeds that is a demanding rule, on purpose: a notebook should rather say "no clear
difference" than crown a winner that the next seed would dethrone. "No clear difference" (or
"not separated") means the rule cannot tell the two apart over these seeds, not that they are
equal. Imports nothing else from
tlhelpers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Spread:
    """Results of one method over several seeds: mean, standard deviation, range."""

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


def _as_spread(values: Spread | Sequence[float]) -> Spread:
    return values if isinstance(values, Spread) else spread(values)


def beats(a: Spread | Sequence[float], b: Spread | Sequence[float]) -> bool:
    """True when every result of ``a`` is above every result of ``b`` (ranges do not overlap).

    A single seed on either side never beats anything: one sample has no spread to compare with.
    """
    a, b = _as_spread(a), _as_spread(b)
    return min(a.n, b.n) >= 2 and a.low > b.high


def verdict(name_a: str, a: Spread | Sequence[float], name_b: str, b: Spread | Sequence[float],
            percent: bool = True, higher_is_better: bool = True) -> str:
    """One sentence comparing two methods by the course's rule (see the module docstring).

    ``"fine-tuning beat feature extraction: 75.1% ± 1.0 vs 70.2% ± 0.8 over 3 seeds"`` or
    ``"no clear difference between A and B: ... (their ranges over 3 seeds overlap)"``. With
    ``higher_is_better=False`` (losses, seconds) lower wins.
    """
    a, b = _as_spread(a), _as_spread(b)
    seeds = f"{a.n} seeds" if a.n == b.n else f"{a.n} and {b.n} seeds"
    numbers = f"{a.format(percent)} vs {b.format(percent)} over {seeds}"
    better, worse = (a, b) if higher_is_better else (b, a)
    if min(a.n, b.n) < 2:
        return f"one seed cannot decide between {name_a} and {name_b}: {numbers}"
    if beats(better, worse):
        return f"{name_a} beat {name_b}: {numbers}"
    if beats(worse, better):
        return f"{name_b} beat {name_a}: {b.format(percent)} vs {a.format(percent)} over {seeds}"
    return f"no clear difference between {name_a} and {name_b}: {numbers} (their ranges overlap)"


def ranking(results: Mapping[str, Spread | Sequence[float]], percent: bool = True) -> str:
    """Methods best first by mean, then the rule applied to **every pair**, in words.

    ``"best first by mean: fine-tuning, probe, scratch. fine-tuning beat scratch; probe beat
    scratch; not separated: fine-tuning and probe"``. Every pair is checked, not only
    neighbours: A can beat C while neither is separated from B between them. "Not separated"
    means the rule cannot tell them apart over these seeds, not that they are equal.
    """
    if not results:
        raise ValueError("ranking needs at least one method")
    ordered = sorted(((name, _as_spread(v)) for name, v in results.items()),
                     key=lambda item: item[1].mean, reverse=True)
    text = "best first by mean: " + ", ".join(name for name, _ in ordered)
    beaten, unseparated = [], []
    for i, (name_a, a) in enumerate(ordered):
        for name_b, b in ordered[i + 1:]:
            if beats(a, b):
                beaten.append(f"{name_a} beat {name_b}")
            elif beats(b, a):
                beaten.append(f"{name_b} beat {name_a}")
            else:
                unseparated.append(f"{name_a} and {name_b}")
    parts = beaten + (["not separated: " + ", ".join(unseparated)] if unseparated else [])
    return text + (". " + "; ".join(parts) if parts else "")
