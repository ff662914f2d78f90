"""A minimal DistributedDataParallel job: a new head trained on cached features, on N processes.

    torchrun --standalone --nproc_per_node=2 ddp_minimal.py FEATURES.pt OUT_DIR [DROPOUT ...]

FEATURES.pt holds {"features": an N x D tensor, "labels": N class indices, "classes": the class
count} (notebook 10 writes it). For each DROPOUT value (default 0) the job trains one head, and
rank 0 writes its weights to OUT_DIR/dropout_<value>.pt. On CPUs the processes talk through the
gloo backend; on GPUs use "nccl", one process per GPU, and move the head to cuda:<LOCAL_RANK>.
"""

import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

SEED, GLOBAL_BATCH, EPOCHS, LR = 0, 32, 3, 0.1


def new_head(features: int, classes: int, dropout: float) -> nn.Module:
    torch.manual_seed(SEED)                          # the same starting weights in every process
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(features, classes))


def train(dataset: TensorDataset, classes: int, dropout: float, rank: int, world: int) -> nn.Module:
    head = DistributedDataParallel(new_head(dataset.tensors[0].shape[1], classes, dropout))
    torch.manual_seed(SEED + 1_000_003 * rank)       # per rank, after wrapping: each process its own Dropout masks
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=SEED)
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // world, sampler=sampler)   # its share of each batch
    optimizer = torch.optim.SGD(head.parameters(), lr=LR)
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)                     # a new shuffle each epoch, the same list in every process
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(head(x), y).backward()   # DDP averages the gradients across processes here
            optimizer.step()
    return head.module                               # the plain head inside the wrapper


def main(features: str, out: str, *dropouts: str) -> None:
    dist.init_process_group("gloo")                  # torchrun set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    saved = torch.load(features, weights_only=True)
    dataset = TensorDataset(saved["features"], saved["labels"])
    for dropout in map(float, dropouts or ["0"]):
        began = time.perf_counter()
        head = train(dataset, saved["classes"], dropout, rank, world)
        seconds = time.perf_counter() - began           # the training loop only: no start-up, no rendezvous
        if rank == 0:                                # one process writes, and prints
            torch.save(head.state_dict(), Path(out) / f"dropout_{dropout}.pt")
            print(f"{world} process(es), Dropout {dropout}: {EPOCHS} epochs of {len(dataset)} examples, "
                  f"{GLOBAL_BATCH // world} per process per step, {seconds:.2f} s of training")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
