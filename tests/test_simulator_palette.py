"""The simulator's colours stay apart for colour-blind readers.

Each pair of colours that carries meaning side by side (frozen / trainable, the backward path,
BatchNorm drift) is simulated for protanopia, deuteranopia and tritanopia (Machado, Oliveira and
Fernandes 2009, severity 1, applied in linear RGB) and must stay at least 15 CIE76 units apart
(about five times a just noticeable difference). The states are also said in words and frozen
blocks are hatched, so colour is never the only cue; this keeps the colours from being a trap.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tlhelpers.simulator.palette import CONTRASTING, PALETTE

MACHADO = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
    "typical": np.eye(3).tolist(),
}
MINIMUM = 15.0
CSS = Path(__file__).resolve().parents[1] / "tlhelpers" / "simulator" / "static" / "freeze_view.css"


def linear(hex_colour: str) -> np.ndarray:
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def lab(rgb: np.ndarray) -> np.ndarray:
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ np.clip(rgb, 0, 1)
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


@pytest.mark.parametrize("vision", list(MACHADO))
@pytest.mark.parametrize("first, second", CONTRASTING + [("gradient", "drift")])
def test_colour_pairs_stay_apart(vision, first, second):
    matrix = np.array(MACHADO[vision])
    distance = np.linalg.norm(lab(matrix @ linear(PALETTE[first])) - lab(matrix @ linear(PALETTE[second])))
    assert distance >= MINIMUM, f"{first} and {second} are only {distance:.1f} apart under {vision}"


def test_red_and_green_would_fail():
    """The check can fail: the classic red/green pair collapses for deuteranopes."""
    matrix = np.array(MACHADO["deuteranopia"])
    assert np.linalg.norm(lab(matrix @ linear("#d62728")) - lab(matrix @ linear("#2ca02c"))) < MINIMUM


def test_the_stylesheet_falls_back_to_the_same_colours():
    # a palette colour is declared as the hex itself, or as a theme variable falling back to it
    pattern = r"--fv-(\w+):\s*(?:var\(--jp-[\w-]+,\s*)?(#[0-9a-fA-F]{6})"
    declared = {k: v.lower() for k, v in re.findall(pattern, CSS.read_text()) if k in PALETTE}
    assert declared == PALETTE


def _contrast(a: np.ndarray, b: np.ndarray) -> float:
    """WCAG 2.1 contrast of two colours given in linear RGB."""
    la, lb = (float(np.dot([0.2126, 0.7152, 0.0722], c)) for c in (a, b))
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def _rgba(css: str, selector_part: str) -> tuple[np.ndarray, float]:
    r, g, b, alpha = re.search(selector_part + r"[^}]*rgba\((\d+),\s*(\d+),\s*(\d+),\s*([\d.]+)\)", css).groups()
    return linear(f"#{int(r):02x}{int(g):02x}{int(b):02x}"), float(alpha)


def test_block_labels_are_readable_on_every_block_state():
    """A block's name and state are drawn on its fill: white on a frozen block (its hatch stripes
    included, blended in as the browser does) and black on a trainable one, each at 4.5:1 or more."""
    css = CSS.read_text()
    white, black = linear("#ffffff"), linear("#000000")
    assert re.search(r"\.fv-state-t \.fv-block-name, \.fv-state-t \.fv-block-state \{ fill: #000000; \}", css)
    assert re.search(r"\.fv-block-name \{ fill: white;", css) and re.search(r"\.fv-block-state \{ fill: white;", css)
    frozen = linear(PALETTE["frozen"])
    hatch, alpha = _rgba(css, r"\.fv-hatch-line")
    stripe = _srgb_blend(PALETTE["frozen"], hatch, alpha)
    assert _contrast(white, frozen) >= 4.5 and _contrast(white, stripe) >= 4.5
    assert _contrast(black, linear(PALETTE["trainable"])) >= 4.5
    assert _contrast(white, linear(PALETTE["trainable"])) < 4.5      # why trainable blocks take black text


def _srgb_blend(base_hex: str, over_linear: np.ndarray, alpha: float) -> np.ndarray:
    """``over`` at ``alpha`` on ``base``, blended in sRGB (as browsers do), returned in linear RGB."""
    base = np.array([int(base_hex[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    over = np.where(over_linear <= 0.0031308, over_linear * 12.92, 1.055 * over_linear ** (1 / 2.4) - 0.055)
    mixed = base * (1 - alpha) + over * alpha
    return linear("#" + "".join(f"{round(c * 255):02x}" for c in mixed))
