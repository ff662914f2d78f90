"""FreezeSim: freeze and unfreeze blocks of a real network and watch one real training step.

Pure PyTorch, no widgets (the face is :class:`tlhelpers.simulator.view.FreezeView`). Each
:meth:`FreezeSim.step` runs a genuine forward pass, backward pass and optimizer update on a
small batch, then reports per block what the gradient did and what changed.

The simulator works on its own copy of the model you pass, so stepping never changes your
model. With the default batch (ten-class Fashion-MNIST) a head with another number of outputs,
such as an ImageNet head, is replaced by a fresh seeded 10-class head, as transfer learning
would. Pass ``batch=(images, labels)`` to use your own data and keep your head as it is.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections import OrderedDict
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from tlhelpers import freezing, models
from tlhelpers.simulator.batch import check_batch, default_batch
from tlhelpers.simulator.measure import measure_cost
from tlhelpers.simulator.report import BlockReport, Cost, StepReport

OPTIMIZERS = {"sgd": 0.01, "adam": 0.001}  # name -> default learning rate
STATE_KEYS = ("frozen", "seed", "bn_train_when_frozen", "stale_gradients", "optimizer", "lr", "momentum")


def resolve_blocks(model: nn.Module, blocks: Mapping[str, Sequence[str] | str] | None
                   ) -> OrderedDict[str, list[str]]:
    """Check ``blocks`` (name -> module names, input to output) against ``model``.

    ``None`` means :func:`tlhelpers.models.layer_groups`. A block may name one module as a
    plain string. Unknown modules, blocks without parameters and parameters claimed by two
    blocks are errors that say which block and what to do.
    """
    if blocks is None:
        return models.layer_groups(model)
    if not blocks:
        raise ValueError("blocks is empty; give at least one block name -> module names")
    modules = dict(model.named_modules())
    resolved: OrderedDict[str, list[str]] = OrderedDict()
    owner: dict[int, str] = {}
    for name, members in blocks.items():
        members = [members] if isinstance(members, str) else list(members)
        missing = [m for m in members if m not in modules or m == ""]
        if missing or not members:
            top = ", ".join(n for n, _ in model.named_children())
            raise KeyError(f"Block {name!r} names module(s) {missing or members} that the model does not "
                           f"have. Use dotted module names; top-level modules are: {top}")
        params = [p for m in members for p in modules[m].parameters()]
        if not params:
            raise ValueError(f"Block {name!r} ({', '.join(members)}) has no parameters to freeze")
        for p in params:
            if id(p) in owner and owner[id(p)] != name:
                raise ValueError(f"Blocks {owner[id(p)]!r} and {name!r} share parameters; "
                                 "each parameter must belong to one block")
            owner[id(p)] = name
        resolved[name] = members
    return resolved


class FreezeSim:
    """A real network, split into blocks you can freeze, stepping on a small real batch.

    Parameters
    ----------
    model:
        Any classifier; it is copied, never changed.
    blocks:
        Ordered mapping block name -> module names, input to output. Default:
        :func:`tlhelpers.models.layer_groups` (MobileNetV2: stem, stage1..stage5, head_conv,
        classifier; ResNet: stem, layer1..layer4, fc).
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
        run in eval mode (:func:`tlhelpers.freezing.frozen_bn_eval`) and keep the pretrained
        statistics. True: they stay in train mode and their running statistics drift although
        the block is "frozen".
    stale_gradients:
        Teaching switch. False (default): the optimizer holds only trainable parameters and
        gradients are reset to ``None``. True: the optimizer was built over all parameters
        before freezing and uses ``zero_grad(set_to_none=False)``, so a block frozen after it
        trained keeps moving on its momentum.
    """

    def __init__(self, model: nn.Module, blocks: Mapping[str, Sequence[str] | str] | None = None,
                 batch: tuple[torch.Tensor, torch.Tensor] | None = None, optimizer: str = "sgd",
                 lr: float | None = None, momentum: float = 0.9, seed: int = 0, *,
                 frozen: Sequence[str] | None = None, bn_train_when_frozen: bool = False,
                 stale_gradients: bool = False, batch_size: int = 8, image_size: int = 64):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = copy.deepcopy(model)
        self.blocks = resolve_blocks(self.model, blocks)
        self._set_optimizer_settings(optimizer, lr, momentum)
        self._seed = self._check_seed(seed)
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
        if frozen is None:
            frozen = [name for name in self.blocks if not any(p.requires_grad for p in self._params_of(name))]
        else:
            self._check_blocks(frozen)
        self._head_replaced = False
        self._fit_head()
        self._frozen: set[str] = set()
        for name in self.blocks:
            self.set_frozen(name, name in frozen)
        self._bn_train_when_frozen = bool(bn_train_when_frozen)
        self._stale_gradients = bool(stale_gradients)
        self._start = self._snapshot()
        self._optimizer: torch.optim.Optimizer | None = None
        self._costs: dict[tuple, Cost] = {}
        self.history: list[StepReport] = []

    # ------------------------------------------------------------------ configuration

    @property
    def block_names(self) -> list[str]:
        """Block names, input to output."""
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
    def step_count(self) -> int:
        """Steps taken since the start or the last :meth:`reset`."""
        return len(self.history)

    def set_frozen(self, name: str, frozen: bool) -> None:
        """Freeze (``requires_grad=False``) or unfreeze every parameter of block ``name``."""
        self._check_blocks([name])
        for p in self._params_of(name):
            p.requires_grad_(not frozen)
        (self._frozen.add if frozen else self._frozen.discard)(name)

    def trainable_params(self) -> int:
        """Scalar parameters that currently get gradients."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # ------------------------------------------------------------------ measuring

    def cost(self) -> Cost:
        """FLOPs, saved activations and gradient path of the current configuration (cached)."""
        key = (frozenset(self._frozen), self._bn_train_when_frozen and bool(self._frozen),
               tuple(self.images.shape))
        if key not in self._costs:
            self._apply_modes()
            self._costs[key] = measure_cost(self.model, lambda: self._loss(self.step_count + 1),
                                            self.blocks)
        return self._costs[key]

    def baseline(self) -> Cost:
        """The same measurement with every block trainable: what freezing is compared with."""
        key = (frozenset(), False, tuple(self.images.shape))
        if key not in self._costs:
            frozen = self.frozen
            try:
                for name in frozen:
                    self.set_frozen(name, False)
                self._costs[key] = self.cost()
            finally:
                for name in frozen:
                    self.set_frozen(name, True)
                self._apply_modes()
        return self._costs[key]

    def clear_measurements(self) -> None:
        """Forget the cached costs (current configurations and baseline): they are re-measured
        on the next :meth:`step` or :meth:`cost`, e.g. to time measuring in benchmarks."""
        self._costs.clear()

    # ------------------------------------------------------------------ stepping

    def step(self) -> StepReport:
        """One real training step on the batch; returns what it did to every block.

        FLOPs and saved-activation bytes are measured on the first step of each configuration
        (``measure_ms`` says how long that took) and reused afterwards, so ordinary steps run
        bare and ``step_ms`` times only the forward, backward and optimizer update.
        """
        measured_before = len(self._costs)
        measure_start = time.perf_counter()
        baseline, cost = self.baseline(), self.cost()
        measured = len(self._costs) > measured_before
        measure_ms = (time.perf_counter() - measure_start) * 1000.0 if measured else 0.0
        self._apply_modes()
        optimizer = self._sync_optimizer()
        held = [p for group in optimizer.param_groups for p in group["params"]] if optimizer else []
        before = {id(p): p.detach().clone() for p in held}
        bn_before = {name: [m.running_mean.clone() for m in self._bn_layers(name) if m.training]
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
        )
        self.history.append(report)
        return report

    def reset(self) -> None:
        """Weights, BatchNorm statistics, optimizer and history back to the start.

        The frozen set and the teaching switches stay as they are: they are your experiment.
        """
        with torch.no_grad():
            self.model.load_state_dict(self._start)
        self.model.zero_grad(set_to_none=True)
        self._optimizer = None
        self.history = []

    # ------------------------------------------------------------------ saved scenarios

    def state(self) -> dict:
        """The scenario as a JSON-serialisable dict: frozen blocks, seed, switches, optimizer."""
        return {"frozen": [n for n in self.blocks if n in self._frozen], "seed": self._seed,
                "bn_train_when_frozen": self._bn_train_when_frozen,
                "stale_gradients": self._stale_gradients, "optimizer": self.optimizer_name,
                "lr": self.lr, "momentum": self.momentum}

    def load_state(self, state: Mapping) -> FreezeSim:
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
        if seed != self._seed:
            self._reseed(seed)
        for name in self.blocks:
            self.set_frozen(name, name in frozen)
        self.reset()
        return self

    @classmethod
    def from_state(cls, model: nn.Module, state: Mapping, **kwargs) -> FreezeSim:
        """A new simulator for ``model`` set up as ``state`` describes (see :meth:`state`)."""
        seed = kwargs.pop("seed", 0)
        if isinstance(state, Mapping):
            seed = state.get("seed", seed)
        return cls(model, seed=seed, **kwargs).load_state(state)

    def __repr__(self) -> str:
        trainable = [n for n in self.blocks if n not in self._frozen]
        return (f"FreezeSim({type(self.model).__name__}, step {self.step_count}, "
                f"frozen={[n for n in self.blocks if n in self._frozen]}, trainable={trainable})")

    # ------------------------------------------------------------------ internals

    def _check_blocks(self, names) -> None:
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in self.blocks]
        if unknown:
            raise KeyError(f"Unknown block {', '.join(map(repr, unknown))}. "
                           f"Valid blocks: {', '.join(self.blocks)}")

    @staticmethod
    def _check_seed(seed) -> int:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        return seed

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

    def _params_of(self, name: str) -> Iterator[nn.Parameter]:
        seen: set[int] = set()
        for module_name in self.blocks[name]:
            for p in self.model.get_submodule(module_name).parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def _bn_layers(self, name: str) -> list[nn.Module]:
        return [m for module_name in self.blocks[name]
                for m in self.model.get_submodule(module_name).modules()
                if isinstance(m, freezing.BATCHNORM_TYPES) and m.running_mean is not None]

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
            for name in self.blocks:  # the new head's parameters start trainable
                self.set_frozen(name, name in self._frozen)
        self._start = self._snapshot()
        self._costs.clear()

    def _apply_modes(self) -> None:
        self.model.train()
        if not self._bn_train_when_frozen:
            freezing.frozen_bn_eval(self.model)

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
        if self.optimizer_name == "sgd":
            new = torch.optim.SGD(wanted, lr=self.lr, momentum=self.momentum)
        else:
            new = torch.optim.Adam(wanted, lr=self.lr)
        if old is not None:
            for p in wanted:
                if p in old.state:
                    new.state[p] = old.state[p]
        self._optimizer = new
        return new

    def _loss(self, step: int) -> torch.Tensor:
        with _seeded(self._seed * 100_003 + step):
            output = self.model(self.images)
        if not isinstance(output, torch.Tensor):  # Inception/GoogLeNet return (logits, aux...)
            output = getattr(output, "logits", output[0])
        return F.cross_entropy(output, self.labels)

    def _block_report(self, name: str, cost: Cost, before: dict[int, torch.Tensor],
                      bn_before: list[torch.Tensor]) -> BlockReport:
        params = list(self._params_of(name))
        grads = [p.grad.detach() for p in params if p.requires_grad and p.grad is not None]
        deltas = [p.detach() - before[id(p)] for p in params if id(p) in before]
        after = [m.running_mean for m in self._bn_layers(name) if m.training]
        drifts = [a - b for a, b in zip(after, bn_before)]
        return BlockReport(
            name=name, frozen=name in self._frozen, params=sum(p.numel() for p in params),
            trainable_params=sum(p.numel() for p in params if p.requires_grad),
            grad_norm=_norm(grads) if grads else None,
            weight_delta=_norm(deltas), pass_through=name in cost.pass_through,
            bn_drift=_norm(drifts),
        )


def _norm(tensors: list[torch.Tensor]) -> float:
    """L2 norm of all elements of ``tensors`` together (0.0 for none)."""
    if not tensors:
        return 0.0
    return float(torch.nn.utils.get_total_norm(tensors, norm_type=2.0))


@contextlib.contextmanager
def _seeded(seed: int):
    """Run with torch's CPU generator seeded, leaving the caller's random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
