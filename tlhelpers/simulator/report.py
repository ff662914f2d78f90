"""What one simulated training step did, block by block, and how to say it in words.

These are plain data classes with no torch or widget dependency, so a report can be
printed, compared, stored as JSON (``to_dict``) or drawn by :mod:`tlhelpers.simulator.figure`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Cost:
    """Compute and memory of one forward/backward pass under one freezing configuration.

    These numbers depend only on the frozen set, the BatchNorm mode and the input shape, never
    on the weights. :class:`~tlhelpers.simulator.FreezeSim` measures each block once and adds
    the blocks up for any configuration (:mod:`tlhelpers.simulator.costs`);
    :func:`~tlhelpers.simulator.measure.measure_cost` measures one configuration whole.

    ``flow`` lists the blocks a gradient reaches, loss side first; ``stop_at`` is the block
    where backward stops (``None`` when it reaches the first block, or when no gradient is
    computed at all); ``pass_through`` the frozen blocks backward goes through.
    ``measure_ms`` is the time a whole measurement took (0.0 for a sum of stored measurements).
    """

    forward_flops: int
    backward_flops: int
    saved_activation_bytes: int
    flow: tuple[str, ...]
    stop_at: str | None
    pass_through: tuple[str, ...]
    measure_ms: float

    def flow_sentence(self, arrow: str = "->") -> str:
        """The backward path as a learner would say it (see :func:`describe_flow`)."""
        return describe_flow(self.flow, self.stop_at, arrow)


def describe_flow(flow: tuple[str, ...] | list[str], stop_at: str | None, arrow: str = "->") -> str:
    """Say where gradients go: "gradients flow through fc -> layer4 and stop at layer3".

    ``flow`` runs from the loss towards the input; ``stop_at`` is the first block backward does
    not enter. With nothing trainable there is no backward pass at all, and the sentence says so.
    """
    if not flow:
        return "no block is trainable, so no gradient is computed: backward has nothing to do"
    path = f" {arrow} ".join(flow)
    if stop_at is None:
        return f"gradients flow through {path}, all the way to the input"
    return f"gradients flow through {path} and stop at {stop_at}"


@dataclass(frozen=True)
class BlockReport:
    """One block's part in one step.

    ``grad_norm`` is ``None`` when no gradient reached the block's parameters (it is frozen),
    which is different from a computed gradient of size 0.0. ``pass_through`` marks a frozen
    block that backward still had to go through to reach trainable blocks before it: it costs
    compute but its weights get no gradient. ``weight_delta`` and ``bn_drift`` are L2 norms of
    the change of the block's parameters and of its BatchNorm running means during the step;
    ``frozen_delta`` the change of its parameters that do not require a gradient (it is 0.0
    unless the stale-gradient trap is on); ``distance`` how far its parameters are from where
    they started (all steps since the last reset). ``relative_grad`` is |g| / |w| over the
    trainable parameters. ``state`` is ``"t"`` trainable, ``"f"`` frozen, ``"d"`` frozen with
    BatchNorm in train mode, ``"a"`` frozen except its normalisation scale and shift.
    """

    name: str
    frozen: bool
    params: int
    trainable_params: int
    grad_norm: float | None
    weight_delta: float
    pass_through: bool
    bn_drift: float
    state: str = "t"
    frozen_delta: float = 0.0
    distance: float = 0.0
    relative_grad: float | None = None

    @property
    def moved_while_frozen(self) -> bool:
        """A frozen parameter changed anyway (the stale-gradient trap)."""
        return self.frozen and self.frozen_delta > 0.0


@dataclass(frozen=True)
class StepReport:
    """Everything one call of :meth:`FreezeSim.step` did.

    Totals: ``loss`` (before the update), ``backward_flops`` and ``saved_activation_bytes``
    (from ``cost``, measured once per configuration), ``trainable_params`` and ``step_ms``, the
    wall time of the bare forward/backward/optimizer step. ``measure_ms`` is the extra time
    spent measuring FLOPs and memory during this call (0 when the configuration was cached).
    ``baseline`` is the same measurement with every block trainable, to compare against.
    ``train_norm_affine``: frozen blocks trained their normalisation scale and shift.
    """

    step: int
    loss: float
    blocks: dict[str, BlockReport]
    cost: Cost
    baseline: Cost
    trainable_params: int
    total_params: int
    step_ms: float
    measure_ms: float
    bn_train_when_frozen: bool
    stale_gradients: bool
    frozen: tuple[str, ...] = field(default=())
    train_norm_affine: bool = False

    @property
    def backward_flops(self) -> int:
        return self.cost.backward_flops

    @property
    def forward_flops(self) -> int:
        return self.cost.forward_flops

    @property
    def saved_activation_bytes(self) -> int:
        return self.cost.saved_activation_bytes

    @property
    def flow(self) -> tuple[str, ...]:
        return self.cost.flow

    @property
    def stop_at(self) -> str | None:
        return self.cost.stop_at

    @property
    def moved_while_frozen(self) -> list[str]:
        """Frozen blocks whose weights changed in this step."""
        return [b.name for b in self.blocks.values() if b.moved_while_frozen]

    @property
    def drifted_while_frozen(self) -> list[str]:
        """Frozen blocks with nothing trainable whose BatchNorm running statistics changed."""
        return [b.name for b in self.blocks.values()
                if b.frozen and not b.trainable_params and b.bn_drift > 0.0]

    def flow_sentence(self, arrow: str = "->") -> str:
        """e.g. "gradients flow through classifier -> head_conv -> stage5 and stop at stage4"."""
        return self.cost.flow_sentence(arrow)

    def to_dict(self) -> dict:
        """A JSON-serialisable copy (blocks in input-to-output order)."""
        data = asdict(self)
        data["blocks"] = [asdict(b) for b in self.blocks.values()]
        data["flow_sentence"] = self.flow_sentence()
        return data
