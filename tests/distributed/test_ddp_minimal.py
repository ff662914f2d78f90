"""notebooks/ddp_minimal.py, the DistributedDataParallel script notebook 10 shows: under torchrun on 2
CPU processes (gloo) it reaches the head 1 process reaches when Dropout is off, not when it is on
(each process draws its own masks), and only rank 0 writes and prints.

Slow (each launch starts fresh Python processes): `make test` runs it, `make unit` does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "notebooks" / "ddp_minimal.py"


def run(processes: int, features: Path, out: Path) -> str:
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(SCRIPT), str(features), str(out), "0", "0.5"]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("ddp_minimal")
    generator = torch.Generator().manual_seed(0)
    features = folder / "features.pt"
    torch.save({"features": torch.randn(96, 12, generator=generator),
                "labels": torch.randint(0, 3, (96,), generator=generator), "classes": 3}, features)
    return {n: (folder / f"p{n}", run(n, features, folder / f"p{n}")) for n in (1, 2)}


def test_two_processes_reach_the_head_of_one_with_dropout_off_only(runs):
    def head(n, dropout):
        return torch.load(runs[n][0] / f"dropout_{dropout}.pt", weights_only=True)

    for key, value in head(1, "0.0").items():
        torch.testing.assert_close(head(2, "0.0")[key], value, rtol=0, atol=1e-5, msg=key)
    gap = max((head(2, "0.5")[k] - head(1, "0.5")[k]).abs().max().item() for k in head(1, "0.5"))
    assert gap > 1e-3, "with Dropout on, each process draws its own masks: the runs must differ"


def test_only_rank_zero_writes_and_prints(runs):
    folder, printed = runs[2]
    assert sorted(p.name for p in folder.iterdir()) == ["dropout_0.0.pt", "dropout_0.5.pt"]
    assert printed.count("2 process(es), Dropout") == 2
