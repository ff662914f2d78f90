"""Any configuration's cost as a sum of per-block measurements, and the path its backward pass takes.

Freezing decides two things per block: whether its parameters get gradients, and whether
backward has to enter it at all. Both follow from the frozen set along the chain of blocks
(see :mod:`tlhelpers.simulator.blocks`):

* a block's *input needs a gradient* when any block before it has trainable parameters;
* a block is *on the backward path* when it has trainable parameters, or when it has an
  input and that input needs a gradient (it is then *pass-through*: backward computes the
  gradient of its input, not of its weights); a parameter block (ViT's ``class_token``) is
  on the path only when it trains;
* backward *stops at* the block just before the earliest block on the path.

So one segment's cost depends only on its *case*: whether its input needs a gradient, and the
state of its blocks (:data:`~tlhelpers.simulator.measure.STATES`). :func:`measure_cases`
measures every case once; a configuration's cost is then a sum:

* backward FLOPs: the sum of each segment's FLOPs in its case. Exact: the backward pass runs
  the same operations with the same shapes whether it is taken in one piece or per segment.
* saved activation bytes: each segment's own saved storages, plus each storage at a border
  between two segments once if either neighbour saves it. Exact as long as only neighbours
  share saved storages, which the measurement checks for the gradient graph
  (:class:`~tlhelpers.simulator.measure.ChainError`); ``tests/test_simulator_costs.py``
  compares the sum with a whole-configuration measurement for random configurations.

The widget's JavaScript (``static/freeze_view.js``, ``configurationCost`` and ``backwardPath``)
repeats these two rules on the same table, so the browser can redraw a toggle on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tlhelpers.simulator.measure import TRAINING_STATES, CaseCost, CaseMeasurement, case_key, is_idle
from tlhelpers.simulator.report import Cost


def backward_path(order: Sequence[str], parameter_blocks: frozenset[str] | set[str],
                  states: Mapping[str, str]) -> tuple[tuple[str, ...], str | None, tuple[str, ...]]:
    """(flow, stop_at, pass_through) for blocks in forward ``order`` in ``states``.

    ``flow`` runs from the loss towards the input; ``stop_at`` is the block just before the
    earliest block on the path (``None`` when that is the first block, or nothing trains).
    """
    on_path, seen_training = [], False
    for name in order:
        training = states[name] in TRAINING_STATES
        if training or (seen_training and name not in parameter_blocks):
            on_path.append(name)
        seen_training = seen_training or training
    flow = tuple(reversed(on_path))
    earliest = order.index(on_path[0]) if on_path else None
    stop_at = order[earliest - 1] if earliest else None
    pass_through = tuple(n for n in on_path if states[n] not in TRAINING_STATES)
    return flow, stop_at, pass_through


@dataclass
class CostTable:
    """Measured cases per segment; ``cost(states)`` adds them up for one configuration.

    ``segments`` holds each segment's blocks in forward order (the first is the prelude,
    which may hold none); ``cases[i]`` maps case keys to :class:`CaseCost` and grows as
    cases are measured; ``input_bytes[i]`` are the sizes of the storages entering segment i.
    """

    order: tuple[str, ...]
    segments: tuple[tuple[str, ...], ...]
    parameter_blocks: frozenset[str]
    input_bytes: tuple[tuple[int, ...], ...] = ()
    forward_flops: int = 0
    cases: list[dict[str, CaseCost]] = field(default_factory=list)
    measure_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.cases:
            self.cases = [{} for _ in self.segments]

    def keys(self, states: Mapping[str, str]) -> list[str]:
        """The case key of every segment in the configuration ``states``."""
        keys, seen_training = [], False
        for blocks in self.segments:
            segment_states = [states[name] for name in blocks]
            keys.append(case_key(seen_training, segment_states))
            seen_training = seen_training or any(s in TRAINING_STATES for s in segment_states)
        return keys

    def possible_keys(self, frozen_state: Mapping[str, str]) -> list[list[str]]:
        """Per segment, every non-idle case any configuration can reach when each block is
        either trainable (``"t"``) or in its frozen state ``frozen_state[block]``."""
        result, before = [], False
        for blocks in self.segments:
            keys = []
            for needs_grad in ((False, True) if before else (False,)):
                combos = [[]]
                for name in blocks:
                    combos = [c + [s] for c in combos for s in ("t", frozen_state[name])]
                keys.extend(k for k in (case_key(needs_grad, c) for c in combos) if not is_idle(k))
            result.append(sorted(set(keys)))
            before = before or bool(blocks)
        return result

    def missing(self, frozen_state: Mapping[str, str]) -> list[dict[int, str]]:
        """Passes of not yet measured cases for :meth:`possible_keys`, as ``measure_cases`` wants them."""
        todo = [[k for k in keys if k not in self.cases[i]]
                for i, keys in enumerate(self.possible_keys(frozen_state))]
        depth = max((len(keys) for keys in todo), default=0)
        return [{i: keys[j] for i, keys in enumerate(todo) if j < len(keys)} for j in range(depth)]

    def missing_for(self, states: Mapping[str, str]) -> list[dict[int, str]]:
        """The not yet measured cases one configuration needs, as one pass (or none)."""
        wanted = {i: key for i, key in enumerate(self.keys(states))
                  if not is_idle(key) and key not in self.cases[i]}
        return [wanted] if wanted else []

    def merge(self, measured: CaseMeasurement) -> None:
        """Add newly measured cases (and, the first time, the border sizes and forward FLOPs)."""
        for mine, new in zip(self.cases, measured.cases, strict=True):
            mine.update(new)
        if not self.input_bytes or not any(self.input_bytes):
            self.input_bytes = measured.input_bytes
        if measured.forward_flops is not None and not self.forward_flops:
            self.forward_flops = measured.forward_flops
        self.measure_ms += measured.measure_ms

    def block_costs(self, states: Mapping[str, str]) -> list[tuple[str | None, int, int]]:
        """Per segment: (first block or None for the prelude, backward FLOPs, saved bytes)."""
        rows, previous = [], None
        for index, (blocks, key) in enumerate(zip(self.segments, self.keys(states), strict=True)):
            case = None if is_idle(key) else self._case(index, key)
            saved = case.own_bytes if case else 0
            for j, size in enumerate(self.input_bytes[index] if index < len(self.input_bytes) else ()):
                if (case and case.saves_input[j]) or (previous and previous.saves_output[j]):
                    saved += size
            rows.append((blocks[0] if blocks else None, case.backward_flops if case else 0, saved))
            previous = case
        return rows

    def cost(self, states: Mapping[str, str]) -> Cost:
        """The cost of the configuration ``states`` (block -> state), summed from measured cases."""
        rows = self.block_costs(states)
        flow, stop_at, pass_through = backward_path(self.order, self.parameter_blocks, states)
        return Cost(forward_flops=self.forward_flops, backward_flops=sum(r[1] for r in rows),
                    saved_activation_bytes=sum(r[2] for r in rows), flow=flow, stop_at=stop_at,
                    pass_through=pass_through, measure_ms=0.0)

    def _case(self, index: int, key: str) -> CaseCost:
        try:
            return self.cases[index][key]
        except KeyError:
            where = ", ".join(self.segments[index]) or "prelude"
            raise KeyError(f"case {key!r} of segment {index} ({where}) has not been measured yet") from None

    def to_json(self) -> dict:
        """The table as plain JSON for the browser (booleans as 0/1 to keep it small)."""
        return {
            "order": list(self.order),
            "parameterBlocks": sorted(self.parameter_blocks),
            "forwardFlops": self.forward_flops,
            "segments": [
                {"blocks": list(blocks),
                 "inputBytes": list(self.input_bytes[i]) if i < len(self.input_bytes) else [],
                 "cases": {key: [c.backward_flops, c.own_bytes, [int(b) for b in c.saves_input],
                                 [int(b) for b in c.saves_output]]
                           for key, c in sorted(self.cases[i].items())}}
                for i, blocks in enumerate(self.segments)],
        }
