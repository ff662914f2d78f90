"""Exercise checks for 04 · Training a new head.

Each check calls the function the learner wrote on objects it builds itself (a torchvision
classifier on the meta device, a fresh head on the learner's cached features, a small layer)
and compares with a reference it computes from those objects: ``training.fit`` for the loop,
the arithmetic of one SGD step for the zero-gradient question. It says what is wrong, never the
code that would be right.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from tlhelpers.exercises import Exercise, Wrong, register

# --------------------------------------------------------------------------- q1: freeze and replace

def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def _freeze_and_replace(freeze_and_replace) -> str:
    import torchvision

    said = []
    for arch, num_classes in (("mobilenet_v2", 7), ("resnet18", 3)):
        with torch.device("meta"):
            model = torchvision.models.get_model(arch, weights=None)
            head_name, old = _last_linear(model)
            try:
                new = freeze_and_replace(model, num_classes)
            except Exception as error:     # name the architecture it failed on (ResNet has no `classifier`)
                raise Wrong(f"on {arch} your function raised {type(error).__name__}: {error}") from None
        if new is None:
            raise Wrong("freeze_and_replace returned None: `return` the new head layer")
        if not isinstance(new, nn.Linear):
            raise Wrong(f"freeze_and_replace returned a {type(new).__name__}; return the new nn.Linear head")
        if new is old:
            raise Wrong(f"on {arch} the returned layer is the old head: build a new layer for the new classes")
        try:
            placed = model.get_submodule(head_name)
        except AttributeError:
            placed = None
        if placed is not new:
            raise Wrong(f"on {arch} the layer you returned is not where the head was ({head_name!r}): "
                        "the model still uses another layer there")
        if new.in_features != old.in_features:
            raise Wrong(f"on {arch} the new head takes {new.in_features} inputs; it must take what the old "
                        "head took")
        if new.out_features != num_classes:
            raise Wrong(f"on {arch} asked for {num_classes} classes, the new head gives {new.out_features}")
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        if trainable != [f"{head_name}.weight", f"{head_name}.bias"]:
            extra = [n for n in trainable if not n.startswith(head_name + ".")]
            raise Wrong(f"on {arch} the trainable parameters are {extra[:3] or trainable} ...: only the new "
                        "head's weight and bias may train")
        with torch.device("meta"):
            out = model.eval()(torch.empty(2, 3, 224, 224))
        if tuple(out.shape) != (2, num_classes):
            raise Wrong(f"on {arch} a forward pass gives shape {tuple(out.shape)}, not (2, {num_classes})")
        said.append(f"{arch} ({head_name})")
    return f"frozen backbone and a new trainable head on {' and '.join(said)}"


q1 = Exercise("freeze the backbone and replace the head", _freeze_and_replace, names=("freeze_and_replace",),
              hint="first every parameter's requires_grad to False; the head is the model's last nn.Linear "
                   "(.named_modules() gives each layer's dotted name); put a new layer under the same "
                   "name in its parent module (.get_submodule, setattr). A new layer trains by default.")


# --------------------------------------------------------------------------- q2: keep the best, stop early

MAX_EPOCHS, PATIENCE, LR = 40, 3, 3e-3


class _Counting:
    """A DataLoader that counts how many times it was iterated (one epoch each)."""

    def __init__(self, loader: DataLoader):
        self.loader, self.passes = loader, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def _setup(train_features, val_features, device):
    torch.manual_seed(0)
    width = train_features.tensors[0].shape[1]
    classes = int(max(train_features.tensors[1].max(), val_features.tensors[1].max())) + 1
    head = nn.Linear(width, classes).to(device)
    train_loader = DataLoader(train_features, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(val_features, batch_size=500)
    return head, train_loader, val_loader, torch.optim.Adam(head.parameters(), lr=LR)


def _no_fit(*args, **kwargs):
    raise Wrong("your function called training.fit: write the loop yourself (train_one_epoch and evaluate "
                "from the notebook may help)")


def _fit_with_patience(fit_with_patience, train_features, val_features) -> str:
    from tlhelpers import runtime, training

    device = runtime.pick_device()
    reference_head, train_loader, val_loader, optimizer = _setup(train_features, val_features, device)
    reference = training.fit(reference_head, train_loader, val_loader, optimizer, MAX_EPOCHS, device=device,
                             keep_best="val_acc", patience=PATIENCE, progress=False)
    head, train_loader, val_loader, optimizer = _setup(train_features, val_features, device)
    counted = _Counting(train_loader)
    saved_fit, training.fit = training.fit, _no_fit
    try:
        said = fit_with_patience(head, counted, val_loader, optimizer, MAX_EPOCHS, PATIENCE)
    finally:
        training.fit = saved_fit
    if said is None:
        raise Wrong("fit_with_patience returned None: `return` the number of the epoch whose weights the head holds")
    best, ran = reference.best_epoch("val_acc"), len(reference)
    if counted.passes != ran:
        more = "more" if counted.passes > ran else "fewer"
        raise Wrong(f"your loop ran {counted.passes} epochs, {more} than it should with max_epochs={MAX_EPOCHS} and "
                    f"patience={PATIENCE}: stop once `patience` epochs in a row brought no new best (and never "
                    "run past max_epochs)")
    if said != best:
        raise Wrong(f"you returned epoch {said!r}, which is not the epoch with the best validation accuracy "
                    "(a tie with an earlier best is not a new best; epochs count from 1)")
    if not all(torch.allclose(a, b, atol=1e-6) for a, b in
               zip(head.state_dict().values(), reference_head.state_dict().values(), strict=False)):
        raise Wrong("the head does not hold the weights of its best epoch: keep a deep copy of the state_dict "
                    "when validation improves, and load it back at the end")
    return (f"best epoch {best}, stopped after {ran} of at most {MAX_EPOCHS} epochs; the same epochs and weights "
            "as training.fit(keep_best='val_acc', patience=...)")


q2 = Exercise("keep the best epoch and stop early", _fit_with_patience,
              names=("fit_with_patience", "train_features", "val_features"),
              hint="one epoch = train_one_epoch, then evaluate on validation; remember the best accuracy, its "
                   "epoch and a copy.deepcopy of the model's state_dict(); count the epochs since the last new best and "
                   "break when that count reaches patience.")


# --------------------------------------------------------------------------- q3: a zero gradient and weight decay

STEP_LR = 0.1


def _zero_gradient_step(frozen_weight_moved) -> str:
    moved = {}
    for decay in (0.0, 0.01):
        torch.manual_seed(0)
        layer = nn.Linear(8, 3)
        start = layer.weight.detach().clone()
        value = frozen_weight_moved(layer, decay)
        if value is None:
            raise Wrong("frozen_weight_moved returned None: `return` how far the weight moved (a float)")
        try:
            moved[decay] = float(value)
        except (TypeError, ValueError):
            raise Wrong(f"frozen_weight_moved returned a {type(value).__name__}; return a float, e.g. a norm's .item()") from None
        if layer.weight.requires_grad:
            raise Wrong("after your function the layer's weight still requires a gradient: freeze it after the "
                        "backward pass, before the step")
        actual = (layer.weight.detach() - start).norm().item()
        if abs(actual - moved[decay]) > 1e-6:
            raise Wrong(f"with weight_decay={decay} you returned {moved[decay]:.6f}, but the layer's weight moved "
                        f"{actual:.6f} from where it started: measure the change of layer.weight")
        expected = STEP_LR * decay * start.norm().item()
        if abs(moved[decay] - expected) > 1e-6 * max(1.0, expected):
            if decay == 0.0:
                raise Wrong("with plain SGD (no momentum, no weight decay) the frozen weight moved: did the backward "
                            "pass or the step happen after freezing, or with another learning rate than 0.1?")
            if moved[decay] == 0.0:
                raise Wrong("with weight_decay=0.01 the frozen weight did not move at all: the optimizer skipped it. "
                            "The question is about a zero-FILLED gradient, not a gradient set to None")
            raise Wrong(f"with weight_decay={decay} the weight moved {moved[decay]:.6f}: one plain SGD step "
                        "(lr=0.1, momentum 0) after a zero-filled gradient should move it another amount")
    return (f"a zero-filled gradient moved the frozen weight {moved[0.0]:.4f} under plain SGD and {moved[0.01]:.4f} "
            "with weight decay 0.01")


q3 = Exercise("a zero gradient and weight decay", _zero_gradient_step, names=("frozen_weight_moved",),
              hint="forward a random batch, backward (now the weight has a .grad), freeze the weight, "
                   "optimizer.zero_grad(set_to_none=False), one step; compare the weight before and after the step.")

register(globals())
