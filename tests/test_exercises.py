"""The exercise checks: a placeholder, a wrong answer and a crash each say "Not yet" with a hint and
never raise; a right answer says "Right"; :func:`verify` tells the scaffold-then-solution order apart."""

from __future__ import annotations

import pytest
from torch import nn

from tlhelpers import exercises
from tlhelpers.exercises import nb03


@pytest.fixture(autouse=True)
def fresh_history():
    exercises.HISTORY.clear()
    yield
    exercises.HISTORY.clear()


def right(in_features, num_classes):
    return nn.Sequential(nn.Linear(in_features, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, num_classes))


def test_placeholder_says_not_yet_with_the_hint():
    feedback = nb03.q2(deeper_head=...)
    assert not feedback and "still `...`" in str(feedback) and "Hint:" in str(feedback)


def test_untouched_scaffold_function_is_not_a_traceback():
    def deeper_head(in_features, num_classes):
        ...

    feedback = nb03.q2(deeper_head=deeper_head)
    assert not feedback and "returned None" in feedback.message


@pytest.mark.parametrize("build, says", [
    (lambda i, n: nn.Sequential(nn.Linear(i, 256), nn.ReLU(), nn.Linear(256, n)), "four"),
    (lambda i, n: nn.Sequential(nn.Linear(i, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, n)), "probability"),
    (lambda i, n: nn.Sequential(nn.Linear(i, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10)), "num_classes"),
    (lambda i, n: 1 / 0, "ZeroDivisionError"),
])
def test_wrong_answers_say_what_is_wrong(build, says):
    feedback = nb03.q2(deeper_head=build)
    assert not feedback and says in feedback.message
    assert "Dropout(0.2)" not in str(feedback)          # the hint never holds the answer


def test_right_answer_and_verify():
    assert not nb03.q1(replace_classifier_head=...)        # 03's other exercise (tests/test_exercises_nb03.py)
    nb03.q1(replace_classifier_head=lambda net, n: net.classifier.__setitem__(-1, nn.Linear(
        net.classifier[-1].in_features, n)) or net.classifier[-1])
    assert not nb03.q2(deeper_head=...)
    feedback = nb03.q2(deeper_head=right)
    assert feedback and str(feedback).startswith("Right.")
    assert "every exercise" in exercises.verify("nb03")


def test_verify_catches_a_scaffold_that_passes_and_a_solution_that_fails():
    nb03.q2(deeper_head=right)
    with pytest.raises(AssertionError, match="gives the answer away"):
        exercises.verify("nb03")
    exercises.HISTORY.clear()
    nb03.q2(deeper_head=...)
    nb03.q2(deeper_head=...)
    with pytest.raises(AssertionError, match="did not pass"):
        exercises.verify("nb03")
    exercises.HISTORY.clear()
    with pytest.raises(AssertionError, match="never checked"):
        exercises.verify("nb03")


def test_wrong_call_names_the_arguments():
    feedback = nb03.q2(head=right)
    assert not feedback and "q2(deeper_head=deeper_head)" in feedback.message
