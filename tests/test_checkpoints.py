"""Checkpoints are all or nothing: exact resume, clear refusals, nothing half-written or half-loaded."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import copy
import pickle

import pytest
import torch
from tiny import small_cnn
from torch.utils.data import DataLoader

from tlhelpers import checkpoints, runtime, training


def sgd(model):  # momentum, so the optimizer state must be restored too
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def run(digits, epochs, checkpoint=None, resume=False, seed=7, use_generator=True, model_seed=0,
        scheduler=True):
    """A run with shuffling, dropout, momentum and a scheduler; a fresh 'process' each call."""
    generator = runtime.seed_everything(seed)
    train, val = digits
    loader = DataLoader(train, batch_size=16, shuffle=True, generator=generator if use_generator else None)
    model = small_cnn(seed=model_seed, dropout=0.3)
    optimizer = sgd(model)
    sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7) if scheduler else None
    history = training.fit(model, loader, DataLoader(val, batch_size=32), optimizer, epochs,
                           scheduler=sched, checkpoint=checkpoint, resume=resume, progress=False)
    return model, optimizer, history


@pytest.mark.parametrize("use_generator", [True, False], ids=["loader generator", "global RNG"])
def test_resume_gives_exactly_the_uninterrupted_weights(digits, tmp_path, use_generator):
    """4 epochs straight == 2 epochs, a new process (other seed, other init), resume to 4: equal tensors."""
    straight, straight_opt, expected = run(digits, 4, use_generator=use_generator)

    path = tmp_path / "run.pt"
    run(digits, 2, checkpoint=path, use_generator=use_generator)
    resumed, resumed_opt, history = run(digits, 4, checkpoint=path, resume=True, seed=123, model_seed=5,
                                        use_generator=use_generator)

    assert history.epoch == [1, 2, 3, 4]
    assert history.train_loss == expected.train_loss and history.val_acc == expected.val_acc
    assert_same_tensors(state_of(straight), state_of(resumed))
    for (a, b) in zip(straight_opt.state.values(), resumed_opt.state.values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert history.lr == pytest.approx(expected.lr)


def test_a_checkpoint_loads_with_weights_only(digits, tmp_path):
    path = tmp_path / "run.pt"
    run(digits, 1, checkpoint=path)
    state = torch.load(path, weights_only=True)
    assert state["format"] == checkpoints.CHECKPOINT_FORMAT
    assert {"model", "optimizer", "scheduler", "rng", "data_rng", "history"} <= set(state)


def test_fit_refuses_to_overwrite_an_existing_checkpoint(digits, tmp_path):
    path = tmp_path / "run.pt"
    run(digits, 1, checkpoint=path)
    saved = path.read_bytes()
    model = small_cnn(dropout=0.3)
    before = state_of(model)
    loader = DataLoader(digits[0], batch_size=16)
    with pytest.raises(FileExistsError, match="resume=True.*overwrite=True.*another checkpoint path"):
        training.fit(model, loader, None, sgd(model), 1, checkpoint=path, progress=False)
    assert path.read_bytes() == saved
    assert_same_tensors(before, state_of(model))

    training.fit(model, loader, None, sgd(model), 1, checkpoint=path, overwrite=True, progress=False)
    assert checkpoints.read_checkpoint(path)["history"]["epoch"] == [1]


def test_a_mismatched_optimizer_changes_nothing(digits, tmp_path):
    """Before: the weights were loaded, then the optimizer raised, leaving a half-restored run."""
    path = tmp_path / "run.pt"
    run(digits, 1, checkpoint=path)
    model = small_cnn(seed=3, dropout=0.3)
    two_groups = torch.optim.SGD([{"params": list(model.parameters())[:2]},
                                  {"params": list(model.parameters())[2:]}], lr=0.1, momentum=0.9)
    adam = torch.optim.Adam(model.parameters())
    before = state_of(model)
    for optimizer, reason in ((two_groups, "2 param groups|1 param groups"), (adam, "SGD, yours a Adam")):
        opt_before = copy.deepcopy(optimizer.state_dict())
        with pytest.raises(checkpoints.CheckpointMismatchError, match=reason) as caught:
            checkpoints.load_checkpoint(path, model, optimizer)
        assert "Nothing was changed" in str(caught.value)
        assert_same_tensors(before, state_of(model))
        assert optimizer.state_dict() == opt_before


def test_a_mismatched_scheduler_or_missing_state_changes_nothing(digits, tmp_path):
    path = tmp_path / "run.pt"
    run(digits, 1, checkpoint=path)
    model = small_cnn(seed=3, dropout=0.3)
    optimizer = sgd(model)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    before = state_of(model)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="StepLR, yours a CosineAnnealingLR"):
        checkpoints.load_checkpoint(path, model, optimizer, cosine)
    assert_same_tensors(before, state_of(model))
    assert optimizer.state == {}

    no_optimizer = tmp_path / "weights-only.pt"
    checkpoints.save_checkpoint(no_optimizer, model)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="no optimizer state"):
        checkpoints.load_checkpoint(no_optimizer, small_cnn(seed=4, dropout=0.3), sgd(model))


def write_plain_state_dict(path, model):
    torch.save(model.state_dict(), path)


def write_truncated(path, model):
    checkpoints.save_checkpoint(path, model)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class Arbitrary:
    """Any Python object: unpickling it would mean running code named by the file."""

    def __init__(self):
        self.weights = torch.zeros(2)


def write_pickle(path, model):
    with open(path, "wb") as handle:
        pickle.dump({"model": Arbitrary()}, handle)


def write_text(path, model):
    path.write_text("this is not a checkpoint\n")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("write, message", [
    (write_plain_state_dict, "plain state_dict.*model.load_state_dict"),
    (write_truncated, "not readable as a checkpoint.*truncated"),
    (write_pickle, "not readable as a checkpoint.*weights_only=True refuses"),
    (write_text, "not readable as a checkpoint"),
], ids=["plain state_dict", "truncated", "arbitrary pickle", "text file"])
def test_a_file_save_checkpoint_did_not_write_gets_a_clear_error(tmp_path, write, message):
    model = small_cnn(dropout=0.3)
    path = tmp_path / "foreign.pt"
    write(path, model)
    target = small_cnn(seed=9, dropout=0.3)
    before = state_of(target)
    with pytest.raises(checkpoints.CheckpointError, match=message) as caught:
        checkpoints.load_checkpoint(path, target)
    assert str(path) in str(caught.value)
    assert "KeyError" not in str(caught.value)
    assert_same_tensors(before, state_of(target))


def test_a_missing_checkpoint_is_a_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        checkpoints.load_checkpoint(tmp_path / "nope.pt", small_cnn(dropout=0.3))


def test_a_failed_save_leaves_no_partial_file_and_the_old_checkpoint(tmp_path, monkeypatch, files_under):
    path = tmp_path / "run.pt"
    model = small_cnn(dropout=0.3)
    checkpoints.save_checkpoint(path, model, classes=["a", "b"])
    saved = path.read_bytes()

    with pytest.raises(TypeError, match=r"checkpoint\['note'\] is a Arbitrary.*weights_only"):
        checkpoints.save_checkpoint(path, model, note=Arbitrary())

    real_save = torch.save

    def disk_full(obj, target, *args, **kwargs):
        real_save(obj, target, *args, **kwargs)
        with open(target, "r+b") as handle:
            handle.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoints.save_checkpoint(path, model)
    assert files_under(tmp_path) == ["run.pt"]
    assert path.read_bytes() == saved


def test_extras_must_not_reuse_checkpoint_keys(tmp_path):
    with pytest.raises(ValueError, match="rng are names the checkpoint itself uses"):
        checkpoints.save_checkpoint(tmp_path / "x.pt", small_cnn(dropout=0.3), rng="mine")
    assert not (tmp_path / "x.pt").exists()


def test_keep_best_restores_the_best_epoch_and_patience_stops(digits, tmp_path):
    runtime.seed_everything(0)
    train, val = digits
    model = small_cnn(dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)  # large: val accuracy wobbles
    states = []

    class Recorder(torch.optim.lr_scheduler.LambdaLR):
        def step(self, *args, **kwargs):
            states.append(state_of(model))
            super().step(*args, **kwargs)

    history = training.fit(model, DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=64),
                           optimizer, 8, scheduler=Recorder(optimizer, lambda e: 1.0), keep_best="val_acc",
                           progress=False)
    best = history.best_epoch("val_acc")
    assert 1 < best < 8, "pick a setting where the best epoch is neither the first nor the last"
    assert_same_tensors(states[best], state_of(model))  # states[0]: LambdaLR steps once when built

    model = small_cnn(dropout=0.0)
    frozen_lr = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing changes: no new best after epoch 1
    history = training.fit(model, DataLoader(train, batch_size=64), DataLoader(val, batch_size=64), frozen_lr,
                           10, patience=2, progress=False)
    assert history.epoch == [1, 2, 3]


def test_the_best_weights_survive_a_resume(digits, tmp_path):
    path = tmp_path / "best.pt"
    train, val = digits
    for epochs, resume in ((2, False), (4, True)):
        runtime.seed_everything(0)
        model = small_cnn(dropout=0.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        history = training.fit(model, DataLoader(train, batch_size=16), DataLoader(val, batch_size=64), optimizer,
                               epochs, keep_best="val_loss", checkpoint=path, resume=resume, progress=False)
    state = checkpoints.read_checkpoint(path)
    assert state["best_model"] is not None
    assert_same_tensors(state["best_model"], state_of(model))
    assert history.epoch == [1, 2, 3, 4]
