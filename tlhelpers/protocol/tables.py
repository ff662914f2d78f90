"""What a comparison prints: results per seed, paired intervals against a named baseline, the table (see :mod:`tlhelpers.protocol`)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tlhelpers import compare
from tlhelpers.protocol.budget import (
    LAST_FRACTION,
    NO_RATE_IMPROVED,
    Run,
    _grid,
    _rates,
)
from tlhelpers.protocol.splits import SPLIT_NAMES


@dataclass
class Result:
    """One method over seeds: a :class:`Run` (``None`` for a method with no training, such as a
    closed-form baseline) and the per-image test scores of each seed."""

    runs: list[Run | None] = field(default_factory=list)
    test_scores: list[np.ndarray] = field(default_factory=list)

    def add(self, run: Run | None, test_scores) -> None:
        """One seed: its run and its per-image test scores (:func:`scores`; 1.0 correct, 0.0 wrong)."""
        values = np.asarray(test_scores, dtype=float)
        if values.ndim != 1 or values.size == 0:
            raise ValueError("add the per-image test scores of this seed (protocol.scores(model, test_set)), "
                             f"not an accuracy: got shape {values.shape}")
        self.runs.append(run)
        self.test_scores.append(values)

    @property
    def test(self) -> list[float]:
        """Test accuracy per seed."""
        return [float(values.mean()) for values in self.test_scores]

    @property
    def val(self) -> list[float]:
        """Validation accuracy per seed at the kept check (the number that made the choices)."""
        return [run.val_acc for run in self.runs if run is not None]

    @property
    def scores(self) -> np.ndarray:
        """(seeds, test images): what :func:`tlhelpers.compare.paired` takes."""
        return compare.scores_of(self.test_scores)

    @property
    def trained(self) -> list[Run]:
        return [run for run in self.runs if run is not None]

    @property
    def unconverged(self) -> int:
        """On how many seeds the run was still improving at its cap."""
        return sum(not run.converged for run in self.trained)


class Compared(str):
    """One line of :func:`compared`: the same words as before (a ``str``: print it, concatenate it,
    ``.startswith("not comparable")``), carrying the comparison behind them.

    ``.paired`` is the :class:`tlhelpers.compare.Paired` (contender - baseline on the table's
    split); ``.mean``, ``.low``, ``.high``, ``.detectable`` and ``.interval()`` are its own.
    ``.comparable`` is False when one of the two was still improving at its cap and the other was
    not; ``.verdict`` is then ``"not comparable"``, else the interval's ``"beat"``, ``"lost"``,
    ``"not separated"`` or ``"one seed"``.
    """

    paired: compare.Paired
    comparable: bool

    def __new__(cls, text: str, paired: compare.Paired, comparable: bool = True) -> Compared:
        line = super().__new__(cls, text)
        line.paired, line.comparable = paired, comparable
        return line

    @property
    def verdict(self) -> str:
        return self.paired.verdict if self.comparable else "not comparable"

    @property
    def mean(self) -> float:
        return self.paired.mean

    @property
    def low(self) -> float:
        return self.paired.low

    @property
    def high(self) -> float:
        return self.paired.high

    @property
    def detectable(self) -> float:
        return self.paired.detectable

    def interval(self) -> str:
        return self.paired.interval()

    def __reduce__(self):
        return (Compared, (str(self), self.paired, self.comparable))


def paired_against(results: Mapping[str, Result], baseline: str, *,
                   unit: str = "test images") -> dict[str, compare.Paired]:
    """Each contender minus ``baseline``: ``{name: Paired}`` (Bonferroni over the contenders;
    :func:`tlhelpers.compare.against`), the intervals :func:`table` and :func:`compared` word.

    For a notebook that acts on a verdict: ``paired_against(results, "probe")["fine-tuning"].low > 0``.
    It does not check convergence; :func:`compared` (``.comparable``) and :func:`table` do.
    """
    if baseline not in results:
        raise ValueError(f"the baseline {baseline!r} is not in the table: choose one of {list(results)}")
    return compare.against(baseline, {name: result.scores for name, result in results.items()}, unit=unit)


def compared(results: Mapping[str, Result], baseline: str, *, unit: str = "test images") -> dict[str, Compared]:
    """Each contender against ``baseline`` in words: its paired interval on test (Bonferroni over
    the contenders; :func:`tlhelpers.compare.against`) and what it could have detected, or "not
    comparable" when one of the two was still improving at its cap on some seed and the other was not.

    Each value is a :class:`Compared`: the line as a string, with ``.paired`` (the
    :class:`tlhelpers.compare.Paired`), ``.verdict``, ``.mean``, ``.low``, ``.high`` and
    ``.comparable``. ``unit`` names what each seed scored (see :func:`tlhelpers.compare.paired`):
    ``"shifted test images"``, or ``"400 images x 3 shifts"`` to spell the count."""
    intervals = paired_against(results, baseline, unit=unit)
    base = results[baseline]
    lines = {}
    for name, interval in intervals.items():
        result = results[name]
        stuck = [(label, r) for label, r in ((name, result), (baseline, base)) if r.unconverged]
        if len(stuck) == 1:
            label, r = stuck[0]
            lines[name] = Compared(f"not comparable: {label} still improving at its cap on {r.unconverged} of "
                                   f"{len(r.trained)} seeds ({name} - {baseline} = {interval})", interval, False)
            continue
        text = interval.sentence(name, baseline)
        if len(stuck) == 2:
            text += " (both still improving at the cap: a verdict at this budget only)"
        lines[name] = Compared(text, interval)
    return lines


def table(results: Mapping[str, Result], split: str = "test", title: str | None = None,
          baseline: str | None = None, *, unit: str = "test images") -> str:
    """A fixed-width table: per method the final learning-rate grid and the rates chosen (``*``:
    at the grid's bound; ``!``: no rate improved on the start), steps kept and taken, epochs,
    converged on how many seeds, validation accuracy (which made the choices) and ``split``
    accuracy, over seeds. With ``baseline``, the lines below compare every other method with it
    (:func:`compared`); ``unit`` names what each seed scored in those lines ("3 seeds x 1200
    shifted test images" from ``unit="shifted test images"``, or ``unit="400 images x 3 shifts"``)."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    if not results:
        raise ValueError("table needs at least one method")
    width = max(len("method"), *(len(name) for name in results))
    header = (f"{'method':<{width}}  {'grid (rates)':>16}  {'lr chosen':>11}  {'steps kept/taken':>16}  "
              f"{'epochs':>6}  {'converged':>9}  {'validation':>20}  {split + ' (reported)':>20}")
    lines = ([title] if title else []) + [header, "-" * len(header)]
    any_bound = any_stuck = False
    for name, result in results.items():
        if not result.test_scores:
            raise ValueError(f"{name!r} has no runs")
        runs = result.trained
        if not runs:
            lines.append(f"{name:<{width}}  {'-':>16}  {'-':>11}  {'-':>16}  {'-':>6}  {'-':>9}  {'-':>20}  "
                         f"{compare.spread(result.test).format():>20}")
            continue
        bound = any(r.at_bound for r in runs)
        stuck = any(r.no_rate_improved for r in runs)
        any_bound |= bound
        any_stuck |= stuck
        chosen = _rates(r.lr for r in runs) + ("*" if bound else "") + ("!" if stuck else "")
        kept = compare.spread([r.best_step for r in runs]).mean
        taken = compare.spread([r.steps for r in runs]).mean
        epochs = compare.spread([r.epochs for r in runs]).mean
        converged = f"{len(runs) - result.unconverged}/{len(runs)}"
        lines.append(f"{name:<{width}}  {_grid(runs):>16}  {chosen:>11}  {f'{kept:.0f}/{taken:.0f}':>16}  "
                     f"{epochs:>6.1f}  {converged:>9}  {compare.spread(result.val).format():>20}  "
                     f"{compare.spread(result.test).format():>20}")
    n = {len(r.test_scores) for r in results.values()}
    caps = {r.max_steps for result in results.values() for r in result.trained}
    lines += textwrap.wrap(f"mean ± std (worst-best) over {'/'.join(map(str, sorted(n)))} seeds; steps and epochs are means "
                 f"over seeds (cap {'/'.join(map(str, sorted(caps)))} steps); converged: seeds whose best check "
                 f"was not in the last {LAST_FRACTION:.0%} of the cap; validation made every choice, the last "
                 "column made none" + ("; * a chosen rate at the bound of its grid" if any_bound else "")
                 + (f"; ! on some seed {NO_RATE_IMPROVED} (the starting weights kept, smaller rates tried too)"
                    if any_stuck else ""), width=max(len(header), 80), break_on_hyphens=False)
    if baseline is not None:
        verdicts = compared(results, baseline, unit=unit)
        k = len(verdicts)
        lines.append(f"paired with the baseline, {baseline}, on {split} ({k} comparison{'s' if k > 1 else ''}"
                     + (f", Bonferroni: each interval at {1 - (1 - compare.CONFIDENCE) / k:.1%})" if k > 1 else ")")
                     + ":")
        lines += [f"  {name}: {text}" for name, text in verdicts.items()]
    return "\n".join(lines)
