"""One budget for every contender, and what one run did under it: steps, rate, convergence (see :mod:`tlhelpers.protocol`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tlhelpers.checks import integer
from tlhelpers.protocol.splits import _positive_int

#: A run has converged when its best validation check is not in the last quarter of its cap.
LAST_FRACTION = 0.25


#: Every grid :func:`choose` takes has at least this many rates.
MIN_RATES = 3


#: Why :func:`choose` stopped without growing the grid when every rate kept the starting weights.
NO_RATE_IMPROVED = "no rate improved on the start"


def _log_spaced(lrs: tuple[float, ...]) -> float:
    """The common ratio of a log-spaced grid (largest first); ValueError when it is not log-spaced."""
    ordered = sorted(lrs, reverse=True)
    ratios = [ordered[i] / ordered[i + 1] for i in range(len(ordered) - 1)]
    if not ratios:
        return 10.0
    if min(ratios) <= 1 or max(ratios) / min(ratios) > 1.01:
        raise ValueError(f"the learning-rate grid {lrs!r} must be log-spaced with distinct rates "
                         "(the same ratio between neighbours, for example (1e-2, 1e-3, 1e-4))")
    return ratios[0]


@dataclass(frozen=True)
class Budget:
    """What every contender in one comparison gets.

    ``max_steps`` optimizer steps at most (the cap), batches of ``batch_size``, AdamW with
    ``weight_decay``, a validation check every ``eval_every`` steps (and before the first).
    ``patience=None``: every contender takes all ``max_steps`` with cosine decay over them;
    ``patience=p``: each stops after ``p`` checks without a new best, at a constant rate (see
    the module docstring for why). ``lrs``: the log-spaced grid :func:`choose` starts from (at
    least three rates for a choice; one rate is fine for a single :func:`train`), which may grow
    ``max_extend`` steps past either edge.
    """

    max_steps: int = 120
    batch_size: int = 32
    lrs: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    eval_every: int = 10
    patience: int | None = 4
    weight_decay: float = 0.01
    max_extend: int = 2

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "eval_every"):
            _positive_int(getattr(self, name), name)
        if self.patience is not None:
            _positive_int(self.patience, "patience (or None for equal steps)")
        integer(self.max_extend, "max_extend", 0)
        lrs = tuple(self.lrs)
        if not lrs or any(isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 for lr in lrs):
            raise ValueError(f"lrs must be a non-empty sequence of positive learning rates, got {self.lrs!r}")
        object.__setattr__(self, "lrs", tuple(float(lr) for lr in lrs))
        _log_spaced(self.lrs)
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")

    @property
    def schedule(self) -> str:
        return "cosine decay over the cap" if self.patience is None else "constant rate (early stopping)"

    def doubled(self) -> Budget:
        """The same budget with twice the cap (what :func:`contest` offers an unconverged contender)."""
        return Budget(self.max_steps * 2, self.batch_size, self.lrs, self.eval_every, self.patience,
                      self.weight_decay, self.max_extend)

    def describe(self) -> str:
        stop = ("every contender takes all of them (equal steps), cosine decay of the rate to zero over them"
                if self.patience is None else
                f"each stops after {self.patience} validation checks without a new best (every "
                f"{self.eval_every} steps), at a constant rate, keeping its best check")
        if len(self.lrs) == 1:
            rates = f"learning rate {self.lrs[0]:g}"
        else:
            rates = ("learning rate chosen per seed on validation from {" + ", ".join(f"{lr:g}" for lr in self.lrs)
                     + f"}}, extended up to {self.max_extend} step(s) past an edge that wins")
        return (f"at most {self.max_steps} AdamW steps of {self.batch_size} images, weight decay "
                f"{self.weight_decay:g}; {stop}; {rates}; converged = best check not in the last "
                f"{LAST_FRACTION:.0%} of the cap")


@dataclass
class Run:
    """One training run under a :class:`Budget`: what it took and what validation said."""

    lr: float
    steps: int                 # optimizer steps taken (up to the stop)
    best_step: int             # the step whose weights were kept (0: the starting weights)
    val_acc: float             # validation accuracy at best_step
    curve: list[tuple[int, float]]   # (step, validation accuracy) at every check
    train_size: int
    batch_size: int
    stopped_early: bool
    max_steps: int             # the cap this run had
    tried: dict[float, float] = field(default_factory=dict)   # lr -> best validation accuracy (choose)
    at_bound: bool = False     # choose: the chosen rate is at an edge of the final grid, which could grow no more
    no_rate_improved: bool = False   # choose: every rate kept step 0 (the start), even the smaller ones tried

    @property
    def epochs(self) -> float:
        """Passes over the training split up to the kept step."""
        return self.best_step * self.batch_size / self.train_size

    @property
    def converged(self) -> bool:
        """The best validation check is not in the last quarter of the cap (``LAST_FRACTION``)."""
        return self.best_step <= self.max_steps * (1 - LAST_FRACTION)

    @property
    def grid(self) -> tuple[float, ...]:
        """Every rate tried, largest first (the final grid of :func:`choose`)."""
        return tuple(sorted(self.tried or {self.lr: self.val_acc}, reverse=True))

    def describe(self) -> str:
        stop = "early stop" if self.stopped_early else "cap"
        state = "converged" if self.converged else "NOT converged: still improving at its cap"
        bound = ", at the grid's bound" if self.at_bound else ""
        if self.no_rate_improved:
            bound = f", {NO_RATE_IMPROVED} (the starting weights kept)"
        return (f"lr {self.lr:g}{bound}, kept step {self.best_step} of {self.steps} ({stop}, cap {self.max_steps}, "
                f"{state}), {self.epochs:.1f} epochs, validation {self.val_acc:.1%}")



def _rates(items: Iterable[float]) -> str:
    values = sorted(set(items), reverse=True)
    return "/".join(f"{v:g}" for v in values)



def _grid(runs: Sequence[Run]) -> str:
    rates = sorted({lr for run in runs for lr in run.grid}, reverse=True)
    return f"{rates[0]:g}..{rates[-1]:g} ({len(rates)})" if len(rates) > 1 else f"{rates[0]:g}"
