"""What a configuration of the simulator costs: per-block measurements summed, a whole-pass
check, and the relative gradients Auto-RGN reads.

A mixin of :class:`tlhelpers.simulator.sim.FreezeSim` (see :mod:`~tlhelpers.simulator.configuration`
for how the class is split).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from tlhelpers.simulator.costs import CostTable
from tlhelpers.simulator.measure import measure_cases, measure_cost, untouched
from tlhelpers.simulator.report import Cost


class Measuring:
    """Cost tables and measurements of a :class:`~tlhelpers.simulator.sim.FreezeSim`."""

    def cost_table(self, states: Mapping[str, str] | None = None) -> CostTable:
        """Per-block measurements for the current input shape: every case any configuration
        can reach under the current switches (or, given ``states``, at least that configuration's
        cases), measured on first use."""
        shape = tuple(self.images.shape)
        if self._table is None or self._table_shape != shape:
            blocks = [tuple(s.blocks) for s in self.layout.segments]
            self._table = CostTable(self.layout.order, tuple(blocks),
                                    frozenset(b for b in self.blocks if self._blocks[b].is_parameter_block))
            self._table_shape = shape
        passes = self._table.missing(self.frozen_states())
        if states is not None:
            passes += self._table.missing_for(states)
        if passes:
            measured = measure_cases(self.model, lambda: self._loss(self.step_count + 1), self._blocks,
                                     self.layout, passes, self._apply_states)
            self._table.merge(measured)
            self._apply_states(self.block_states())
        return self._table

    def needs_measuring(self) -> bool:
        """Whether the next :meth:`cost` will first measure blocks (a new input shape or switch)."""
        if self._table is None or self._table_shape != tuple(self.images.shape):
            return True
        return bool(self._table.missing(self.frozen_states()))

    def cost(self, states: dict[str, str] | None = None) -> Cost:
        """FLOPs, saved activations and gradient path of the current configuration (or of
        ``states``, see :meth:`states_for`), summed from the per-block measurements."""
        states = self.block_states() if states is None else states
        return self.cost_table(states).cost(states)

    def baseline(self) -> Cost:
        """The same with every block trainable: what freezing is compared with."""
        return self.cost_table().cost({name: "t" for name in self.blocks})

    def measure_configuration(self) -> Cost:
        """Measure the current configuration in one whole forward and backward pass (no sum).

        Slower than :meth:`cost`, and independent of it: the tests and the benchmark compare
        the two.
        """
        self._apply_states(self.block_states())
        return measure_cost(self.model, lambda: self._loss(self.step_count + 1), self._blocks, self.layout)

    def clear_measurements(self) -> None:
        """Forget the per-block measurements: they are taken again on the next :meth:`cost` or
        :meth:`step`, e.g. to time measuring in benchmarks."""
        self._table = None

    def relative_gradients(self) -> dict[str, float]:
        """|g| / |w| per block for the next step, as if every block were trainable.

        One full forward and backward pass on the current weights, with BatchNorm modes as the
        current configuration sets them; nothing changes (no update, statistics restored).
        This is the signal Auto-RGN (Lee et al. 2023, "Surgical fine-tuning") uses to pick the
        blocks to fine-tune: the block whose weights would move most, relative to their size.
        """
        self._apply_states(self.block_states())
        named = dict(self.model.named_parameters())
        params = {name: [named[p] for p in block.parameters] for name, block in self._blocks.items()}
        with untouched(self.model):
            for group in params.values():
                for p in group:
                    p.requires_grad_(True)
            loss = self._loss(self.step_count + 1)
            flat = [p for group in params.values() for p in group]
            grads = dict(zip(map(id, flat), torch.autograd.grad(loss, flat, allow_unused=True), strict=True))
        result = {}
        for name, group in params.items():
            got = [grads[id(p)] for p in group if grads[id(p)] is not None]
            weight = total_norm([p.detach() for p in group])
            result[name] = total_norm(got) / weight if got and weight > 0 else 0.0
        return result



def total_norm(tensors: list[torch.Tensor]) -> float:
    """L2 norm of all elements of ``tensors`` together (0.0 for none)."""
    if not tensors:
        return 0.0
    return float(torch.nn.utils.get_total_norm(tensors, norm_type=2.0))
