"""The same fine-tuning job under torchrun: 2 CPU processes (gloo) match 1 process, write one
checkpoint, and a run killed in the middle of an epoch resumes exactly from its last checkpoint.

Slow (each launch starts fresh Python processes): `make test` runs it, `make unit` does not.
The equivalence needs layers that do not depend on how the batch is split: ResNet-18 (no
Dropout) with every BatchNorm in eval mode (see tlhelpers/finetune.py's docstring).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from tlhelpers import finetune

JOB = ["--backbone", "resnet18", "--weights", "none", "--dataset", "digits", "--per-class", "8",
       "--val-per-class", "3", "--image-size", "32", "--batch-size", "16", "--freeze", "backbone",
       "--unfreeze", "layer4", "--bn-policy", "eval", "--lr", "0.01", "--seed", "3", "--no-progress"]
#: 2 processes sum each gradient over two half-batches and average across processes; 1 process
#: sums over the whole batch: the same numbers, another order of float additions. Adam divides
#: by the gradient's running size, which magnifies such rounding for near-zero gradients, so
#: the runs agree to about 2e-5 (measured) after 2 epochs, while the weights moved about 1e-2.
TOLERANCE = {"rtol": 0.0, "atol": 1e-4}


def torchrun(args: list[str], cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "tlhelpers.finetune", *args]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    result = torchrun(JOB + ["--epochs", "2", "--checkpoint", "run.pt", "--out", "report"], folder)
    assert result.stdout.count("test accuracy") == 1, "only rank 0 prints"
    return folder


def test_two_processes_reach_the_weights_of_one(two_processes, tmp_path):
    assert finetune.main(JOB + ["--epochs", "2", "--checkpoint", str(tmp_path / "run.pt"),
                                "--out", str(tmp_path / "report")]) == 0
    one, two = weights(tmp_path / "run.pt"), weights(two_processes / "run.pt")
    assert one.keys() == two.keys()
    torch.manual_seed(3)   # the job's --seed: the same random initialisation
    start = torchvision.models.resnet18(weights=None).state_dict()
    for key in one:
        torch.testing.assert_close(two[key], one[key], **TOLERANCE, msg=key)
    for key in (k for k in one if k.startswith("layer4") and k.endswith("conv1.weight")):
        moved = (one[key] - start[key]).abs().max()
        assert moved > 1e-3 and (two[key] - one[key]).abs().max() < 0.01 * moved, key
    assert torch.load(tmp_path / "run.pt", weights_only=True)["history"]["epoch"] == [1, 2]


def test_only_rank_zero_writes_one_checkpoint_and_one_report(two_processes):
    files = sorted(str(p.relative_to(two_processes)) for p in two_processes.rglob("*") if p.is_file())
    assert files == ["report/confusion_matrix.png", "report/history.json", "report/report.json", "run.pt"]
    assert torch.load(two_processes / "run.pt", weights_only=True)["rng_per_process"] is not None


#: A longer job for the kill test: 25 steps an epoch, so a kill right after epoch 1's checkpoint
#: lands in the middle of epoch 2.
LONG_JOB = [a if a != "8" else "40" for a in JOB]


def test_a_run_killed_mid_epoch_resumes_exactly_from_its_last_checkpoint(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    torchrun(LONG_JOB + ["--epochs", "3", "--checkpoint", "run.pt", "--out", "report"], straight)

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "tlhelpers.finetune", *LONG_JOB, "--epochs", "3", "--checkpoint", "run.pt", "--out", "report"]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    job = subprocess.Popen(command, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while not (killed / "run.pt").exists():          # epoch 1 is complete once its checkpoint is there
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before its first checkpoint"
            time.sleep(0.02)
    finally:
        os.killpg(job.pid, signal.SIGKILL)               # launcher and both workers, no chance to clean up
        job.wait()
    saved = torch.load(killed / "run.pt", weights_only=True)
    assert saved["history"]["epoch"] == [1], "killed after epoch 1's checkpoint, during epoch 2"

    torchrun(LONG_JOB + ["--epochs", "3", "--checkpoint", "run.pt", "--resume", "--out", "report"], killed)
    resumed, uninterrupted = weights(killed / "run.pt"), weights(straight / "run.pt")
    assert resumed.keys() == uninterrupted.keys()
    for key in uninterrupted:
        assert torch.equal(resumed[key], uninterrupted[key]), key
