"""Exercises that check themselves: the learner runs a check and reads "right", or what is wrong and a hint.

Each numbered notebook's exercises live in ``tlhelpers/exercises/nbNN.py`` as :class:`Exercise`
objects named ``q1``, ``q2``, ... A scaffold cell ends with the check, called with what the
learner wrote::

    from tlhelpers.exercises import nb04 as check
    head = ...          # your code
    check.q1(head=head, model=model)
    # check.q1.hint()  if you are stuck

A check never raises and never prints the answer: a placeholder still at ``...``, a wrong value
and an exception in the learner's code all come back as "Not yet" with what was wrong and the
hint, so the untouched scaffold runs without a traceback. The reference a check compares with
is computed from the learner's own objects (their model, their data), never a stored number.

Why not otter-grader (``grader.check("q1")``) or Kaggle Learn's ``learntools``: otter needs a
separate test folder per notebook that the learner's JupyterLab must find, looks answers up by
global name, and brings a large dependency tree (for autograding services this course does not
use); learntools is not packaged for reuse. The same idea, ``q1.check()`` / ``q1.hint()``, is
about a hundred lines here, runs offline, and CI can ask it what happened (:func:`verify`).

CI runs both sides: the merged notebook (``scripts/answer_keys.py``) runs each untouched
scaffold, then its solution (which ends with the same check), then a last cell calling
:func:`verify`, which fails unless every exercise of the notebook was checked, its first check
(the scaffold) said "Not yet" and its last (the solution) said "Right".
"""

from __future__ import annotations

import importlib
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass

#: Every check this kernel ran: (module, exercise name) -> [passed, ...] in order.
HISTORY: dict[tuple[str, str], list[bool]] = {}


@dataclass(frozen=True)
class Feedback:
    """What one check found; shown as one or two lines of text below the cell."""

    exercise: str
    passed: bool
    message: str
    hint: str = ""

    def __str__(self) -> str:
        if self.passed:
            return f"Right. {self.exercise}: {self.message}".rstrip()
        text = f"Not yet. {self.exercise}: {self.message}"
        return f"{text}\nHint: {self.hint}" if self.hint else text

    def __repr__(self) -> str:
        return str(self)

    def __bool__(self) -> bool:
        return self.passed


class Wrong(Exception):
    """Raised by a check's test with what is wrong (in words a learner can act on, without the answer)."""


class Exercise:
    """One exercise's check.

    ``test(**answers)`` raises :class:`Wrong` with what is wrong, or returns a sentence saying what
    the right answer achieved (or None). ``names`` are the keyword arguments the check expects, so
    a placeholder left at ``...`` is named before the test runs.
    """

    def __init__(self, title: str, test: Callable[..., str | None], hint: str, names: tuple[str, ...]):
        self.title, self.test, self._hint, self.names = title, test, hint, tuple(names)
        self.module, self.name = "", ""        # set by :func:`register`

    def __call__(self, **answers: object) -> Feedback:
        feedback = self._run(answers)
        HISTORY.setdefault((self.module, self.name), []).append(feedback.passed)
        return feedback

    def _run(self, answers: dict[str, object]) -> Feedback:
        unknown = sorted(set(answers) - set(self.names))
        missing = [name for name in self.names if name not in answers]
        if unknown or missing:
            return self._no(f"call the check as {self.name}({', '.join(f'{n}={n}' for n in self.names)})")
        placeholders = [name for name in self.names if answers[name] is Ellipsis]
        if placeholders:
            return self._no(f"`{placeholders[0]}` is still `...`: write your code there and run the cell again")
        try:
            said = self.test(**answers)
        except Wrong as wrong:
            return self._no(str(wrong))
        except Exception as error:      # the learner's code failed inside the check: say where, not a traceback
            where = traceback.extract_tb(error.__traceback__)[-1]
            return self._no(f"running your code raised {type(error).__name__}: {error} "
                            f"(in {where.name}, line {where.lineno})")
        return Feedback(self.title, True, said or "")

    def _no(self, message: str) -> Feedback:
        return Feedback(self.title, False, message, self._hint)

    def hint(self) -> str:
        """The hint alone, for a learner who is stuck before running the check."""
        print(f"Hint: {self._hint}")
        return self._hint


def register(namespace: dict[str, object]) -> None:
    """Name each exercise of a notebook's module (call ``register(globals())`` at its end), so
    :data:`HISTORY` and :func:`verify` can find it and its messages say ``q1(...)``."""
    for name, value in namespace.items():
        if isinstance(value, Exercise):
            value.module, value.name = str(namespace["__name__"]), name


def verify(notebook: str) -> str:
    """Assert that every exercise of ``nbNN`` ran: its first check failed (the scaffold), its last passed.

    Called by the last cell of the merged notebook CI runs; raises AssertionError naming each exercise
    that did not behave, so a scaffold that gives the answer away or a solution that fails is caught.
    """
    module = importlib.import_module(f"{__name__}.{notebook}")
    problems = []
    for name in sorted(n for n, v in vars(module).items() if isinstance(v, Exercise)):
        runs = HISTORY.get((module.__name__, name), [])
        if not runs:
            problems.append(f"{notebook}.{name} was never checked")
        elif runs[0]:
            problems.append(f"{notebook}.{name}: the untouched scaffold passed its check (it gives the answer away)")
        elif not runs[-1]:
            problems.append(f"{notebook}.{name}: the solution did not pass its check")
    assert not problems, "; ".join(problems)
    return f"{notebook}: every exercise's scaffold said 'Not yet' and its solution 'Right'"


def close(value: float, expected: float, tolerance: float = 1e-6) -> bool:
    """``value`` is a finite number within ``tolerance`` (relative, or absolute near 0) of ``expected``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and math.isclose(value, expected, rel_tol=tolerance, abs_tol=tolerance)
