"""Exercise checks for 05 · Fine-tuning.

The learner writes the three pieces of fine-tuning in plain PyTorch: unfreeze the last blocks
(:data:`q1`), one learning rate per group of parameters (:data:`q2`) and the training step
under the "frozen-eval" BatchNorm policy (:data:`q3`; the notebook's own loop keeps every
BatchNorm in eval(), so the exercise writes the other policy). Each check builds its own model (a MobileNetV2 on the meta device, which costs no
memory, or a tiny real network for the step), calls the learner's function on it, and compares
with a reference it computes from that model; it never prints the answer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tlhelpers.exercises import Exercise, Wrong, register


def _mobilenet() -> nn.Module:
    import torchvision

    with torch.device("meta"):
        return torchvision.models.mobilenet_v2(weights=None, num_classes=7)


def _trainable(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- q1: unfreeze

def _unfreeze_last(unfreeze_last) -> str:
    blocks = None
    for k in (3, 1):
        model = _mobilenet()                      # everything trainable, as torchvision builds it
        unfreeze_last(model, k)
        blocks = len(model.features)
        expected = {f"features.{i}.{rest}" for i in range(blocks - k, blocks)
                    for rest, _ in model.features[i].named_parameters()}
        expected |= {f"classifier.{name}" for name, _ in model.classifier.named_parameters()}
        got = _trainable(model)
        if not got:
            raise Wrong(f"with k={k} nothing trains: the last k blocks and the classifier must")
        if not {f"classifier.{name}" for name, _ in model.classifier.named_parameters()} <= got:
            raise Wrong(f"with k={k} the classifier (the new head) is frozen: it must train too")
        extra = sorted(got - expected, key=lambda n: list(dict(model.named_parameters())).index(n))
        if extra:
            raise Wrong(f"with k={k}, {len(extra)} parameter tensors outside the last k blocks still train "
                        f"(e.g. {extra[0]}): a fresh torchvision model has every parameter trainable")
        missing = sorted(expected - got)
        if missing:
            raise Wrong(f"with k={k}, {len(missing)} parameter tensors of the last k blocks stay frozen "
                        f"(e.g. {missing[0]}): count the blocks from the end of `model.features`")
    return f"for k=3 and k=1 exactly the last k of the {blocks} blocks of model.features and the classifier train"


q1 = Exercise("unfreeze the last k blocks", _unfreeze_last, names=("unfreeze_last",),
              hint="`requires_grad_(False)` on a module freezes all its parameters; an `nn.Sequential` "
                   "such as `model.features` can be sliced, and a negative index counts from its end.")


# --------------------------------------------------------------------------- q2: param groups

def _param_groups(param_groups) -> str:
    checked = 0
    for first, head_lr, decay in ((15, 3e-3, 0.5), (17, 2e-2, 0.25)):
        model = _mobilenet()
        model.requires_grad_(False)
        model.features[first:].requires_grad_(True)
        model.classifier.requires_grad_(True)
        groups = param_groups(model, head_lr, decay)
        if groups is None:
            raise Wrong("param_groups returned None: build the list of groups and `return` it")
        groups = list(groups)
        if not groups or not all(isinstance(g, dict) and "params" in g for g in groups):
            raise Wrong("return a list of dicts, each with the key 'params' (what torch.optim.AdamW takes)")
        if any("lr_scale" in g for g in groups):
            raise Wrong("a group holds 'lr_scale': torch.optim ignores that key silently; give each group "
                        "its own 'lr'")
        if not all("lr" in g for g in groups):
            raise Wrong("a group has no 'lr' of its own, so it would train at the optimizer's default rate")
        try:
            torch.optim.AdamW(groups, lr=1.0)
        except (ValueError, TypeError) as error:
            raise Wrong(f"torch.optim.AdamW refuses these groups: {error}") from None
        names = {id(p): name for name, p in model.named_parameters()}
        seen: dict[str, float] = {}
        for group in groups:
            for p in group["params"]:
                name = names.get(id(p))
                if name is None:
                    raise Wrong("a group holds a tensor that is not a parameter of `model`")
                if not p.requires_grad:
                    raise Wrong(f"a group holds the frozen parameter {name}: only trainable ones belong in "
                                "the optimizer")
                seen[name] = float(group["lr"])
        missing = sorted(_trainable(model) - set(seen))
        if missing:
            raise Wrong(f"{len(missing)} trainable parameter tensors are in no group (e.g. {missing[0]}): "
                        "they would never be updated")
        blocks = len(model.features)
        for name, lr in seen.items():
            if name.startswith("classifier."):
                expected, where = head_lr, "the head"
            else:
                index = int(name.split(".")[1])
                expected, where = head_lr * decay ** (blocks - index), f"block {index} of model.features"
            if abs(lr - expected) > 1e-9 * max(1.0, expected):
                raise Wrong(f"{name} ({where}) trains at lr {lr:g}, not at its rate: the head gets head_lr, and "
                            "each block below it one more factor `decay` than the block above")
        checked += len(seen)
    return (f"every trainable tensor ({checked} over two models) in one group with its own lr, the head at head_lr "
            "and each block one factor of decay below the block above it")


q2 = Exercise("param groups with their own learning rates", _param_groups,
              names=("param_groups",),
              hint="number the blocks with `enumerate(model.features)`: the block just below the head is the "
                   "last one, and each block further down multiplies by `decay` once more; a block with no "
                   "trainable parameter gets no group.")


# --------------------------------------------------------------------------- q3: the step

def _tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(6, 4))
    for layer in (model[1], model[4]):        # statistics unlike any batch's, so moving them shows
        layer.running_mean.uniform_(-1, 1, generator=generator)
        layer.running_var.uniform_(0.5, 2, generator=generator)
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)             # the frozen bottom (its BatchNorm frozen); the rest trains,
    model.eval()                               # model[4] a BatchNorm layer with trainable weight and bias
    images = torch.randn(16, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 4, (16,), generator=generator)
    return model, images, labels


def _setup():
    model, images, labels = _tiny()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.grad = torch.full_like(p, 0.5)       # stale gradients from an earlier step
    return model, torch.optim.SGD(trainable, lr=0.1), images, labels


def _reference(zero_grad: bool = True, dropout: bool = True):
    """One step under "frozen-eval": train mode, then the frozen BatchNorm layer (model[1]) in eval()."""
    model, optimizer, images, labels = _setup()
    torch.manual_seed(11)
    model.train()
    model[1].eval()
    if not dropout:
        model[8].eval()
    if zero_grad:
        optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return model, loss.item()


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=False))


def _train_step(train_step) -> str:
    model, optimizer, images, labels = _setup()
    frozen, trainable = model[1], model[4]
    stats = copy.deepcopy([(m.running_mean, m.running_var) for m in (frozen, trainable)])
    torch.manual_seed(11)
    loss = train_step(model, optimizer, images, labels)
    if loss is None:
        raise Wrong("train_step returned None: return the batch's loss")
    reference, reference_loss = _reference()
    moved = [not (torch.equal(mean, m.running_mean) and torch.equal(var, m.running_var))
             for (mean, var), m in zip(stats, (frozen, trainable), strict=True)]
    if moved[0]:
        raise Wrong("the frozen BatchNorm layer's running statistics moved: it was in train mode during the step, "
                    "as `model.train()` leaves every BatchNorm layer (every BatchNorm in train mode is the "
                    "\"train\" policy, not \"frozen-eval\")")
    if not moved[1]:
        raise Wrong("the BatchNorm layer whose weight and bias train kept its running statistics: it was in "
                    "eval() like the frozen one (every BatchNorm in eval() is the \"eval\" policy, not "
                    "\"frozen-eval\")")
    if not _same(model, reference):
        if _same(model, _reference(zero_grad=False)[0]):
            raise Wrong("the step added the gradients left from an earlier step to this batch's: clear them "
                        "before backward()")
        if _same(model, _reference(dropout=False)[0]):
            raise Wrong("Dropout was off during the step: the model must be in training mode, with only the "
                        "frozen BatchNorm layers switched to eval()")
        start = dict(_setup()[0].named_parameters())
        if all(torch.equal(p, start[name]) for name, p in model.named_parameters()):
            raise Wrong("the weights did not change: call the optimizer's step() after backward()")
        raise Wrong("the weights after your step differ from one training step on this batch with the "
                    "cross-entropy loss")
    try:
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    except (TypeError, ValueError):
        raise Wrong(f"train_step returned a {type(loss).__name__}; return the loss (a number or a "
                    "one-element tensor)") from None
    if abs(value - reference_loss) > 1e-5:
        raise Wrong("the loss returned is not the batch's cross-entropy loss computed in this step")
    return (f"one step: Dropout on, the frozen BatchNorm on its running statistics (unchanged), the trainable "
            f"one on the batch's (its running statistics updated), stale gradients cleared; loss {value:.3f}")


q3 = Exercise("the fine-tuning step under the \"frozen-eval\" policy", _train_step,
              names=("train_step",),
              hint="Dropout needs the model in training mode, but `model.train()` switches every BatchNorm "
                   "layer too: which of them go back to eval() under this policy, and what about a layer's "
                   "parameters tells you? An earlier step's gradients are also still stored in the parameters.")

register(globals())
