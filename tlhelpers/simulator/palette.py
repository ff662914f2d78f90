"""The simulator's colours, one definition for the widget (CSS variables) and the static figure.

Okabe and Ito's palette for colour-blind readers: blue for frozen, bluish green for trainable,
vermillion for the backward (gradient) path, orange for BatchNorm statistics.
``tests/test_simulator_palette.py`` checks that the pairs a reader must tell apart stay apart
under simulated protanopia, deuteranopia and tritanopia; every colour is also said in words.
"""

from __future__ import annotations

PALETTE = {
    "frozen": "#0072b2",     # blue
    "trainable": "#009e73",  # bluish green
    "gradient": "#d55e00",   # vermillion: the backward path
    "drift": "#e69f00",      # orange: BatchNorm running statistics
    "muted": "#6f6f6f",
    "baseline": "#e6e6e6",
    "ink": "#222222",
}

#: Colour pairs that carry meaning side by side in the drawing.
CONTRASTING = [("frozen", "trainable"), ("frozen", "gradient"), ("trainable", "gradient"),
               ("trainable", "drift"), ("frozen", "drift")]
