"""Exercise checks for 10 · From notebook to product.

q1 runs the learner's export function on a small CNN with BatchNorm and Dropout, handed over in
train mode (as a training loop would); q2 compares the learner's shard of the data with what
``torch.utils.data.DistributedSampler`` gives each process, for sizes that do and do not divide.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from tlhelpers.exercises import Exercise, Wrong, register


class _SmallCNN(nn.Module):
    """Convolution, BatchNorm, Dropout and a head; its forward takes ``x``, as torchvision models' do."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                    nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 3))

    def forward(self, x):
        return self.layers(x)


def _small_cnn() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = _SmallCNN()
        with torch.no_grad():
            for _ in range(3):
                net.train()(torch.randn(8, 3, 8, 8) * 2 + 1)     # running statistics that are not the defaults
    return net


def _export_for_serving(export_for_serving) -> str:
    net = _small_cnn().train()                     # handed over in train mode, as from a training loop
    generator = torch.Generator().manual_seed(1)
    example, other = torch.randn(2, 3, 8, 8, generator=generator), torch.randn(5, 3, 8, 8, generator=generator)
    reference = copy.deepcopy(net).eval()
    program = export_for_serving(net, example)
    if program is None:
        raise Wrong("export_for_serving returned None: `return` the exported program")
    if not isinstance(program, torch.export.ExportedProgram):
        raise Wrong(f"export_for_serving returned a {type(program).__name__}; return what torch.export.export returns")
    if not net.training:
        raise Wrong("the model came back in eval mode: a training loop may go on after the export, so put it back "
                    "in the mode it had")
    try:
        served = program.module()(other)
    except Exception as error:
        raise Wrong(f"the program exported from a batch of 2 refused a batch of 5 ({type(error).__name__}): its "
                    "batch size was fixed at export") from None
    with torch.no_grad():
        expected = reference(other)
        again = program.module()(other)
    if not torch.allclose(served, again) or not torch.allclose(served, expected, atol=1e-5):
        raise Wrong("the exported program does not give the eval-mode outputs (it was recorded with Dropout and "
                    "BatchNorm in train mode)")
    return "a batch of 5 through a program exported from a batch of 2, eval-mode outputs, the model still in train mode"


q1 = Exercise("export for serving", _export_for_serving, names=("export_for_serving",),
              hint="remember net.training, call net.eval(), export with dynamic_shapes naming the batch "
                   "dimension of the input, then net.train(the remembered mode).")


CASES = [(10, 2, 0, 0), (10, 2, 1, 0), (10, 2, 1, 1), (11, 2, 1, 3), (11, 3, 2, 0), (7, 4, 3, 2)]


def _rank_indices(rank_indices) -> str:
    seed = 5
    for n, world, rank, epoch in CASES:
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        expected = list(sampler)
        answer = rank_indices(n, world, rank, seed, epoch)
        if answer is None:
            raise Wrong("rank_indices returned None: `return` the list of indices")
        try:
            answer = [int(i) for i in answer]
        except (TypeError, ValueError):
            raise Wrong(f"rank_indices returned a {type(answer).__name__}; return a list of integer indices") from None
        where = f"for n={n}, world={world}, rank={rank}, epoch={epoch}"
        if len(answer) != len(expected):
            raise Wrong(f"{where} it gave {len(answer)} indices, DistributedSampler {len(expected)}: every process "
                        "gets the same number, so when world does not divide n the list is padded")
        if answer != expected:
            if sorted(answer) == sorted(expected):
                raise Wrong(f"{where} the right indices in another order: take every world-th item of the shuffled "
                            "list, starting at rank")
            raise Wrong(f"{where} other indices than DistributedSampler gives")
    return f"the same shares as DistributedSampler in {len(CASES)} cases, padded ones included"


q2 = Exercise("each process's share", _rank_indices, names=("rank_indices",),
              hint="one torch.Generator seeded with seed + epoch; torch.randperm(n, generator=...) is the list every "
                   "process shuffles alike; repeat its first items until its length is a multiple of world; then "
                   "every world-th item from position rank.")

def _count_graphs(net: nn.Module, batches: list[torch.Tensor], dynamic) -> list[int]:
    """The reference: graphs dynamo has made after each call, from a fresh start."""
    torch.compiler.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(net, backend="aot_eager", dynamic=dynamic)
    made = []
    with torch.no_grad():
        for batch in batches:
            compiled(batch)
            made.append(int(counters["stats"]["unique_graphs"]))
    return made


def _graphs_per_call(graphs_per_call) -> str:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        batches = [torch.randn(n, 4) for n in (8, 4, 1)]
    said = {}
    for dynamic in (None, True):
        answer = graphs_per_call(net, [b.clone() for b in batches], dynamic)
        if answer is None:
            raise Wrong("graphs_per_call returned None: `return` the list of graph counts")
        try:
            answer = [int(count) for count in answer]
        except (TypeError, ValueError):
            raise Wrong(f"graphs_per_call returned a {type(answer).__name__}; return one graph count per call") from None
        expected = _count_graphs(net, [b.clone() for b in batches], dynamic)
        where = f"with dynamic={dynamic}, batches of 8, 4 and 1"
        if len(answer) != len(batches):
            raise Wrong(f"{where}: {len(answer)} counts for {len(batches)} calls; count after each call")
        if answer[0] != expected[0]:
            raise Wrong(f"{where}: the first call left {answer[0]} graph(s) counted; start from a fresh compiler and "
                        "cleared counters, so only this function's graphs are counted")
        if answer != expected:
            raise Wrong(f"{where}: the counts differ from what dynamo reports for a fresh compile with that setting "
                        "(pass `dynamic` to torch.compile, backend=\"aot_eager\", and read the counter after each call)")
        said[dynamic] = answer
    torch.compiler.reset()
    return f"graphs after batches of 8, 4 and 1 of a small MLP: {said[None]} by default, {said[True]} with dynamic=True"


q3 = Exercise("new shapes recompile", _graphs_per_call, names=("graphs_per_call",),
              hint="torch.compiler.reset() and torch._dynamo.utils.counters.clear() first; torch.compile(net, "
                   "backend=\"aot_eager\", dynamic=dynamic); after each call under torch.no_grad(), append "
                   "counters[\"stats\"][\"unique_graphs\"].")

register(globals())
