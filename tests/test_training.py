"""tlhelpers.training: fit against a hand-written loop, checkpoints, schedulers, feature cache."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import copy
import math
import warnings

import pytest
import torch
import torchvision
from tiny import small_cnn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers import checkpoints, data, evaluation, freezing, models, runtime, training

WEIGHTS = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1


@pytest.fixture(scope="module")
def mobilenet_fashion():
    """Pretrained MobileNetV2 with a 10-class head, frozen backbone, 40 Fashion-MNIST images."""
    model, _ = models.load_model("mobilenet_v2", weights="IMAGENET1K_V1")
    models.replace_head(model, 10)
    freezing.freeze_backbone(model)
    transform = WEIGHTS.transforms(crop_size=32, resize_size=32)
    dataset = data.load_dataset("fashion-mnist", "train", per_class=4, seed=0, transform=transform)
    return model, dataset


def loaders(pair, batch_size=16):
    train, val = pair
    return DataLoader(train, batch_size=batch_size), DataLoader(val, batch_size=7)


def test_fit_matches_a_hand_written_loop(digits):
    train_loader, _ = loaders(digits)
    reference = small_cnn()
    model = copy.deepcopy(reference)

    torch.manual_seed(1)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(3):
        reference.train()
        for inputs, labels in train_loader:
            optimizer.zero_grad()
            loss_fn(reference(inputs), labels).backward()
            optimizer.step()

    torch.manual_seed(1)
    history = training.fit(model, train_loader, None, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                           3, progress=False)
    assert len(history) == 3 and history.epoch == [1, 2, 3]
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_history_accuracy_is_over_examples_not_batches(digits):
    train_loader, val_loader = loaders(digits)
    model = small_cnn()
    history = training.fit(model, train_loader, val_loader, torch.optim.Adam(model.parameters(), 1e-2), 2,
                           progress=False)
    _, val = digits
    with torch.inference_mode():
        model.eval()
        expected = (model(val.tensors[0]).argmax(1) == val.tensors[1]).float().mean().item()
    assert len(val) % 7 != 0  # the last batch is short, so a per-batch mean would differ
    assert history.val_acc[-1] == pytest.approx(expected)
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.best_epoch("val_loss") in (1, 2)
    assert "val_acc" in str(history)


def test_fit_keeps_frozen_batchnorm_statistics(mobilenet_fashion):
    model, dataset = mobilenet_fashion
    loader = DataLoader(dataset, batch_size=20)
    bn = model.features[1].conv[0][1]
    before = bn.running_mean.clone()
    _, head = models.find_head(model)
    training.fit(model, loader, None, torch.optim.SGD(head.parameters(), lr=0.01), 1, progress=False)
    assert torch.equal(bn.running_mean, before), "frozen BatchNorm moved under the default policy"
    training.fit(model, loader, None, torch.optim.SGD(head.parameters(), lr=0.01), 1, progress=False,
                 bn_policy="train")
    assert not torch.equal(bn.running_mean, before), "bn_policy='train' should update running stats"
    bn.running_mean.copy_(before)


def test_resume_refuses_another_architecture_or_class_count(digits, tmp_path):
    train_loader, _ = loaders(digits)
    path = tmp_path / "ten.pt"
    ten = small_cnn(10)
    training.fit(ten, train_loader, None, torch.optim.SGD(ten.parameters(), lr=0.05), 1, checkpoint=path,
                 progress=False)
    three = small_cnn(3)
    before = copy.deepcopy(three.state_dict())
    with pytest.raises(checkpoints.CheckpointMismatchError, match="10 classes.*3 classes.*Nothing was changed"):
        training.fit(three, train_loader, None, torch.optim.SGD(three.parameters(), lr=0.05), 2,
                     checkpoint=path, resume=True, progress=False)
    assert all(torch.equal(before[k], v) for k, v in three.state_dict().items())

    other = torchvision.models.mobilenet_v3_small(num_classes=10)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="Sequential.*MobileNetV3"):
        checkpoints.load_checkpoint(path, other)


def test_schedulers_and_param_groups(digits):
    train_loader, val_loader = loaders(digits)
    model = small_cnn()
    optimizer = torch.optim.SGD([
        {"params": model[6].parameters(), "lr": 0.1},
        {"params": [p for n, p in model.named_parameters() if not n.startswith("6.")], "lr": 0.01},
    ])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    history = training.fit(model, train_loader, val_loader, optimizer, 4, scheduler=scheduler, progress=False)
    assert history.lr == pytest.approx([0.1, 0.1, 0.01, 0.01])
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.0001)

    plateau_model = small_cnn()
    plateau_opt = torch.optim.SGD(plateau_model.parameters(), lr=1e-6)  # too small to improve the loss
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(plateau_opt, patience=0, factor=0.5)
    training.fit(plateau_model, train_loader, val_loader, plateau_opt, 3, scheduler=plateau, progress=False)
    assert plateau_opt.param_groups[0]["lr"] < 1e-6


def test_bad_arguments_are_named(digits):
    train_loader, _ = loaders(digits)
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="bn_policy"):
        training.fit(model, train_loader, None, optimizer, 1, bn_policy="freeze", progress=False)
    with pytest.raises(ValueError, match="epochs"):
        training.fit(model, train_loader, None, optimizer, -1, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        training.fit(model, DataLoader(TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0).long())),
                     None, optimizer, 1, progress=False)


def test_amp_on_cpu_warns_and_changes_nothing(digits):
    """amp=True on the CPU must train exactly as amp=False (it is ignored, with a warning)."""
    train_loader, _ = loaders(digits)
    runs = []
    for amp in (False, True):
        model = small_cnn()
        torch.manual_seed(1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            training.fit(model, train_loader, None, torch.optim.SGD(model.parameters(), lr=0.1), 1,
                         amp=amp, device="cpu", progress=False)
        assert any("amp=True needs CUDA" in str(w.message) for w in caught) == amp
        runs.append(model.state_dict())
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_amp_on_cuda_runs_in_float16_and_checkpoints_the_scaler(digits, tmp_path):
    train_loader, val_loader = loaders(digits)
    model = small_cnn()
    dtypes = []
    model[6].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype) if m.training else None)
    history = training.fit(model, train_loader, val_loader, torch.optim.SGD(model.parameters(), lr=0.1), 2,
                           amp=True, device="cuda", checkpoint=tmp_path / "amp.pt", progress=False)
    assert set(dtypes) == {torch.float16}, "autocast should run the Linear layer in float16"
    assert all(math.isfinite(v) for v in history.train_loss)
    scaler_state = checkpoints.read_checkpoint(tmp_path / "amp.pt")["scaler"]
    assert scaler_state and scaler_state["scale"] > 0


def test_seed_everything_makes_runs_repeat(digits):
    def run() -> list[float]:
        generator = runtime.seed_everything(7)
        model = small_cnn()
        loader = DataLoader(digits[0], batch_size=16, shuffle=True, generator=generator)
        return training.fit(model, loader, None, torch.optim.Adam(model.parameters(), 1e-2), 2,
                            progress=False).train_loss

    assert run() == run()


def test_pick_device_prefers_what_is_asked():
    assert runtime.pick_device("cpu") == torch.device("cpu")
    assert runtime.pick_device().type in {"cuda", "mps", "cpu"}


def test_cached_features_are_exactly_what_the_head_sees(mobilenet_fashion):
    model, dataset = mobilenet_fashion
    loader = DataLoader(dataset, batch_size=16)
    _, head = models.find_head(model)
    was_training = model.training
    features = training.cache_features(model, loader)
    assert models.find_head(model)[1] is head, "the head must be put back"
    assert model.training == was_training
    assert features.tensors[0].shape == (len(dataset), models.head_features(model))

    with torch.inference_mode():
        model.eval()
        full = torch.cat([model(x) for x, _ in loader])
        from_cache = head(features.tensors[0])
    torch.testing.assert_close(full, from_cache, rtol=1e-4, atol=1e-4)

    # Training on the cache trains the real head inside the model.
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    history = training.fit(head, DataLoader(features, batch_size=8), DataLoader(features, batch_size=40),
                           optimizer, 5, progress=False)
    assert history.val_acc[-1] == pytest.approx(evaluation.accuracy(model, loader), abs=1e-6)


def test_cache_features_restores_the_head_after_an_error(mobilenet_fashion):
    model, _ = mobilenet_fashion
    _, head = models.find_head(model)
    bad = DataLoader(TensorDataset(torch.zeros(2, 1, 32, 32), torch.zeros(2).long()))  # 1 channel: fails
    with pytest.raises(RuntimeError):
        training.cache_features(model, bad)
    assert models.find_head(model)[1] is head


def test_check_optimizer_quiet_for_fit_style_optimizer(mobilenet_fashion):
    model, _ = mobilenet_fashion
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert freezing.check_optimizer(optimizer, model) == ([], [])


def test_cache_features_runs_a_headless_backbone_whole(digits):
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    features = training.cache_features(backbone, DataLoader(digits[1], batch_size=16))
    assert features.tensors[0].shape == (len(digits[1]), 4)
    with torch.inference_mode():
        torch.testing.assert_close(features.tensors[0], backbone(digits[1].tensors[0]))


def test_bn_policy_eval_keeps_every_batchnorm_in_eval_while_it_learns(mobilenet_fashion):
    model, dataset = mobilenet_fashion
    freezing.unfreeze(model, "stage5")
    trainable_bn = dict(model.named_modules())["features.17.conv.1.1"]
    assert trainable_bn.weight.requires_grad
    stats, weight = trainable_bn.running_mean.clone(), trainable_bn.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    training.fit(model, DataLoader(dataset, batch_size=20), None, optimizer, 1, bn_policy="eval", progress=False)
    assert torch.equal(trainable_bn.running_mean, stats), "eval policy: running statistics kept"
    assert not torch.equal(trainable_bn.weight, weight), "its affine weight still learns"
    freezing.freeze(model, "stage5")


def test_per_batch_scheduler_and_every_groups_learning_rate(digits):
    train_loader, _ = loaders(digits)  # 200 images, batches of 16 -> 13 steps per epoch
    model = small_cnn()
    optimizer = torch.optim.SGD([{"params": model[6].parameters(), "lr": 0.1},
                                 {"params": [p for n, p in model.named_parameters() if not n.startswith("6.")],
                                  "lr": 0.01}], momentum=0.9)
    steps = len(train_loader)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[0.1, 0.01], total_steps=2 * steps)
    history = training.fit(model, train_loader, None, optimizer, 2, scheduler=one_cycle, scheduler_step="batch",
                           progress=False)
    assert one_cycle.last_epoch == 2 * steps, "the scheduler stepped once per batch"
    assert [len(lrs) for lrs in history.group_lrs] == [2, 2]
    assert history.group_lrs[1][0] == pytest.approx(history.group_lrs[1][1] * 10)
    assert history.lr == [lrs[0] for lrs in history.group_lrs]
    with pytest.raises(ValueError, match="ReduceLROnPlateau needs a metric"):
        training.fit(model, train_loader, None, optimizer, 1, scheduler_step="batch", progress=False,
                     scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer))


def test_no_device_sync_per_batch(digits, monkeypatch):
    """Reading a number off the device (.item(), .tolist()) happens per epoch, not per batch."""
    train, _ = digits
    reads = []
    for item_name in ("item", "tolist"):
        original = getattr(torch.Tensor, item_name)

        def counted(self, *args, _original=original, **kwargs):
            reads.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, item_name, counted)
    for batch_size in (100, 10):  # 2 batches vs 20 batches per epoch
        reads.clear()
        model = small_cnn()
        training.fit(model, DataLoader(train, batch_size=batch_size), None,
                     torch.optim.SGD(model.parameters(), lr=0.1), 1, progress=False)
        if batch_size == 100:
            few = len(reads)
    assert len(reads) == few, f"{few} reads with 2 batches but {len(reads)} with 20"


class TinyAuxNet(nn.Module):
    """Returns (logits, aux_logits) in train mode and logits in eval mode, like GoogLeNet."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU())
        self.fc = nn.Linear(16, 10)
        self.aux = nn.Linear(16, 10)

    def forward(self, x):
        features = self.body(x)
        if self.training:
            return torchvision.models.GoogLeNetOutputs(logits=self.fc(features), aux_logits2=self.aux(features), aux_logits1=None)
        return self.fc(features)


def test_train_and_validation_losses_are_the_same_loss_with_aux_heads(digits):
    train, _ = digits
    loader = DataLoader(train, batch_size=len(train))
    model = TinyAuxNet()
    history = training.fit(model, loader, loader, torch.optim.SGD(model.parameters(), lr=0.0), 1, progress=False)
    with torch.no_grad():
        model.train()
        out = model(train.tensors[0])
        main = nn.functional.cross_entropy(out.logits, train.tensors[1]).item()
        total = main + training.AUX_LOSS_WEIGHT * nn.functional.cross_entropy(out.aux_logits2, train.tensors[1]).item()
    assert history.train_loss[0] == pytest.approx(main, rel=1e-6)
    assert history.train_loss[0] != pytest.approx(total, rel=1e-3)
    assert history.val_loss[0] == pytest.approx(main, rel=1e-6), "no dropout/BN here: both see the same loss"


class DeviceSpy:
    """Records the devices a model is moved to, and moves it."""

    def __init__(self, model):
        self.moves = []
        original = model.to

        def to(*args, **kwargs):
            self.moves.append(torch.device(args[0]) if args else kwargs.get("device"))
            return original(*args, **kwargs)

        model.to = to


@pytest.mark.parametrize("call", ["predict", "cache_features"])
def test_an_explicit_device_moves_the_model_too(digits, call):
    model = small_cnn()
    spy = DeviceSpy(model)
    loader = DataLoader(digits[1], batch_size=32)
    if call == "predict":
        evaluation.predict(model, loader, device="cpu")
    else:
        training.cache_features(model, loader, device="cpu")
    assert spy.moves == [torch.device("cpu")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
@pytest.mark.parametrize("call", ["predict", "cache_features"])
def test_an_explicit_cuda_device_works_for_a_cpu_model(digits, call):
    model = small_cnn()
    loader = DataLoader(digits[1], batch_size=32)
    result = (evaluation.predict(model, loader, device="cuda") if call == "predict"
              else training.cache_features(model, loader, device="cuda"))
    assert result is not None and runtime.model_device(model).type == "cuda"
