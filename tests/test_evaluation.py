"""tlhelpers.evaluation: eval() + inference_mode, accuracy over examples, confusion matrix."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch
import torchvision
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers import data, evaluation, models


def dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 3))


def test_predict_runs_in_eval_and_inference_mode_and_restores_the_mode():
    model = dropout_model().train()
    model[2].eval()  # a mixed state (e.g. frozen BatchNorm) must survive too
    seen = {}

    def record(module, inputs, output):
        seen["training"] = module.training
        seen["grad"] = torch.is_grad_enabled()
        seen["inference"] = torch.is_inference_mode_enabled()

    model[3].register_forward_hook(record)
    loader = DataLoader(TensorDataset(torch.randn(10, 12), torch.randint(0, 3, (10,))), batch_size=4)
    first = evaluation.predict(model, loader)
    second = evaluation.predict(model, loader)
    assert seen == {"training": False, "grad": False, "inference": True}
    assert torch.equal(first.logits, second.logits), "eval() must switch dropout off"
    assert model.training and model[3].training and not model[2].training


def test_accuracy_and_loss_are_over_examples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1, 1, 1, 1])
    model = nn.Identity()
    loader = DataLoader(TensorDataset(logits, labels), batch_size=2)  # batches of 2, 2, 1
    result = evaluation.predict(model, loader, device="cpu", loss_fn=nn.CrossEntropyLoss())
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.loss == pytest.approx(nn.CrossEntropyLoss()(logits, labels).item())
    assert evaluation.accuracy(model, loader, device="cpu") == pytest.approx(0.6)


def test_predict_refuses_an_empty_loader():
    empty = DataLoader(TensorDataset(torch.zeros(0, 12), torch.zeros(0).long()))
    with pytest.raises(ValueError, match="no batches"):
        evaluation.predict(dropout_model(), empty)


def test_confusion_matrix_matches_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    predicted = torch.randint(0, 4, (200,), generator=generator)
    targets = torch.randint(0, 4, (200,), generator=generator)
    ours = evaluation.confusion_matrix(predicted, targets, 4)
    assert ours.tolist() == sklearn_confusion_matrix(targets, predicted, labels=range(4)).tolist()
    assert ours.sum() == 200
    with pytest.raises(ValueError, match="differ in shape"):
        evaluation.confusion_matrix(predicted[:3], targets, 4)


def test_top_k_names_a_cat_on_the_cat_photo():
    model, transforms = models.load_model("mobilenet_v2", weights="IMAGENET1K_V1")
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    batch = transforms(data.sample_photos()["chelsea"]).unsqueeze(0)
    (top,) = evaluation.top_k(model, batch, categories, k=5)
    assert len(top) == 5 and top[0][1] >= top[-1][1]
    assert any(name in {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"} for name, _ in top)
    assert model.training, "top_k must restore the train mode it found"


@pytest.mark.parametrize("predicted, targets, bad", [
    ([0, 1, 3], [0, 1, 2], "predicted holds 1 value"),
    ([0, 1, 2], [0, 3, 2], "targets holds 1 value"),
    ([0, 1, 2], [0, -1, 2], "targets holds 1 value"),
])
def test_confusion_matrix_refuses_labels_outside_the_classes(predicted, targets, bad):
    """Before: target 3 with 3 classes was counted silently in the next row."""
    with pytest.raises(ValueError, match=f"{bad}.*outside 0..2"):
        evaluation.confusion_matrix(torch.tensor(predicted), torch.tensor(targets), 3)
