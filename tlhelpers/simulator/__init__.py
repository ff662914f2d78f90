"""The freeze-toggle simulator: freeze blocks of a real network, take real steps, see why.

* :class:`FreezeSim` (``sim.py``): pure PyTorch, no widget code. Freeze/unfreeze blocks;
  ``step()`` runs one forward/backward/optimizer step on a small real batch and returns a
  :class:`StepReport`. What a configuration costs is measured once per block
  (``measure.py``) and summed for any configuration (``costs.py``).
* :class:`FreezeView` (``view.py``): its face, an anywidget whose JavaScript and CSS ship in
  ``static/``. Toggles redraw in the browser from the per-block table; steps, training, A/B,
  the gradient ranking and the architecture picker run in the kernel. Notebook 02 embeds it;
  ``notebooks/simulator.ipynb`` is the standalone (Voila) page, where ``scenario.py``'s
  strings live in the page address.
* :func:`save_snapshot` (``figure.py``, matplotlib only): the same state as a PNG for readers
  without a kernel; ``python -m tlhelpers.simulator snapshot`` writes the course's copy.

``FreezeView`` and the drawing helpers are imported on first use, so ``FreezeSim`` works
without loading ipywidgets, anywidget or matplotlib.
"""

from tlhelpers.simulator.batch import Batch, default_batch
from tlhelpers.simulator.report import BlockReport, Cost, StepReport, describe_flow
from tlhelpers.simulator.sim import FreezeSim

__all__ = ["FreezeSim", "FreezeView", "StepReport", "BlockReport", "Cost", "Batch",
           "default_batch", "describe_flow", "save_snapshot"]

_LAZY = {"FreezeView": "tlhelpers.simulator.view", "save_snapshot": "tlhelpers.simulator.figure"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlhelpers.simulator' has no attribute {name!r}")
