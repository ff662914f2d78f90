"""The simulator's words, defined once: block states, the switches, and what each is called.

Python (``FreezeSim``, the scenario string, the static figure) reads them from here, and the
widget receives them from the kernel (``FreezeView.vocabulary``), so a new switch or a reworded
state is one edit here. ``tests/test_simulator_js.py`` checks that the JavaScript holds no copy.
"""

from __future__ import annotations

#: Block states: "t" trainable, "f" frozen, "d" frozen with BatchNorm in train mode (its
#: statistics drift), "a" frozen but its normalisation scale and shift train.
STATE_WORDS = {"t": "trainable", "f": "frozen", "d": "frozen, BN drifts", "a": "frozen, norm trains"}
#: States in which some parameter of the block trains.
TRAINING_STATES = ("t", "a")

#: The switches: FreezeSim state key, short name in a scenario string, the widget's sentence.
SWITCHES = (
    ("bn_train_when_frozen", "bn_train", "Frozen BatchNorm left in train mode (its statistics drift)"),
    ("stale_gradients", "stale", "Stale gradients: optimizer built before freezing, zero_grad(set_to_none=False)"),
    ("train_norm_affine", "norm_affine", "Frozen blocks still train their normalisation scale and shift"),
)


def for_browser() -> dict:
    """The vocabulary as the widget's JavaScript reads it."""
    return {"stateWords": dict(STATE_WORDS), "trainingStates": list(TRAINING_STATES),
            "switches": [{"key": key, "short": short, "label": label} for key, short, label in SWITCHES]}
