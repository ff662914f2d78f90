"""The freeze-toggle simulator: freeze blocks of a real network, take a real step, see why.

* :class:`FreezeSim` (``sim.py``): pure PyTorch. Freeze/unfreeze blocks, ``step()`` runs one
  forward/backward/optimizer step on a small real batch and returns a :class:`StepReport`.
* :class:`FreezeView` (``view.py``): the ipywidgets face, for notebook 02 and the Voila page.

``FreezeView`` and the drawing helpers are imported on first use, so ``FreezeSim`` works
without loading ipywidgets or matplotlib.
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
