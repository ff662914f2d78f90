"""``python -m tlhelpers.simulator snapshot [PATH]``: regenerate the static simulator picture.

Readers who cannot run widgets (GitHub renders notebooks without a kernel) see this PNG in
``notebooks/simulator.ipynb`` instead of the live widget. The scenario is fixed and seeded:
MobileNetV2 (ImageNet V1 weights), stem to stage3 frozen, three steps on the default batch.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "notebooks" / "figures" / "freeze_simulator.png"
SNAPSHOT_STATE = {"frozen": ["stem", "stage1", "stage2", "stage3"], "seed": 0}
SNAPSHOT_STEPS = 3


def snapshot(path: Path = DEFAULT_PATH) -> Path:
    """Run the fixed scenario and write its picture to ``path``; returns the path."""
    from tlhelpers import models
    from tlhelpers.simulator import FreezeSim
    from tlhelpers.simulator.figure import save_snapshot

    model, _ = models.load_model("mobilenet_v2", weights="IMAGENET1K_V1")
    sim = FreezeSim.from_state(model, SNAPSHOT_STATE)
    sim.train(SNAPSHOT_STEPS)
    return save_snapshot(sim, path, arch="mobilenet_v2", note="ImageNet weights (IMAGENET1K_V1)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tlhelpers.simulator",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shot = commands.add_parser("snapshot", help="write the static PNG shown to readers without widgets")
    shot.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    print(f"wrote {snapshot(args.path)}")


if __name__ == "__main__":
    main()
