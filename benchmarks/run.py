"""Measure the course's performance claims as ratios, side by side, in one run.

Usage: python benchmarks/run.py [--only fit,cache,memory,notebooks,simulator,serving] [--repeats N] [--stored]

Each figure compares two ways of doing the same work on this machine in the same run, repeated
and reported as the median, so machine speed cancels out. Nothing here is asserted by the
tests; the table goes to stdout and to benchmarks/results.md with the machine described.
See benchmarks/README.md for what each row means and how to reproduce it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from tlhelpers import data, freezing, models, training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results.md"
#: Every section's latest rows, so `--only` re-measures some sections and keeps the others.
RESULTS_JSON = ROOT / "benchmarks" / "results.json"
WEIGHTS = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
SECTIONS = ("fit", "cache", "memory", "notebooks", "simulator", "serving")


def median_of(values: list[float]) -> float:
    return statistics.median(values)


def fashion_loader(per_class: int, size: int, batch: int, seed: int = 0, shuffle: bool = False) -> DataLoader:
    transform = WEIGHTS.transforms(crop_size=size, resize_size=size)
    dataset = data.load_dataset("fashion-mnist", "train", per_class=per_class, seed=seed, transform=transform)
    # Decode once so both contenders time the model, not PIL.
    images = torch.stack([image for image, _ in dataset])
    labels = torch.tensor(dataset.targets)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=batch, shuffle=shuffle,
                      generator=generator)


def head_model() -> nn.Module:
    model, _ = models.load_model("mobilenet_v2", weights="IMAGENET1K_V1")
    models.replace_head(model, 10)
    freezing.freeze(model, "stem", "stage1", "stage2", "stage3", "stage4")
    return model


# --------------------------------------------------------------------------- 1. fit vs hand loop

def hand_loop(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, epochs: int) -> None:
    """The minimal loop a learner writes: no history, no progress bar, no validation."""
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        freezing.frozen_bn_eval(model)
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(inputs), labels).backward()
            optimizer.step()


def bench_fit(repeats: int) -> list[tuple[str, str, str]]:
    loader = fashion_loader(per_class=10, size=64, batch=25)
    start = head_model()
    warm = copy.deepcopy(start)  # first-call costs (allocator, kernels) must not land on one side
    hand_loop(warm, loader, torch.optim.SGD([p for p in warm.parameters() if p.requires_grad], lr=0.01), 1)
    ratios, identical = [], True
    for repeat in range(repeats):
        timings = {}
        finals = {}
        order = ("hand", "fit") if repeat % 2 == 0 else ("fit", "hand")
        for contender in order:
            model = copy.deepcopy(start)
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
            torch.manual_seed(0)
            began = time.perf_counter()
            if contender == "hand":
                hand_loop(model, loader, optimizer, epochs=2)
            else:
                training.fit(model, loader, None, optimizer, 2, progress=False)
            timings[contender] = time.perf_counter() - began
            finals[contender] = model.state_dict()
        ratios.append(timings["fit"] / timings["hand"])
        identical &= all(torch.equal(finals["fit"][k], finals["hand"][k]) for k in finals["fit"])
    return [("tlhelpers.fit / hand-written loop, time (mobilenet_v2 stages 5+ trainable, 100 imgs, 64 px, 2 epochs)",
             f"{median_of(ratios):.3f}x", "target <= 1.05"),
            ("tlhelpers.fit vs hand-written loop, final weights", "identical" if identical else "DIFFERENT",
             "same seed, same data order")]


# --------------------------------------------------------------------------- 2. feature cache

def bench_cache(repeats: int, epochs: int = 10) -> list[tuple[str, str, str]]:
    loader = fashion_loader(per_class=20, size=64, batch=32)
    base, _ = models.load_model("mobilenet_v2", weights="IMAGENET1K_V1")
    models.replace_head(base, 10)
    freezing.freeze_backbone(base)
    speedups = []
    training.cache_features(base, loader)  # warm-up
    for _ in range(repeats):
        naive = copy.deepcopy(base)
        _, head = models.find_head(naive)
        began = time.perf_counter()
        training.fit(naive, loader, None, torch.optim.Adam(head.parameters(), 1e-3), epochs, progress=False)
        naive_seconds = time.perf_counter() - began

        cached = copy.deepcopy(base)
        _, head = models.find_head(cached)
        began = time.perf_counter()
        features = training.cache_features(cached, loader)
        training.fit(head, DataLoader(features, batch_size=32), None, torch.optim.Adam(head.parameters(), 1e-3),
                     epochs, progress=False)
        speedups.append(naive_seconds / (time.perf_counter() - began))
    return [(f"feature cache speedup, head training {epochs} epochs (mobilenet_v2, 200 imgs, 64 px)",
             f"{median_of(speedups):.1f}x", "naive time / (one cached pass + head epochs); target >= 6x")]


# --------------------------------------------------------------------------- serving a bundle

def bench_serving(repeats: int, calls: int = 20) -> list[tuple[str, str, str]]:
    """Latency of the exported bundle (torch.export program, ONNX Runtime) against eager PyTorch."""
    import tempfile

    from tlhelpers import bundle, serving

    model, transform = models.load_model("mobilenet_v2", weights="IMAGENET1K_V1", image_size=224)
    models.replace_head(model, 10)
    model.eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle.export(model, Path(tmp) / "b", classes=[str(i) for i in range(10)], transform=transform,
                      backbone="mobilenet_v2", weights="MobileNet_V2_Weights.IMAGENET1K_V1")
        runners = {"eager": model, "pt2": serving.Predictor(Path(tmp) / "b", "pt2"),
                   "onnx": serving.Predictor(Path(tmp) / "b", "onnx")}
        for batch in (1, 32):
            x = torch.randn(batch, 3, 224, 224)
            call = {"eager": lambda x=x: model(x), "pt2": lambda x=x: runners["pt2"](x.numpy()),
                    "onnx": lambda x=x: runners["onnx"](x.numpy())}
            times: dict[str, list[float]] = {name: [] for name in call}
            with torch.inference_mode():
                for name in call:
                    call[name]()                     # warm-up
                for _ in range(repeats):
                    for name in call:                # alternated within each repeat
                        began = time.perf_counter()
                        for _ in range(calls if batch == 1 else max(1, calls // 8)):
                            call[name]()
                        times[name].append(time.perf_counter() - began)
            eager = median_of(times["eager"])
            for name in ("pt2", "onnx"):
                rows.append((f"bundle {name} / eager PyTorch, time per call (mobilenet_v2, 224 px, batch {batch})",
                             f"{median_of(times[name]) / eager:.2f}x",
                             f"eager {1000 * eager / (calls if batch == 1 else max(1, calls // 8)):.1f} ms per call; "
                             "below 1 is faster"))
    return rows


# --------------------------------------------------------------------------- 3. peak memory

MEMORY_CHILD = r"""
import os, resource, sys, torch, torchvision
mode, size = sys.argv[1], int(sys.argv[2])
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
model = torchvision.models.mobilenet_v2(num_classes=10).to(device)
x, y = torch.randn(32, 3, size, size, device=device), torch.randint(0, 10, (32,), device=device)
if mode == "baseline":
    pass
elif mode == "no_grad":
    model.eval()
    with torch.no_grad():
        for _ in range(2): model.features(x)
else:
    if mode == "frozen":
        for p in model.parameters(): p.requires_grad = False
        for p in model.classifier.parameters(): p.requires_grad = True
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    for _ in range(2):
        opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
peak = torch.cuda.max_memory_allocated() / 1024 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak)
"""


def peak_mib(mode: str, size: int) -> float:
    """Peak memory of a fresh process: CUDA max_memory_allocated on a GPU, else peak RSS."""
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, mode, str(size)], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    return float(out.stdout.strip().splitlines()[-1]) / 1024


def bench_memory(repeats: int, size: int = 224) -> list[tuple[str, str, str]]:
    peaks = {mode: median_of([peak_mib(mode, size) for _ in range(repeats)])
             for mode in ("baseline", "full", "frozen", "no_grad")}
    base = peaks["baseline"]
    above = {mode: peaks[mode] - base for mode in ("full", "frozen", "no_grad")}
    detail = ", ".join(f"{m} {peaks[m]:.0f} MiB" for m in peaks)
    kind = "CUDA max_memory_allocated" if torch.cuda.is_available() else "peak RSS"
    return [(f"{kind} above an idle process: full fine-tune / frozen backbone / no_grad extraction "
             f"(mobilenet_v2, batch 32, {size} px)",
             f"{above['full'] / above['no_grad']:.1f} : {above['frozen'] / above['no_grad']:.1f} : 1",
             detail)]


# --------------------------------------------------------------------------- 4. notebooks

#: The limits on 2 cores (issue "Verdicts with power"): a learner's main story, each notebook, the series.
MAIN_STORY_LIMIT_S, NOTEBOOK_LIMIT_S, SERIES_LIMIT_MIN = 120, 300, 15


def bench_notebooks(stored: bool = False) -> list[tuple[str, str, str]]:
    """Each numbered notebook's whole run and main story (the cells before the first "## Going
    further" / "## Appendix", solutions excluded), then the series. ``stored=True`` reads the times
    `make notebooks` stored in each notebook's metadata (its last run on this machine) instead of
    running the series again."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import nbformat
    from run_notebooks import default_notebooks, run

    rows, total = [], 0.0
    for path in [p for p in default_notebooks() if p.parent.name == "notebooks"]:
        if stored:
            course = nbformat.read(path, as_version=4).metadata.get("course", {})
            if "main_story_seconds" not in course:
                raise SystemExit(f"{path.name} stores no main-story time: run `make notebooks` first")
            seconds, story = course["run_seconds"], course["main_story_seconds"]
        else:
            copy_path = path.with_name(f".bench_{path.name}")  # same folder, so relative paths hold
            shutil.copyfile(path, copy_path)
            try:
                notebook, seconds = run(copy_path, write=False)
            finally:
                copy_path.unlink(missing_ok=True)
            story = notebook.metadata["course_run"]["main_story_seconds"]
        total += seconds
        rows.append((f"notebook {path.stem}, headless run with defaults: main story / whole",
                     f"{story:.0f} s / {seconds:.0f} s",
                     f"limits {MAIN_STORY_LIMIT_S} s / {NOTEBOOK_LIMIT_S} s"
                     + (" (stored by make notebooks)" if stored else "")))
    rows.append(("whole series, headless", f"{total / 60:.1f} min", f"limit {SERIES_LIMIT_MIN} min on 2 cores"))
    return rows


# --------------------------------------------------------------------------- 5. simulator

SIMULATOR_TIMINGS = ROOT / "test-artifacts" / "simulator-timings.json"


SIMULATOR_MEMORY_CHILD = r"""
import json, os, sys, torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import MemoryProfileTimeline
from tlhelpers import models
from tlhelpers.simulator import FreezeSim
frozen = json.loads(sys.argv[1])
model, _ = models.load_model("mobilenet_v2", weights="IMAGENET1K_V1")
sim = FreezeSim(model, frozen=frozen)
widget = sum(sim.training_memory().values())
sim._apply_states(sim.block_states())  # the simulator's requires_grad flags and BatchNorm modes
net, images, labels = sim.model, sim.images, sim.labels
del sim, model
optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
def step():
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(images), labels).backward()
    optimizer.step()
step(); step()
with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
    step()
_, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
model_bytes = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers(), images, labels])
print(json.dumps({"measured": max(sum(row) for row in sizes) - model_bytes, "widget": widget}))
"""


def _step_memory(frozen: list[str]) -> tuple[int, int]:
    """(peak bytes of a bare training step above the model and batch, the widget's training memory)."""
    out = subprocess.run([sys.executable, "-c", SIMULATOR_MEMORY_CHILD, json.dumps(frozen)], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["measured"], result["widget"]


def bench_simulator(repeats: int, steps: int = 5) -> list[tuple[str, str, str]]:
    from tlhelpers.simulator import FreezeSim

    model, _ = models.load_model("mobilenet_v2", weights="IMAGENET1K_V1")
    sim = FreezeSim(model)
    head_only = sim.block_names[:-1]
    rows = []
    bare = {}
    for label, frozen in (("every block trainable", []), ("head only", head_only)):
        sim.load_state({"frozen": frozen})
        sim.step()  # warm-up (the first step also measures the blocks)
        bare[label] = median_of([sim.step().step_ms for _ in range(steps * repeats)])
        rows.append((f"simulator step, default model and batch, {label} (bare)", f"{bare[label]:.0f} ms",
                     "target < 200 ms on 2 cores (the browser adds its message and drawing time)"))

    measuring, whole, summed = [], [], []
    for _ in range(repeats):
        sim.clear_measurements()
        began = time.perf_counter()
        sim.cost_table()
        measuring.append((time.perf_counter() - began) * 1000)
        sim.load_state({"frozen": ["stem", "stage1", "stage4"]})
        began = time.perf_counter()
        sim.measure_configuration()
        whole.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        for _ in range(100):
            sim.cost()
        summed.append((time.perf_counter() - began) * 10)  # ms per call
    rows.append(("measuring every block once (3 cases each) / one bare step (every block trainable)",
                 f"{median_of(measuring) / bare['every block trainable']:.1f}x",
                 f"{median_of(measuring):.0f} ms, once per simulator and input shape"))
    rows.append(("a configuration's cost: whole measurement / sum of block measurements",
                 f"{median_of(whole) / median_of(summed):.0f}x",
                 f"{median_of(whole):.0f} ms vs {median_of(summed) * 1000:.0f} us; the browser does the sum"))

    pairs = [_step_memory(frozen) for frozen in ([], ["stem", "stage1", "stage2", "stage3"], head_only)]
    rows.append(("training memory: widget (saved activations + gradients + optimizer state) minus a bare "
                 "step's measured peak above the model (all / stages 4+ / head trainable)",
                 " / ".join(f"{(w - m) / 2**20:+.1f} MiB" for m, w in pairs),
                 "peaks " + " / ".join(f"{m / 2**20:.1f}" for m, _ in pairs) + " MiB (torch.profiler CPU memory "
                 "timeline, steady-state SGD step)"))

    if SIMULATOR_TIMINGS.exists():
        data = json.loads(SIMULATOR_TIMINGS.read_text())
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(SIMULATOR_TIMINGS.stat().st_mtime))
        for surface, values in sorted(data.items()):
            for key in ("toggle -> redrawn, in page (ms)", "Train step -> report drawn, in page (ms)",
                        "toggle -> redrawn, playwright click to DOM check (ms)",
                        "Train step -> report drawn, playwright click to DOM check (ms)"):
                if key in values:
                    target = "target < 100 ms" if key.startswith("toggle") else "target < 500 ms"
                    rows.append((f"browser, {surface}: {key.replace(' (ms)', '')}", f"{values[key]['median']:.0f} ms",
                                 f"{target}; median of {values[key]['values']}, tests/ui run of {when}"))
    else:
        rows.append(("browser timings", "not measured", f"run the browser tests (tests/ui) to write {SIMULATOR_TIMINGS}"))
    return rows


# --------------------------------------------------------------------------- report

def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"torchvision {torchvision.__version__}, Python {platform.python_version()}, "
            f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")


def write_results(measured: dict[str, list[tuple[str, str, str]]], repeats: int) -> str:
    """Merge the sections just measured into results.json and render results.md from all of them."""
    stored = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {"sections": {}}
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for section, rows in measured.items():
        stored["sections"][section] = {"run": now, "repeats": repeats, "machine": machine(),
                                       "rows": [list(row) for row in rows]}
    RESULTS_JSON.write_text(json.dumps(stored, indent=2) + "\n")
    lines = ["# Benchmark results", "",
             "Produced by `make bench` (`python benchmarks/run.py [--only SECTIONS]`); each section keeps the "
             "machine and time of its own latest run. Medians of repeats, contenders alternated within each "
             "repeat.", ""]
    for section in SECTIONS:
        entry = stored["sections"].get(section)
        if entry is None:
            continue
        lines += [f"## {section}", "", f"{entry['machine']}; {entry['run']}, median of {entry['repeats']} repeats.",
                  "", "| measurement | result | notes |", "|---|---|---|",
                  *[f"| {a} | {b} | {c} |" for a, b, c in entry["rows"]], ""]
    text = "\n".join(lines)
    RESULTS.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stored", action="store_true",
                        help="notebooks: report the run times make notebooks stored instead of running the series")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    benches = {"fit": lambda: bench_fit(args.repeats), "cache": lambda: bench_cache(args.repeats),
               "memory": lambda: bench_memory(args.repeats), "notebooks": lambda: bench_notebooks(args.stored),
               "simulator": lambda: bench_simulator(args.repeats), "serving": lambda: bench_serving(args.repeats)}
    measured: dict[str, list[tuple[str, str, str]]] = {}
    for section in chosen:
        began = time.perf_counter()
        measured[section] = benches[section]()
        print(f"[{section}: {time.perf_counter() - began:.0f} s]", file=sys.stderr, flush=True)
    print(write_results(measured, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
