"""FreezeSim: freeze and unfreeze blocks of a real network and watch real training steps.

Pure PyTorch, no widgets (the face is :class:`tlhelpers.simulator.view.FreezeView`). Each
:meth:`FreezeSim.step` runs a genuine forward pass, backward pass and optimizer update on a
small batch, then reports per block what the gradient did and what changed.

The simulator works on its own copy of the model you pass, so stepping never changes your
model. With the default batch (ten-class Fashion-MNIST) a head with another number of outputs,
such as an ImageNet head, is replaced by a fresh seeded 10-class head, as transfer learning
would. Pass ``batch=(images, labels)`` to use your own data and keep your head as it is.
Auxiliary classifiers (Inception v3's ``AuxLogits``, GoogLeNet's ``aux1``/``aux2``) are removed
from the copy: the simulator's loss uses the main output only, so they could never get a
gradient (torchvision builds the same models with ``aux_logits=False``).

What a step costs (backward FLOPs, activations saved for backward) is measured once per block
and per case (see :mod:`tlhelpers.simulator.costs`), after which every configuration's cost is
a sum: toggling blocks never re-measures anything.

The class is split along its seams: configuration (frozen blocks, switches, what trains) in
:mod:`~tlhelpers.simulator.configuration`, cost measurements in
:mod:`~tlhelpers.simulator.measuring`, saved scenarios in :mod:`~tlhelpers.simulator.saving`;
construction and stepping here.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from tlhelpers import models
from tlhelpers.checks import integer
from tlhelpers.simulator.batch import check_batch, default_batch
from tlhelpers.simulator.blocks import (
    Block,
    Layout,
    block_batchnorms,
    forward_layout,
    norm_parameters,
    ordered,
    resolve_blocks,
)
from tlhelpers.simulator.configuration import Configuration
from tlhelpers.simulator.costs import CostTable
from tlhelpers.simulator.measuring import Measuring, total_norm
from tlhelpers.simulator.report import BlockReport, Cost, StepReport
from tlhelpers.simulator.saving import Saving
from tlhelpers.training import build_optimizer


class FreezeSim(Configuration, Measuring, Saving):
    """A real network, split into blocks you can freeze, stepping on a small real batch.

    Parameters
    ----------
    model:
        Any classifier; it is copied, never changed.
    blocks:
        Mapping block name -> members, each a module name or a parameter name (as
        :func:`tlhelpers.freezing.resolve` reads them). Default:
        :func:`tlhelpers.models.layer_groups` (MobileNetV2: stem, stage1..stage5, head_conv,
        classifier; ResNet: stem, layer1..layer4, fc). The simulator lists blocks in the order
        the forward pass uses them, and parameters outside every block stay frozen.
    batch:
        ``(images, labels)``. Default: 8 seeded Fashion-MNIST images at 64 px (see
        :func:`tlhelpers.simulator.batch.default_batch`), with the head replaced for 10 classes
        when it has another number of outputs.
    optimizer, lr, momentum:
        ``"sgd"`` (default lr 0.01, with ``momentum``) or ``"adam"`` (default lr 0.001).
    seed:
        Chooses the default batch, initialises a replaced head and seeds dropout, so the same
        clicks give the same numbers.
    frozen:
        Blocks frozen at the start. Default: the blocks whose parameters are all frozen in
        ``model`` (a block counts as frozen only when all its parameters are).
    bn_train_when_frozen:
        Teaching switch. False (default, the right practice): frozen blocks' BatchNorm layers
        run in eval mode and keep the pretrained statistics. True: they stay in train mode and
        their running statistics drift although the block is "frozen".
    stale_gradients:
        Teaching switch. False (default): the optimizer holds only trainable parameters and
        gradients are reset to ``None``. True: the optimizer was built over all parameters
        before freezing and uses ``zero_grad(set_to_none=False)``, so a block frozen after it
        trained keeps moving on its momentum.
    train_norm_affine:
        Parameter-efficient switch: frozen blocks still train the scale and shift (``weight``,
        ``bias``) of their normalisation layers (BatchNorm, LayerNorm, GroupNorm), whose
        BatchNorm layers then run in train mode (the TinyTL / BitFit family of methods).
    """

    def __init__(self, model: nn.Module, blocks: Mapping[str, Sequence[str] | str] | None = None,
                 batch: tuple[torch.Tensor, torch.Tensor] | None = None, optimizer: str = "sgd",
                 lr: float | None = None, momentum: float = 0.9, seed: int = 0, *,
                 frozen: Sequence[str] | None = None, bn_train_when_frozen: bool = False,
                 stale_gradients: bool = False, train_norm_affine: bool = False,
                 batch_size: int = 8, image_size: int = 64):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._set_optimizer_settings(optimizer, lr, momentum)
        self._seed = self._check_seed(seed)
        self.model = copy.deepcopy(model)
        _drop_aux_heads(self.model)
        resolved = resolve_blocks(self.model, models.layer_groups(self.model) if blocks is None else blocks)
        named = dict(self.model.named_parameters())
        if frozen is None:
            frozen = [b.name for b in resolved if not any(named[p].requires_grad for p in b.parameters)]
        else:
            frozen = [frozen] if isinstance(frozen, str) else list(frozen)
            unknown = [n for n in frozen if n not in {b.name for b in resolved}]
            if unknown:
                raise KeyError(f"Unknown block {', '.join(map(repr, unknown))}. "
                               f"Valid blocks: {', '.join(b.name for b in resolved)}")
        device = next(self.model.parameters()).device
        self._own_batch = batch is None
        self._batch_size, self._image_size = batch_size, image_size
        if self._own_batch:
            made = default_batch(batch_size, image_size, seed)
            images, labels, self.classes = made.images, made.labels, made.classes
        else:
            images, labels = check_batch(batch)
            self.classes = None
        self.images, self.labels = images.to(device), labels.to(device)
        self._head_replaced = False
        self._fit_head()
        self._resolved = resolved
        self._lay_out()
        self._frozen: set[str] = set(frozen)
        self._bn_train_when_frozen = bool(bn_train_when_frozen)
        self._stale_gradients = bool(stale_gradients)
        self._train_norm_affine = bool(train_norm_affine)
        self._apply_trainability()
        self._start = self._snapshot()
        self._optimizer: torch.optim.Optimizer | None = None
        self._table: CostTable | None = None
        self._table_shape: tuple | None = None
        self.history: list[StepReport] = []
































    # ------------------------------------------------------------------ stepping

    def step(self) -> StepReport:
        """One real training step on the batch; returns what it did to every block.

        The cost of the configuration comes from the per-block measurements (taken on the
        first step, ``measure_ms`` says how long that took), so the step itself runs bare and
        ``step_ms`` times only the forward, backward and optimizer update.
        """
        measure_start = time.perf_counter()
        measuring = self.needs_measuring()
        baseline, cost = self.baseline(), self.cost()
        measure_ms = (time.perf_counter() - measure_start) * 1000.0 if measuring else 0.0
        self._apply_states(self.block_states())
        optimizer = self._sync_optimizer()
        held = [p for group in optimizer.param_groups for p in group["params"]] if optimizer else []
        before = {id(p): p.detach().clone() for p in held}
        bn_before = {name: [m.running_mean.clone() for m in self._bn_layers[name] if m.training]
                     for name in self.blocks}

        start = time.perf_counter()
        if optimizer is not None and self._stale_gradients:
            optimizer.zero_grad(set_to_none=False)
        else:
            self.model.zero_grad(set_to_none=True)
        loss = self._loss(self.step_count + 1)
        if loss.requires_grad:  # with nothing trainable there is nothing to backpropagate
            loss.backward()
            if optimizer is not None:
                optimizer.step()
        step_ms = (time.perf_counter() - start) * 1000.0

        blocks = OrderedDict((name, self._block_report(name, cost, before, bn_before[name]))
                             for name in self.blocks)
        report = StepReport(
            step=self.step_count + 1, loss=float(loss.detach()), blocks=blocks, cost=cost,
            baseline=baseline, trainable_params=self.trainable_params(),
            total_params=self.total_params(), step_ms=step_ms, measure_ms=measure_ms,
            bn_train_when_frozen=self._bn_train_when_frozen, stale_gradients=self._stale_gradients,
            frozen=tuple(n for n in self.blocks if n in self._frozen),
            train_norm_affine=self._train_norm_affine,
        )
        self.history.append(report)
        return report

    def train(self, steps: int, on_step: Callable[[StepReport], None] | None = None) -> list[StepReport]:
        """Take ``steps`` steps; ``on_step(report)`` is called after each (the widget draws there)."""
        steps = integer(steps, "steps", 1)
        reports = []
        for _ in range(steps):
            reports.append(self.step())
            if on_step is not None:
                on_step(reports[-1])
        return reports

    def trial(self, state: Mapping, steps: int) -> list[StepReport]:
        """Run ``steps`` steps from the start under scenario ``state`` (see :meth:`state`), on the
        same batch and seed, then put everything back as it was: weights, optimizer, history,
        configuration. This is the A/B comparison: two trials differ only in ``state``."""
        if "seed" in state and state["seed"] != self._seed:
            raise ValueError("a trial runs on the simulator's own batch and seed; leave 'seed' out of state")
        steps = integer(steps, "steps", 1)
        saved_state, weights = self.state(), self._snapshot()
        optimizer, history = self._optimizer, self.history
        try:
            self.load_state(state)
            return self.train(steps)
        finally:
            self.load_state(saved_state)
            with torch.no_grad():
                self.model.load_state_dict(weights)
            self._optimizer, self.history = optimizer, history

    def reset(self) -> None:
        """Weights, BatchNorm statistics, optimizer and history back to the start.

        The frozen set and the switches stay as they are: they are your experiment.
        """
        with torch.no_grad():
            self.model.load_state_dict(self._start)
        self.model.zero_grad(set_to_none=True)
        self._optimizer = None
        self.history = []

    def __repr__(self) -> str:
        trainable = [n for n in self.blocks if n not in self._frozen]
        return (f"FreezeSim({type(self.model).__name__}, step {self.step_count}, "
                f"frozen={[n for n in self.blocks if n in self._frozen]}, trainable={trainable})")

    # ------------------------------------------------------------------ internals

    def _lay_out(self) -> None:
        """Order the blocks as the forward pass uses them and cut it into segments."""
        with contextlib.ExitStack() as stack:
            modes = [(m, m.training) for m in self.model.modules()]
            stack.callback(lambda: [setattr(m, "training", t) for m, t in modes])
            self.model.eval()
            self.layout: Layout = forward_layout(self.model, self._resolved, lambda: self.model(self.images))
        self._blocks: OrderedDict[str, Block] = ordered(self._resolved, self.layout)
        self.blocks: OrderedDict[str, list[str]] = OrderedDict(
            (name, list(block.members)) for name, block in self._blocks.items())
        self._norm_params = {name: norm_parameters(self.model, b) for name, b in self._blocks.items()}
        self._bn_layers = {name: block_batchnorms(self.model, b) for name, b in self._blocks.items()}
        self._bn_blocks = {name: bool(layers) for name, layers in self._bn_layers.items()}

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _fit_head(self) -> None:
        """With the default batch, give the model a seeded head with one output per class."""
        if not self._own_batch:
            return
        try:
            _, head = models.find_head(self.model)
        except models.HeadNotFoundError as error:
            raise ValueError(f"{error} Or pass batch=(images, labels) that fits your model's "
                             "outputs; the simulator then leaves the head alone.") from None
        outputs = head.out_features if isinstance(head, nn.Linear) else head.out_channels
        if outputs != len(self.classes) or self._head_replaced:
            with _seeded(self._seed):
                models.replace_head(self.model, len(self.classes))
            self._head_replaced = True

    def _reseed(self, seed: int) -> None:
        """New seed: new default batch and a newly initialised replaced head."""
        self._seed = seed
        with torch.no_grad():
            self.model.load_state_dict(self._start)
        if self._own_batch:
            made = default_batch(self._batch_size, self._image_size, seed)
            self.images, self.labels = made.images.to(self.images.device), made.labels.to(self.labels.device)
            self._fit_head()
            self._lay_out()  # the new head is a new module: hooks and BatchNorm lists follow it
        self._apply_trainability()
        self._start = self._snapshot()
        self._table = None

    def _sync_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer for this step, rebuilt when the parameters it must hold change.

        Default: only trainable parameters (what ``filter(lambda p: p.requires_grad, ...)``
        gives), momentum carried over for parameters that stay. Stale-gradient scenario: all
        parameters, built once, as if created before anything was frozen.
        """
        if self._stale_gradients:
            wanted = list(self.model.parameters())
        else:
            wanted = [p for p in self.model.parameters() if p.requires_grad]
        if not wanted:
            return None
        old = self._optimizer
        held = [id(p) for group in old.param_groups for p in group["params"]] if old is not None else None
        if held == [id(p) for p in wanted]:
            return old
        new = build_optimizer(wanted, self.optimizer_name, self.lr, momentum=self.momentum,
                              trainable_only=not self._stale_gradients)
        if old is not None:
            for p in wanted:
                if p in old.state:
                    new.state[p] = old.state[p]
        self._optimizer = new
        return new

    def _loss(self, step: int) -> torch.Tensor:
        with _seeded(self._seed * 100_003 + step):
            output = self.model(self.images)
        if not isinstance(output, torch.Tensor):  # a model that returns (logits, extras...)
            output = getattr(output, "logits", output[0])
        return F.cross_entropy(output, self.labels)

    def _block_report(self, name: str, cost: Cost, before: dict[int, torch.Tensor],
                      bn_before: list[torch.Tensor]) -> BlockReport:
        params = [self.model.get_parameter(p) for p in self._blocks[name].parameters]
        start = [self._start[p] for p in self._blocks[name].parameters]
        trainable = [p for p in params if p.requires_grad]
        grads = [p.grad.detach() for p in trainable if p.grad is not None]
        deltas = [p.detach() - before[id(p)] for p in params if id(p) in before]
        frozen_deltas = [p.detach() - before[id(p)] for p in params
                         if id(p) in before and not p.requires_grad]
        after = [m.running_mean for m in self._bn_layers[name] if m.training]
        drifts = [a - b for a, b in zip(after, bn_before, strict=True)]
        weight = total_norm([p.detach() for p in trainable])
        return BlockReport(
            name=name, frozen=name in self._frozen, params=sum(p.numel() for p in params),
            trainable_params=sum(p.numel() for p in trainable),
            grad_norm=total_norm(grads) if grads else None,
            weight_delta=total_norm(deltas), pass_through=name in cost.pass_through,
            bn_drift=total_norm(drifts), state=self.block_state(name), frozen_delta=total_norm(frozen_deltas),
            distance=total_norm([p.detach() - s for p, s in zip(params, start, strict=True)]),
            relative_grad=total_norm(grads) / weight if grads and weight > 0 else None,
        )


def _drop_aux_heads(model: nn.Module) -> None:
    """Remove auxiliary classifiers: the simulator's loss uses the main output only."""
    for name in models.AUX_HEADS:
        if isinstance(getattr(model, name, None), nn.Module):
            setattr(model, name, None)
    if getattr(model, "aux_logits", False):
        model.aux_logits = False


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run with torch's CPU generator seeded, leaving the caller's random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
