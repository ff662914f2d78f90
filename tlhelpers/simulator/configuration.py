"""The simulator's configuration: which blocks are frozen, the teaching switches, and what a
configuration trains and costs in parameters and memory.

A mixin of :class:`tlhelpers.simulator.sim.FreezeSim` (its state lives there: ``_blocks``,
``_frozen``, the switches); split out so each file holds one thing a reader can name:
configuration here, cost measurements in :mod:`~tlhelpers.simulator.measuring`, saved scenarios
in :mod:`~tlhelpers.simulator.saving`, stepping in :mod:`~tlhelpers.simulator.sim`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from tlhelpers import models
from tlhelpers.checks import integer

OPTIMIZERS = {"sgd": 0.01, "adam": 0.001}  # name -> default learning rate


class Configuration:
    """Frozen blocks, switches and optimizer settings of a :class:`~tlhelpers.simulator.sim.FreezeSim`."""

    @property
    def block_names(self) -> list[str]:
        """Block names, in the order the forward pass uses them (input to output)."""
        return list(self.blocks)

    @property
    def frozen(self) -> set[str]:
        """Names of the frozen blocks (a copy; change it with :meth:`set_frozen`)."""
        return set(self._frozen)

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def bn_train_when_frozen(self) -> bool:
        """Teaching switch: frozen BatchNorm layers stay in train mode (their statistics drift)."""
        return self._bn_train_when_frozen

    @bn_train_when_frozen.setter
    def bn_train_when_frozen(self, value: bool) -> None:
        self._bn_train_when_frozen = bool(value)

    @property
    def stale_gradients(self) -> bool:
        """Teaching switch: optimizer over all parameters, ``zero_grad(set_to_none=False)``."""
        return self._stale_gradients

    @stale_gradients.setter
    def stale_gradients(self, value: bool) -> None:
        self._stale_gradients = bool(value)

    @property
    def train_norm_affine(self) -> bool:
        """Switch: frozen blocks still train their normalisation layers' scale and shift."""
        return self._train_norm_affine

    @train_norm_affine.setter
    def train_norm_affine(self, value: bool) -> None:
        self._train_norm_affine = bool(value)
        self._apply_trainability()

    @property
    def step_count(self) -> int:
        """Steps taken since the start or the last :meth:`reset`."""
        return len(self.history)

    @property
    def head_block(self) -> str:
        """The block that holds the classification head (the last block if none is found)."""
        try:
            head_name, _ = models.find_head(self.model)
        except models.HeadNotFoundError:
            return self.block_names[-1]
        weight = f"{head_name}.weight"
        return next((b.name for b in self._resolved if weight in b.parameters), self.block_names[-1])

    def set_frozen(self, name: str, frozen: bool) -> None:
        """Freeze (``requires_grad=False``) or unfreeze every parameter of block ``name``."""
        self._check_blocks([name])
        (self._frozen.add if frozen else self._frozen.discard)(name)
        self._apply_trainability()

    def block_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """The parameters block ``name`` owns, by qualified name."""
        self._check_blocks([name])
        named = dict(self.model.named_parameters())
        return {p: named[p] for p in self._blocks[name].parameters}

    def norm_parameter_names(self, name: str) -> tuple[str, ...]:
        """The block's normalisation scale and shift parameters (what ``train_norm_affine`` trains)."""
        self._check_blocks([name])
        return self._norm_params[name]

    def has_batchnorm(self, name: str) -> bool:
        """Whether the block holds BatchNorm layers with running statistics."""
        self._check_blocks([name])
        return self._bn_blocks[name]

    def states_for(self, frozen, bn_train_when_frozen: bool | None = None,
                   train_norm_affine: bool | None = None) -> dict[str, str]:
        """Each block's state in a configuration (switches left out: the current ones).

        ``"t"`` trainable, ``"f"`` frozen, ``"d"`` frozen with BatchNorm drifting (train mode),
        ``"a"`` frozen but its normalisation scale and shift train (see ``train_norm_affine``).
        """
        frozen = set(frozen)
        self._check_blocks(list(frozen))
        bn = self._bn_train_when_frozen if bn_train_when_frozen is None else bn_train_when_frozen
        affine = self._train_norm_affine if train_norm_affine is None else train_norm_affine
        states = {}
        for name in self.blocks:
            if name not in frozen:
                states[name] = "t"
            elif affine and self._norm_params[name]:
                states[name] = "a"
            elif bn and self._bn_blocks[name]:
                states[name] = "d"
            else:
                states[name] = "f"
        return states

    def block_state(self, name: str) -> str:
        """This block's state now (see :meth:`states_for`)."""
        return self.block_states()[name]

    def block_states(self) -> dict[str, str]:
        return self.states_for(self._frozen)

    def frozen_states(self) -> dict[str, str]:
        """The state each block would have if frozen, under the current switches."""
        return self.states_for(self.blocks)

    def trainable_params(self, states: dict[str, str] | None = None) -> int:
        """Scalar parameters that get gradients now (or in ``states``)."""
        if states is None:
            return sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return sum(p.numel() for _, p in self._trainable_in(states))

    def training_memory(self, states: dict[str, str] | None = None) -> dict[str, int]:
        """Bytes training needs beyond the model: activations saved for backward (summed per
        block), one gradient per trainable parameter, and the optimizer's state for them.

        Left out: short-lived buffers inside the forward and backward pass (see
        ``benchmarks/README.md`` for how far a step's measured peak goes above this).
        """
        states = self.block_states() if states is None else states
        gradients = sum(p.numel() * p.element_size() for _, p in self._trainable_in(states))
        return {"activations": self.cost(states).saved_activation_bytes,
                "gradients": gradients, "optimizer": self.optimizer_slots() * gradients}

    def _trainable_in(self, states: dict[str, str]) -> list[tuple[str, nn.Parameter]]:
        named = dict(self.model.named_parameters())
        chosen = []
        for name, state in states.items():
            if state == "t":
                names = self._blocks[name].parameters
            else:
                names = self._norm_params[name] if state == "a" else ()
            chosen.extend((p, named[p]) for p in names)
        return chosen

    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def optimizer_slots(self) -> int:
        """Tensors of optimizer state per trainable parameter: SGD with momentum 1, without 0; Adam 2."""
        if self.optimizer_name == "adam":
            return 2
        return 1 if self.momentum else 0

    def _check_blocks(self, names) -> None:
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in self.blocks]
        if unknown:
            raise KeyError(f"Unknown block {', '.join(map(repr, unknown))}. "
                           f"Valid blocks: {', '.join(self.blocks)}")

    @staticmethod
    def _check_seed(seed) -> int:
        return integer(seed, "seed")

    def _set_optimizer_settings(self, optimizer: str, lr: float | None, momentum: float) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, "
                             f"got {optimizer!r}")
        lr = OPTIMIZERS[optimizer] if lr is None else lr
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        self.optimizer_name, self.lr, self.momentum = optimizer, float(lr), float(momentum)
        self._optimizer = None

    def _apply_states(self, states: Mapping[str, str]) -> None:
        """``requires_grad`` and train/eval modes for per-block ``states`` (one rule for the step
        and for measuring): trainable blocks train everything; "a" blocks only their normalisation
        scale and shift; frozen blocks nothing, their BatchNorm in eval mode unless state "d".
        Parameters outside every block stay frozen."""
        named = dict(self.model.named_parameters())
        wanted: set[str] = set()
        for name, state in states.items():
            if state == "t":
                wanted.update(self._blocks[name].parameters)
            elif state == "a":
                wanted.update(self._norm_params[name])
        for pname, p in named.items():
            p.requires_grad_(pname in wanted)
        self.model.train()
        for name, state in states.items():
            if state == "f":
                for layer in self._bn_layers[name]:
                    layer.eval()

    def _apply_trainability(self) -> None:
        self._apply_states(self.block_states())

