"""A simulator scenario as a short string you can copy, paste and put in a link.

The string is a URL query, so the standalone page (Voila) can carry it in its address::

    arch=resnet18&frozen=stem,layer1,layer2,layer3&seed=0&opt=sgd,0.01,0.9&switches=bn_train

``arch`` names a torchvision classifier; ``frozen`` lists frozen blocks (empty: none);
``seed`` chooses the batch and the new head; ``opt`` is the optimizer with its learning rate
(and momentum for SGD); ``switches`` lists those that are on: ``bn_train`` (frozen BatchNorm
stays in train mode), ``stale`` (stale gradients), ``norm_affine`` (frozen blocks train their
normalisation scale and shift). Keys left out keep their current value.

Block names are percent-encoded where they hold anything but letters, digits and ``_.-~``,
the same rule the widget's JavaScript uses (``scenarioString`` in ``static/freeze_view.js``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

import tlhelpers.simulator.vocabulary as vocabulary  # the module itself, not the package face

#: Scenario switch names -> FreezeSim state keys (from the vocabulary).
SWITCHES = {short: key for key, short, _ in vocabulary.SWITCHES}
KEYS = ("arch", "frozen", "seed", "opt", "switches")


def _name(text: str) -> str:
    return quote(text, safe="_.-~")


def number(value: float) -> str:
    """Shortest text that reads back as the same float ("0.01", "1e-05")."""
    return repr(float(value))


def encode(arch: str, state: Mapping) -> str:
    """The scenario string for architecture ``arch`` and a ``FreezeSim.state()`` dict."""
    opt = [state["optimizer"], number(state["lr"])]
    if state["optimizer"] == "sgd":
        opt.append(number(state["momentum"]))
    switches = [short for short, key in SWITCHES.items() if state.get(key)]
    return "&".join([f"arch={_name(arch)}", "frozen=" + ",".join(_name(b) for b in state["frozen"]),
                     f"seed={int(state['seed'])}", "opt=" + ",".join(opt), "switches=" + ",".join(switches)])


class ScenarioError(ValueError):
    """The text is not a scenario string; the message says what is wrong and shows the form."""


EXAMPLE = "arch=mobilenet_v2&frozen=stem,stage1&seed=0&opt=sgd,0.01,0.9&switches="


def decode(text: str) -> tuple[str | None, dict]:
    """(architecture or None, FreezeSim state dict with the keys the text gives).

    Accepts the string itself or a whole link (then only the scenario's parameters after
    ``?`` count). Anything unknown or malformed raises :class:`ScenarioError`.
    """
    if not isinstance(text, str) or not text.strip():
        raise ScenarioError(f"A scenario is a text like {EXAMPLE!r}; got {text!r}")
    text = text.strip().split("#", 1)[0]
    if "?" in text:  # a whole link: keep only the scenario's own parameters
        text = from_query(text.split("?", 1)[1]) or ""
    pieces = [piece for piece in text.split("&") if piece]
    if not pieces or any("=" not in piece for piece in pieces):
        raise ScenarioError(f"Not a scenario: {text!r}. It looks like {EXAMPLE!r}")
    # Values stay percent-encoded until split: a block name may hold an encoded comma.
    pairs = [(unquote(key), value) for key, value in (piece.split("=", 1) for piece in pieces)]
    fields = dict(pairs)
    unknown = sorted(set(fields) - set(KEYS))
    if unknown or len(fields) != len(pairs):
        raise ScenarioError(f"Unknown or repeated scenario keys {unknown or [k for k, _ in pairs]}; "
                            f"valid keys: {', '.join(KEYS)} (e.g. {EXAMPLE!r})")
    state: dict = {}
    if "frozen" in fields:
        state["frozen"] = [unquote(b) for b in fields["frozen"].split(",") if b]
    fields = {key: (value if key == "frozen" else unquote(value)) for key, value in fields.items()}
    if "seed" in fields:
        if not re.fullmatch(r"-?\d+", fields["seed"]):
            raise ScenarioError(f"seed must be an integer, got {fields['seed']!r}")
        state["seed"] = int(fields["seed"])
    if "opt" in fields:
        parts = fields["opt"].split(",")
        try:
            numbers = [float(p) for p in parts[1:]]
        except ValueError:
            raise ScenarioError(f"opt must read sgd,<lr>,<momentum> or adam,<lr>; "
                                f"got {fields['opt']!r}") from None
        if parts[0] == "sgd" and len(numbers) == 2:
            state.update(optimizer="sgd", lr=numbers[0], momentum=numbers[1])
        elif parts[0] == "adam" and len(numbers) == 1:
            state.update(optimizer="adam", lr=numbers[0])
        else:
            raise ScenarioError(f"opt must read sgd,<lr>,<momentum> or adam,<lr>; got {fields['opt']!r}")
    if "switches" in fields:
        on = [s for s in fields["switches"].split(",") if s]
        bad = [s for s in on if s not in SWITCHES]
        if bad:
            raise ScenarioError(f"Unknown switch(es) {bad}; valid: {', '.join(SWITCHES)}")
        state.update({key: short in on for short, key in SWITCHES.items()})
    arch = fields.get("arch") or None
    return arch, state


def from_query(query: str | None) -> str | None:
    """The scenario in a page's query string (Voila passes it to the kernel as ``QUERY_STRING``),
    or ``None`` when there is none. Other query parameters (Voila's own) are left out."""
    pieces = [piece for piece in (query or "").lstrip("?").split("&") if piece.split("=", 1)[0] in KEYS]
    return "&".join(pieces) or None
