"""One place for each concept: auxiliary heads, "is this name under that prefix", the BatchNorm
classes and the BatchNorm layers of a model. A second copy elsewhere fails here."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

import tlhelpers
from tlhelpers import freezing, models, robust

#: The exercise checks (tlhelpers/exercises/) are left out: each re-derives, on purpose, what the
#: learner is asked to write, as the reference it compares with.
SOURCES = {path.relative_to(Path(tlhelpers.__file__).parent).as_posix(): path.read_text()
           for path in Path(tlhelpers.__file__).parent.rglob("*.py") if "exercises" not in path.parts}


def _places(pattern: str) -> list[str]:
    return sorted(name for name, text in SOURCES.items() if re.search(pattern, text))


def test_each_concept_is_spelled_out_in_one_module():
    assert _places(r'"AuxLogits"') == ["models.py"]
    assert _places(r'"aux_logits1"') == ["models.py"]
    assert _places(r'startswith\(\w+ \+ "\."\)') == ["models.py"]
    assert _places(r"BATCHNORM_TYPES = ") == ["freezing.py"]
    assert _places(r"def batchnorm_layers") == ["freezing.py"]
    assert _places(r"tried\.append\(") == ["files.py"]          # every fetch goes through files.first_source


def test_under_means_the_module_or_inside_it():
    assert models.under("layer4", "layer4") and models.under("layer4.0.conv1.weight", "layer4")
    assert not models.under("layer40.weight", "layer4") and not models.under("layer", "layer4")


def test_every_batchnorm_class_counts_and_layers_come_by_name():
    for layer in (nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.BatchNorm3d(3), nn.SyncBatchNorm(3), nn.LazyBatchNorm2d()):
        assert isinstance(layer, freezing.BATCHNORM_TYPES), type(layer).__name__
    assert not isinstance(nn.InstanceNorm2d(3), freezing.BATCHNORM_TYPES)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4, track_running_stats=False),
                          nn.Sequential(nn.BatchNorm1d(4)))
    layers = freezing.batchnorm_layers(model)
    assert list(layers) == ["1", "3.0"] and layers["1"] is model[1]
    changed = robust.reestimate_batchnorm(model[:2], torch.rand(4, 3, 8, 8))
    assert changed == ["1"]
