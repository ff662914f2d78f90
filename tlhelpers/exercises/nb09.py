"""Exercise checks for 09 · Adapting cheaply.

``q1``: BatchNorm re-estimation written by hand (Schneider et al.'s idea), compared with
:func:`tlhelpers.robust.reestimate_batchnorm` on a small network the check builds.
``q2``: bias-only training over the whole network (no cached bottom): the learner leaves exactly
the BatchNorm shifts and the head trainable; the check then measures, on that model, what one
step keeps for backward against biases trained above stage 3 only.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tlhelpers.exercises import Exercise, Wrong, register


def _small_network() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):      # statistics of another distribution, as pretrained ones are
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return net.eval()


def _reestimate(reestimate) -> str:
    from tlhelpers import robust

    net = _small_network()
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    reference = copy.deepcopy(net)
    robust.reestimate_batchnorm(reference, images)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    yours = reestimate(net, images)
    if yours is not None and yours is not net:
        raise Wrong("reestimate changes the model it is given, in place (return it or nothing)")
    norms = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    wanted = dict(reference.named_modules())
    for name, module in norms:
        if torch.allclose(module.running_mean, _small_network().get_submodule(name).running_mean):
            raise Wrong(f"BatchNorm {name!r} still holds its old running mean: the statistics must come from "
                        "the images given")
        for stat in ("running_mean", "running_var"):
            if not torch.allclose(getattr(module, stat), getattr(wanted[name], stat), atol=1e-4, rtol=1e-4):
                raise Wrong(f"BatchNorm {name!r}'s {stat} is not the statistic of the images given: is the old "
                            "value still mixed in (`momentum` decides how much of it stays), or did Dropout run "
                            "(only BatchNorm layers go to train mode)?")
    if any(not torch.equal(p, before[name]) for name, p in net.named_parameters()):
        raise Wrong("a parameter changed: re-estimation changes BatchNorm's running statistics (buffers) only")
    if net.training or any(m.training for m in net.modules()):
        raise Wrong("the model is left in train mode: put it back in eval mode before returning")
    return (f"the running statistics of {len(norms)} BatchNorm layers equal tlhelpers.robust.reestimate_batchnorm's, "
            "no parameter moved, the model is back in eval mode")


q1 = Exercise("BatchNorm re-estimation by hand", _reestimate, names=("reestimate",),
              hint="for each nn.BatchNorm2d: reset_running_stats() and momentum=None (a plain average); run the "
                   "images through in train mode without gradients (torch.no_grad()), with Dropout still off; "
                   "then eval().")


def _bias_only_everywhere(bias_only_everywhere) -> str:
    import torchvision

    from tlhelpers import freezing
    from tlhelpers.simulator.measure import saved_bytes

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10)      # every parameter trainable
    returned = bias_only_everywhere(model)
    if returned is None:
        raise Wrong("bias_only_everywhere returned None: return the parameters that will train")
    norms = {name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    wanted = {f"{n}.bias" for n in norms} | {name for name, _ in model.classifier.named_parameters(prefix="classifier")}
    training = {name for name, p in model.named_parameters() if p.requires_grad}
    if training - wanted:
        kinds = sorted({"a BatchNorm scale" if n.rsplit(".", 1)[0] in norms else "a convolution weight"
                        if "classifier" not in n else "?" for n in training - wanted})
        raise Wrong(f"{len(training - wanted)} parameters train that should stay frozen (for example "
                    f"{kinds[0]}): freeze everything first")
    if wanted - training:
        missing = "of the head" if any(n.startswith("classifier") for n in wanted - training) else "BatchNorm shifts"
        raise Wrong(f"{len(wanted - training)} parameters that should train are frozen ({missing})")
    params = list(returned)
    if {id(p) for p in params} != {id(p) for p in model.parameters() if p.requires_grad}:
        raise Wrong("return exactly the trainable parameters (every BatchNorm bias and the head's parameters)")
    images, labels = torch.randn(8, 3, 64, 64), torch.arange(8) % 10
    model.train()
    freezing.set_bn_policy(model, "eval")

    def step(net):
        return lambda: nn.functional.cross_entropy(net(images), labels)

    everywhere = saved_bytes(step(model), exclude=model)
    above = copy.deepcopy(model)
    for module in above.features[:7].modules():
        if isinstance(module, nn.BatchNorm2d):
            module.bias.requires_grad_(False)
    upper = saved_bytes(step(above), exclude=above)
    return (f"{len(params)} tensors train; one step of 8 images at 64 px keeps {everywhere / 2**20:.1f} MiB for backward, "
            f"{everywhere / upper:.1f}x the {upper / 2**20:.1f} MiB of biases trained above stage 3 only")


q2 = Exercise("bias-only over the whole network", _bias_only_everywhere, names=("bias_only_everywhere",),
              hint="model.requires_grad_(False) first; then walk model.modules(), and for each nn.BatchNorm2d "
                   "switch on its bias only; the head is model.classifier. Return "
                   "[p for p in model.parameters() if p.requires_grad].")

register(globals())
