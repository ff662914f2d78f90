"""Scenario strings: what the learner copies, pastes and shares as a link."""

from __future__ import annotations

import pytest

from tlhelpers.simulator import scenario

STATE = {"frozen": ["stem", "layer1"], "seed": 4, "bn_train_when_frozen": True, "stale_gradients": False,
         "train_norm_affine": True, "optimizer": "sgd", "lr": 0.05, "momentum": 0.5}


def test_encode_reads_like_a_query():
    assert scenario.encode("resnet18", STATE) == \
        "arch=resnet18&frozen=stem,layer1&seed=4&opt=sgd,0.05,0.5&switches=bn_train,norm_affine"
    adam = {**STATE, "optimizer": "adam", "lr": 1e-05, "frozen": [], "bn_train_when_frozen": False,
            "train_norm_affine": False}
    assert scenario.encode("vit_b_16", adam) == "arch=vit_b_16&frozen=&seed=4&opt=adam,1e-05&switches="


def test_round_trip():
    arch, state = scenario.decode(scenario.encode("resnet18", STATE))
    assert arch == "resnet18" and state == STATE


def test_odd_block_names_are_percent_encoded():
    odd = {**STATE, "frozen": ["a,b", "features.0", "x&y=z", "ünï"]}
    text = scenario.encode("resnet18", odd)
    assert "features.0" in text and "a%2Cb" in text and "x%26y%3Dz" in text
    assert scenario.decode(text)[1]["frozen"] == odd["frozen"]


def test_a_whole_link_and_a_partial_scenario():
    link = "http://127.0.0.1:8866/?voila-theme=dark&arch=resnet18&frozen=stem&seed=1#top"
    assert scenario.decode(link) == ("resnet18", {"frozen": ["stem"], "seed": 1})
    assert scenario.from_query("voila-theme=dark&arch=resnet18&frozen=stem") == "arch=resnet18&frozen=stem"
    assert scenario.from_query("voila-theme=dark") is None and scenario.from_query(None) is None


@pytest.mark.parametrize("text, message", [
    ("", "A scenario is a text like"),
    ("arch=resnet18&frozn=stem", "Unknown or repeated scenario keys"),
    ("arch=resnet18&arch=vgg16", "Unknown or repeated scenario keys"),
    ("seed=one", "seed must be an integer"),
    ("opt=sgd,0.1", "opt must read sgd,<lr>,<momentum> or adam,<lr>"),
    ("opt=rmsprop,0.1", "opt must read"),
    ("opt=adam,fast", "opt must read"),
    ("switches=bn_train,turbo", "Unknown switch"),
    ("just some words", "Not a scenario"),
])
def test_bad_scenarios_say_what_is_wrong(text, message):
    with pytest.raises(scenario.ScenarioError, match=message):
        scenario.decode(text)
