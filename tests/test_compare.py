"""tlhelpers.compare: verdicts over seeds say "beat" only when the ranges do not overlap."""

from __future__ import annotations

import pytest

from tlhelpers import compare


def test_spread_statistics_and_format():
    s = compare.spread([0.70, 0.72, 0.74])
    assert s.n == 3 and s.mean == pytest.approx(0.72) and s.std == pytest.approx(0.02)
    assert (s.low, s.high) == (0.70, 0.74)
    assert s.format() == "72.0% ± 2.0 (70.0-74.0)"
    assert compare.spread([3.0]).std == 0.0


def test_beat_only_when_ranges_do_not_overlap():
    assert compare.verdict("A", [0.80, 0.82, 0.81], "B", [0.70, 0.75, 0.79]).startswith("A beat B")
    assert compare.verdict("A", [0.70, 0.75, 0.79], "B", [0.80, 0.82, 0.81]).startswith("B beat A: 81.0%")
    overlapping = compare.verdict("A", [0.80, 0.82, 0.74], "B", [0.70, 0.75, 0.79])
    assert overlapping.startswith("no clear difference between A and B") and "overlap" in overlapping
    # A higher mean alone is not enough.
    assert not compare.beats([0.9, 0.9, 0.7], [0.8, 0.8, 0.8])


def test_lower_is_better_and_one_seed():
    assert compare.verdict("fast", [1.0, 1.1], "slow", [2.0, 2.2], percent=False,
                           higher_is_better=False).startswith("fast beat slow")
    assert compare.verdict("A", [0.9], "B", [0.1]).startswith("one seed cannot decide")
    assert not compare.beats([0.9], [0.1])
    assert compare.ranking({"A": [0.9], "B": [0.1]}) == "best first by mean: A, B. not separated: A and B"


def test_ranking_groups_what_it_cannot_separate():
    text = compare.ranking({"scratch": [0.1, 0.12, 0.11], "probe": [0.70, 0.74, 0.72],
                            "fine-tune": [0.73, 0.76, 0.75]})
    assert text == ("best first by mean: fine-tune, probe, scratch. fine-tune beat scratch; probe beat scratch; "
                    "not separated: fine-tune and probe")


@pytest.mark.parametrize("values", [[], [float("nan")], ["a"]])
def test_bad_values_are_refused(values):
    with pytest.raises(ValueError, match="Spread|numbers"):
        compare.spread(values) if values != ["a"] else compare.Spread(("a",))
