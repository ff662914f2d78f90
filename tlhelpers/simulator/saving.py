"""Saved scenarios: the simulator's configuration as a JSON-serialisable dict, and back.

A mixin of :class:`tlhelpers.simulator.sim.FreezeSim` (see :mod:`~tlhelpers.simulator.configuration`
for how the class is split).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from torch import nn

STATE_KEYS = ("frozen", "seed", "bn_train_when_frozen", "stale_gradients", "train_norm_affine",
              "optimizer", "lr", "momentum")


class Saving:
    """:meth:`state`, :meth:`load_state` and :meth:`from_state` of a :class:`~tlhelpers.simulator.sim.FreezeSim`."""

    def state(self) -> dict:
        """The scenario as a JSON-serialisable dict: frozen blocks, seed, switches, optimizer."""
        return {"frozen": [n for n in self.blocks if n in self._frozen], "seed": self._seed,
                "bn_train_when_frozen": self._bn_train_when_frozen,
                "stale_gradients": self._stale_gradients, "train_norm_affine": self._train_norm_affine,
                "optimizer": self.optimizer_name, "lr": self.lr, "momentum": self.momentum}

    def load_state(self, state: Mapping) -> Self:
        """Apply a scenario saved by :meth:`state` (keys left out keep their value), then reset.

        Everything is checked before anything changes: unknown keys raise ``ValueError``,
        unknown block names ``KeyError``.
        """
        if not isinstance(state, Mapping):
            raise TypeError("state must be a dict like FreezeSim.state() returns, "
                            f"got {type(state).__name__}")
        unknown = sorted(set(state) - set(STATE_KEYS))
        if unknown:
            raise ValueError(f"Unknown state keys {unknown}; valid keys: {', '.join(STATE_KEYS)}")
        frozen = state.get("frozen", self.frozen)
        if isinstance(frozen, str):
            raise TypeError(f"state['frozen'] must be a list of block names, got the string {frozen!r}")
        frozen = list(frozen)
        self._check_blocks(frozen)
        seed = self._check_seed(state.get("seed", self._seed))
        optimizer = state.get("optimizer", self.optimizer_name)
        lr = state.get("lr", self.lr if optimizer == self.optimizer_name else None)
        self._set_optimizer_settings(optimizer, lr, state.get("momentum", self.momentum))
        self._bn_train_when_frozen = bool(state.get("bn_train_when_frozen", self._bn_train_when_frozen))
        self._stale_gradients = bool(state.get("stale_gradients", self._stale_gradients))
        self._train_norm_affine = bool(state.get("train_norm_affine", self._train_norm_affine))
        if seed != self._seed:
            self._reseed(seed)
        self._frozen = set(frozen)
        self._apply_trainability()
        self.reset()
        return self

    @classmethod
    def from_state(cls, model: nn.Module, state: Mapping, **kwargs) -> Self:
        """A new simulator for ``model`` set up as ``state`` describes (see :meth:`state`)."""
        seed = kwargs.pop("seed", 0)
        if isinstance(state, Mapping):
            seed = state.get("seed", seed)
        return cls(model, seed=seed, **kwargs).load_state(state)

