"""Predict and score a model the right way: ``eval()`` plus ``torch.inference_mode()``.

``eval()`` switches Dropout off and makes BatchNorm use its running statistics;
``inference_mode()`` stops autograd from recording anything. Inference needs both, and each
function here restores the model's previous train/eval mode afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from tlhelpers.checks import integer
from tlhelpers.runtime import evaluating, model_device


@dataclass
class Predictions:
    """Everything one pass over a loader produced: logits, predicted labels, true labels."""

    logits: torch.Tensor
    targets: torch.Tensor
    loss: float | None = None

    @property
    def labels(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def accuracy(self) -> float:
        return top1(self.logits, self.targets)


def top1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of rows whose top-1 prediction equals the target (0.0 for none): the one definition of
    accuracy in the package. ``outputs`` are logits (N, classes) or predicted class indices (N,)."""
    outputs, targets = torch.as_tensor(outputs), torch.as_tensor(targets)
    predicted = outputs.argmax(dim=1) if outputs.ndim == 2 else outputs
    if predicted.shape != targets.shape:
        raise ValueError(f"{len(predicted)} predictions for {len(targets)} targets")
    return (predicted.cpu() == targets.cpu()).float().mean().item() if len(targets) else 0.0


def predict(model: nn.Module, loader: DataLoader, device: torch.device | str | None = None,
            loss_fn: Callable | None = None) -> Predictions:
    """Run ``model`` over ``loader`` under eval() + inference_mode and collect the outputs.

    Accuracy and loss are computed over examples, not averaged per batch, so a short last
    batch does not skew them. With ``loss_fn`` the mean loss is filled in too. With an
    explicit ``device`` the model is moved there first (as :func:`tlhelpers.training.fit`
    does); without one, the inputs go to wherever the model already is.
    """
    if device is not None:
        device = torch.device(device)
        model.to(device)
    else:
        device = model_device(model)
    logits, targets = [], []
    total_loss = 0.0
    with evaluating(model), torch.inference_mode():
        for inputs, labels in loader:
            inputs, labels = inputs.to(device), labels.to(device)
            outputs = model(inputs)
            if loss_fn is not None:
                total_loss += loss_fn(outputs, labels).item() * len(labels)
            logits.append(outputs.float().cpu())
            targets.append(labels.cpu())
    if not logits:
        raise ValueError("The loader produced no batches; check the dataset and batch size.")
    all_targets = torch.cat(targets)
    loss = total_loss / len(all_targets) if loss_fn is not None else None
    return Predictions(torch.cat(logits), all_targets, loss)


def accuracy(model: nn.Module, loader: DataLoader, device: torch.device | str | None = None) -> float:
    """Share of examples in ``loader`` whose top-1 prediction is right."""
    return predict(model, loader, device).accuracy


def confusion_matrix(predicted: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``num_classes x num_classes`` counts: row = true class, column = predicted class.

    Every label and prediction must be a class index in ``0 .. num_classes - 1``; anything
    else raises ``ValueError`` (counting it would land in another cell of the matrix).
    """
    if predicted.shape != targets.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and targets {tuple(targets.shape)} differ in shape")
    num_classes = integer(num_classes, "num_classes", 1)
    for name, values in (("targets", targets), ("predicted", predicted)):
        outside = values[(values < 0) | (values >= num_classes)]
        if len(outside):
            raise ValueError(
                f"{name} holds {len(outside)} value(s) outside 0..{num_classes - 1}, e.g. "
                f"{int(outside[0])}. Pass the number of classes the labels come from (e.g. "
                f"len(dataset.classes)), or map the labels to class indices first.")
    index = targets.long() * num_classes + predicted.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def top_k(model: nn.Module, batch: torch.Tensor, categories: list[str], k: int = 5,
          ) -> list[list[tuple[str, float]]]:
    """Top-``k`` (category, probability) pairs for each image in ``batch`` (eval + inference)."""
    with evaluating(model), torch.inference_mode():
        probabilities = model(batch.to(model_device(model))).softmax(dim=1).cpu()
    values, indices = probabilities.topk(k, dim=1)
    return [[(categories[i], float(v)) for v, i in zip(row_v, row_i, strict=True)]
            for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True)]
