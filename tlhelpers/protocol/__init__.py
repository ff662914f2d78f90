"""Fair comparisons: three splits, one budget for every contender, every choice on validation.

A verdict such as "fine-tuning beat the linear probe" measures the methods only when nothing
else differs: not the number of steps, not the learning rate, not the images that chose the
best epoch. The course's comparison notebooks (04, 05, 07, 08, 09) and the command line follow
one protocol, and this module is where it lives:

1. **Three splits** (:func:`three_splits`). *train* fits the weights; *validation* makes every
   choice (learning rate, best step, early stop, a mixing weight, which method to keep); *test*
   is scored once per final model and never used for a choice. Train and validation are drawn
   disjointly from the dataset's training files; test is the dataset's held-out split.
2. **One budget** (:class:`Budget`). Every contender gets the same cap of optimizer steps with
   the same optimizer (AdamW) and batches of the same size. Two ways to spend it, and the
   schedule always runs its full course:

   * ``patience=None``: **equal steps**. Every contender takes all ``max_steps``, with cosine
     decay of the rate to zero over exactly those steps.
   * ``patience=p``: **its own early stop under the same cap**. Each contender stops when
     validation has not improved for ``p`` checks, at a **constant** rate. A decay over the cap
     would be cut off wherever the stop happens to fall (a run stopping at a third of its cap
     would have seen its rate barely start to fall), so the kept weights would depend on a
     schedule nobody chose; with a constant rate every run has had the whole of its schedule
     whenever it stops, and a run that stopped early is the same run under any larger cap.

   Either way the weights of the best validation check are the ones kept.
3. **Converged, or marked as not** (:attr:`Run.converged`). A run has converged when its best
   validation check is not in the **last quarter of its cap** (``LAST_FRACTION``): it was no
   longer improving when the steps ran out. :func:`contest` can double the cap for every
   contender (``max_doublings``) until each has converged, and :func:`table` refuses a verdict
   between a converged and an unconverged contender ("not comparable: X still improving at its
   cap"): a method that ran out of steps has not been measured, only its budget has.
4. **A learning-rate grid that contains its choice** (:func:`choose`). ``Budget.lrs`` holds at
   least three log-spaced rates; every contender trains once per rate from the same start and
   keeps the best on validation. When the best is at an edge of the grid, the grid grows one
   step past that edge (same spacing) and the new rate is tried, up to ``Budget.max_extend``
   steps per side; :attr:`Run.grid` is the final grid and :attr:`Run.at_bound` marks a choice
   still at its edge. When **no rate improved on the start** (every run kept step 0, the
   starting weights), the grid grows **downward only**, up to ``Budget.max_extend`` smaller rates:
   from trained weights (a stage 2, LP-FT) whose first steps only lose, smaller steps are the
   one direction that might still improve the start, while stepping past the larger edge would
   only try rates more likely to diverge. If none improves, :func:`choose` stops, prints a note,
   and marks :attr:`Run.no_rate_improved` (:func:`table` marks it ``!``); the starting weights
   are what such a contender is.
   The rate is chosen **per seed on that seed's validation split**, not once
   on a tuning seed: each seed then repeats the whole procedure a learner would follow (split,
   choose, train, score), so the spread over seeds, and the paired interval built on it, includes
   the noise of the choice itself, which a rate fixed once would hide.
5. **Tables that show it** (:func:`table`): per method the final grid and the rates chosen,
   steps kept and taken, epochs, converged on how many seeds, validation and test accuracy, and
   each contender's paired interval against a named baseline (:mod:`tlhelpers.compare`), with
   the gap this run could have detected. :func:`paired_against` returns those intervals as
   :class:`tlhelpers.compare.Paired` objects (``.verdict``, ``.mean``, ``.low``, ``.high``) for a
   notebook that acts on them; :func:`compared` words them (each value a string that also carries them).

Training a head on cached features (``training.cache_features``) and training through the
network use the same :func:`train`, so a probe and a fine-tuned network are judged alike.

The package is split by what each part holds: :mod:`~tlhelpers.protocol.splits` (the three
splits), :mod:`~tlhelpers.protocol.budget` (:class:`Budget`, :class:`Run`),
:mod:`~tlhelpers.protocol.runs` (:func:`train`, :func:`evaluate`, :func:`scores`),
:mod:`~tlhelpers.protocol.selection` (:func:`choose`, :func:`contest`) and
:mod:`~tlhelpers.protocol.tables` (:class:`Result`, :func:`table`); every name is also here.
"""

from tlhelpers.protocol import budget, runs, selection, splits, tables
from tlhelpers.protocol.budget import LAST_FRACTION, MIN_RATES, NO_RATE_IMPROVED, Budget, Run
from tlhelpers.protocol.runs import RECOMPUTE_BATCH, _optimizer, evaluate, scores, train
from tlhelpers.protocol.selection import Contested, best_of, choose, contest, grid_search
from tlhelpers.protocol.splits import SPLIT_NAMES, Splits, as_tensors, targets_of, three_splits
from tlhelpers.protocol.tables import Compared, Result, compared, paired_against, table

__all__ = ["LAST_FRACTION", "MIN_RATES", "NO_RATE_IMPROVED", "RECOMPUTE_BATCH", "SPLIT_NAMES", "Budget", "Compared",
           "Contested", "Result", "Run", "Splits", "_optimizer", "as_tensors", "best_of", "budget", "choose", "compared",
           "contest", "evaluate", "grid_search", "paired_against", "runs", "scores", "selection", "splits", "table",
           "tables", "targets_of", "three_splits", "train"]
