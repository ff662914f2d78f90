"""tlhelpers.training: fit against a hand-written loop, checkpoints, schedulers, feature cache."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers import data, evaluation, freezing, models, training

WEIGHTS = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1


def digits_tensors(split: str = "train", per_class: int | None = 20) -> TensorDataset:
    """Real data, tiny: scikit-learn digits as flat 3x8x8 tensors."""
    dataset = data.load_dataset("digits", split, per_class=per_class, seed=0,
                                transform=torchvision.transforms.functional.pil_to_tensor)
    images = torch.stack([image for image, _ in dataset]).float() / 255.0
    return TensorDataset(images, torch.tensor(dataset.targets))


def small_cnn(classes: int = 10, dropout: float = 0.1) -> nn.Module:
    """A real (if small) CNN with BatchNorm and Dropout, so train/eval modes matter."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(32, classes),
    )


@pytest.fixture(scope="module")
def digits():
    return digits_tensors("train"), digits_tensors("val", per_class=10)


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
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
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


def test_checkpoint_resume_continues_where_it_stopped(digits, tmp_path):
    """2 epochs, a restart from the checkpoint, 2 more == 4 epochs straight, bit for bit."""
    train_loader, val_loader = loaders(digits)

    def sgd(model):  # momentum, so the optimizer state must be restored too
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    straight = small_cnn(dropout=0.0)
    expected = training.fit(straight, train_loader, val_loader, sgd(straight), 4, progress=False)

    path = tmp_path / "run.pt"
    first = small_cnn(dropout=0.0)
    training.fit(first, train_loader, val_loader, sgd(first), 2, checkpoint=path, progress=False)
    assert path.exists() and not list(tmp_path.glob("*.partial"))

    restarted = small_cnn(dropout=0.0)
    torch.nn.init.zeros_(restarted[6].weight)  # whatever it starts from, the checkpoint wins
    history = training.fit(restarted, train_loader, val_loader, sgd(restarted), 4, checkpoint=path,
                           resume=True, progress=False)
    assert history.epoch == [1, 2, 3, 4]
    assert history.train_loss == pytest.approx(expected.train_loss)
    for (name, a), b in zip(straight.state_dict().items(), restarted.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert torch.load(path, weights_only=False)["history"]["epoch"] == [1, 2, 3, 4]


def test_resume_refuses_another_architecture_or_class_count(digits, tmp_path):
    train_loader, _ = loaders(digits)
    path = tmp_path / "ten.pt"
    ten = small_cnn(10)
    training.fit(ten, train_loader, None, torch.optim.SGD(ten.parameters(), lr=0.05), 1, checkpoint=path,
                 progress=False)
    three = small_cnn(3)
    before = copy.deepcopy(three.state_dict())
    with pytest.raises(training.CheckpointMismatchError, match="10 classes.*3 classes.*not changed"):
        training.fit(three, train_loader, None, torch.optim.SGD(three.parameters(), lr=0.05), 2,
                     checkpoint=path, resume=True, progress=False)
    assert all(torch.equal(before[k], v) for k, v in three.state_dict().items())

    other = torchvision.models.mobilenet_v3_small(num_classes=10)
    with pytest.raises(training.CheckpointMismatchError, match="Sequential.*MobileNetV3"):
        training.load_checkpoint(path, other)


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


def test_amp_on_cpu_warns_and_trains_in_float32(digits):
    train_loader, _ = loaders(digits)
    model = small_cnn()
    with pytest.warns(UserWarning, match="amp=True needs CUDA"):
        history = training.fit(model, train_loader, None, torch.optim.SGD(model.parameters(), lr=0.1), 1,
                               amp=True, device="cpu", progress=False)
    assert len(history) == 1 and next(model.parameters()).dtype == torch.float32


def test_seed_everything_makes_runs_repeat(digits):
    def run() -> list[float]:
        generator = training.seed_everything(7)
        model = small_cnn()
        loader = DataLoader(digits[0], batch_size=16, shuffle=True, generator=generator)
        return training.fit(model, loader, None, torch.optim.Adam(model.parameters(), 1e-2), 2,
                            progress=False).train_loss

    assert run() == run()


def test_pick_device_prefers_what_is_asked():
    assert training.pick_device("cpu") == torch.device("cpu")
    assert training.pick_device().type in {"cuda", "mps", "cpu"}


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
