"""tlhelpers.checks.integer: NumPy integers are accepted everywhere, bools/floats/strings refused
everywhere, with one message."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tlhelpers
from tlhelpers import checks, corruptions, data, evaluation, lora, models, robust


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3), torch.tensor(3)])
def test_integers_of_any_kind_are_accepted(value):
    number = checks.integer(value, "n", 1)
    assert number == 3 and type(number) is int


@pytest.mark.parametrize("value", [True, 3.0, "3", None, np.float64(3), torch.tensor(3.0)])
def test_non_integers_are_refused_with_one_message(value):
    with pytest.raises(ValueError, match=rf"^n must be a positive integer, got {re.escape(repr(value))}$"):
        checks.integer(value, "n", 1)
    with pytest.raises(TypeError):       # catchable either way
        checks.integer(value, "n", 1)


def test_ranges_and_hints():
    assert checks.integer(0, "epochs", 0) == 0
    with pytest.raises(ValueError, match=r"^epochs must be a non-negative integer, got -1$"):
        checks.integer(-1, "epochs", 0)
    with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 2 \(or None: one batch\), got 1$"):
        checks.integer(1, "batch_size", 2, " (or None: one batch)")
    with pytest.raises(ValueError, match=r"^severity must be one of \(1, 2, 3\), got 4$"):
        checks.integer(4, "severity", allowed=(1, 2, 3))


def test_public_entry_points_take_numpy_integers():
    k = np.int64(2)
    assert len(data.few_shot_indices([0, 0, 1, 1, 1], k, seed=np.int64(0))) == 4
    assert evaluation.confusion_matrix(torch.tensor([0, 1]), torch.tensor([1, 1]), k).shape == (2, 2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 10))
    assert models.replace_head(model, k).out_features == 2
    assert lora.LoRAConv2d(nn.Conv2d(8, 8, 1), rank=k).rank == 2
    pixels = torch.rand(2, 3, 8, 8)
    assert torch.equal(corruptions.corrupt(pixels, "noise", np.int64(1), seed=np.int64(5)),
                       corruptions.corrupt(pixels, "noise", 1, seed=5))
    bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert robust.reestimate_batchnorm(bn, torch.rand(4, 3, 8, 8), batch_size=np.int64(2))


def test_no_module_keeps_its_own_copy_of_the_integer_check():
    copies = []
    for path in Path(tlhelpers.__file__).parent.rglob("*.py"):
        text = path.read_text()
        copies += [f"{path.name}: {m.group(0)}" for m in re.finditer(r"isinstance\(\w+, bool\) or not isinstance\(\w+, int\)", text)]
        copies += [f"{path.name}: operator.index" for _ in re.finditer(r"operator\.index", text) if path.name != "checks.py"]
    assert not copies, copies


def test_an_optional_feature_names_the_extra_that_installs_it(monkeypatch):
    from tlhelpers import checks

    checks.require("export", "--export")                          # installed here: nothing raised
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(checks.MissingExtra, match=r"^bundle\.export needs onnx, safetensors, which are not "
                                                  r"installed: pip install 'tlhelpers\[export\]'$"):
        checks.require("export", "bundle.export")
    with pytest.raises(ValueError, match="unknown extra 'gpu'"):
        checks.require("gpu", "something")
