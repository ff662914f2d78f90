"""Fine-tune a torchvision classifier from the command line, in one process or several.

One process (CPU, or the first GPU)::

    python -m tlhelpers.finetune --dataset digits --per-class 20 --epochs 3 \\
        --unfreeze stage5 head_conv --out runs/digits

Several processes with ``DistributedDataParallel`` (gloo on CPUs, nccl with one process per GPU)::

    torchrun --standalone --nproc_per_node=2 -m tlhelpers.finetune --dataset digits ...

Everything is checked before any training starts: the backbone, dataset and group names (the
error lists the valid ones), an ImageFolder root without images, more processes than training
examples, a checkpoint that exists without ``--resume`` / ``--overwrite``, and a ``--resume``
checkpoint from another architecture or class count. Bad input exits with status 2 and one
line that says what to do.

The data order does not depend on the number of processes: every run shuffles with
``DistributedSampler(seed=--seed)``, and with N processes each takes every N-th index of the
same permutation, in batches of ``--batch-size / N``. So one step of N processes sees exactly the
global batch one process sees, and since DistributedDataParallel averages the gradients,
the runs agree (up to float rounding) wherever a layer does not depend on the split of the batch:
BatchNorm in train mode and Dropout do. ``--bn-policy eval`` and a backbone without Dropout
(ResNet) make them equal, which ``tests/distributed/test_torchrun.py`` checks. Frozen parts are
frozen *before* the model is wrapped, so DDP never registers them and no
``find_unused_parameters`` is needed (every trainable parameter is used on every step).

The scores follow the course's protocol (:mod:`tlhelpers.protocol`): training and validation
images are drawn disjointly from the dataset's training files, validation chooses the epoch
whose weights are kept, and the reported accuracy is measured on a test split of held-out
files that no choice used (``report.json`` has both, named by split).

Only rank 0 prints, shows progress and writes files: the checkpoint (atomically, after every
epoch, so a crash of any process never leaves half a file), ``history.json``, ``report.json``
and ``confusion_matrix.png`` (on the test split) in ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

import tlhelpers
from tlhelpers import (
    bundle,
    checkpoints,
    data,
    evaluation,
    freezing,
    models,
    plots,
    protocol,
    runtime,
    training,
)
from tlhelpers.checks import MissingExtra, require
from tlhelpers.files import AssetError, atomic_write

#: Validation images per class when training on every file (no --per-class).
DEFAULT_VAL_PER_CLASS = 50


class UsageError(ValueError):
    """A command-line setting that cannot work; the message says which and what to do."""


@dataclass
class World:
    """This process's place among the ``torchrun`` processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tlhelpers.finetune",
                                description="Fine-tune a torchvision classifier (one process or under torchrun).")
    p.add_argument("--backbone", default="mobilenet_v2", help="any torchvision classifier name (default mobilenet_v2)")
    p.add_argument("--weights", default="DEFAULT", help="DEFAULT, a weights member such as IMAGENET1K_V1, or none")
    p.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(data.DATASETS)}")
    p.add_argument("--root", help="for --dataset imagefolder: the folder holding train/ and val/")
    p.add_argument("--per-class", type=int, help="training images per class (default: all that validation leaves)")
    p.add_argument("--val-per-class", type=int, default=None,
                   help="validation images per class, from the training files; chooses the epoch kept "
                        f"(default: --per-class, or {DEFAULT_VAL_PER_CLASS} when training on all)")
    p.add_argument("--test-per-class", type=int,
                   help="test images per class, from the held-out files; only reported (default: as validation)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--freeze", nargs="+", default=["backbone"], metavar="GROUP",
                   help="'backbone' (everything but the head, the default), 'none', or layer group names")
    p.add_argument("--unfreeze", nargs="+", default=[], metavar="GROUP", help="layer groups to train after --freeze")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="adam, or sgd with momentum 0.9 (no per-weight scaling: 2 processes match 1 to float rounding)")
    p.add_argument("--lr", type=float, default=1e-3, help="the optimizer's learning rate for the head")
    p.add_argument("--backbone-lr", type=float, help="for unfrozen backbone groups (default: --lr / 10)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size, split over the processes")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--bn-policy", default="frozen-eval", choices=freezing.BN_POLICIES)
    p.add_argument("--dropout", type=float, metavar="P",
                   help="set every Dropout layer's probability to P (0 switches Dropout off; default: keep the model's)")
    p.add_argument("--checkpoint", type=Path, help="written after every epoch")
    p.add_argument("--resume", action="store_true", help="continue the run in --checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --checkpoint")
    p.add_argument("--amp", action="store_true", help="float16 autocast on CUDA (ignored on the CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="folder for the report (default runs/<backbone>-<dataset>)")
    p.add_argument("--export", type=Path, metavar="DIR",
                   help="also write a bundle that torch or onnxruntime alone can serve (.pt2, .onnx, "
                        "safetensors, labels, preprocessing, test accuracy); DIR must not exist yet")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked from the command line alone."""
    if args.backbone not in models.classification_models():
        raise UsageError(f"unknown --backbone {args.backbone!r}; choose one of: {', '.join(models.classification_models())}")
    if args.dataset not in data.DATASETS:
        raise UsageError(f"unknown --dataset {args.dataset!r}; choose one of: {', '.join(data.DATASETS)}")
    if args.dataset == "imagefolder" and args.root is None:
        raise UsageError("--dataset imagefolder needs --root, the folder holding train/ and val/")
    for name in ("epochs", "batch_size", "image_size", "per_class", "val_per_class", "test_per_class"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    for name in ("lr", "backbone_lr"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.resume and args.checkpoint is None:
        raise UsageError("--resume needs --checkpoint, the file to continue from")
    check_paths(args)
    if args.checkpoint is not None and args.checkpoint.exists() and not (args.resume or args.overwrite):
        raise UsageError(f"{args.checkpoint} already exists: pass --resume to continue that run, --overwrite to "
                         "replace it, or another --checkpoint")


def _writable_place(path: Path, flag: str, what: str) -> None:
    """``path`` can be created as ``what`` ("file" or "folder"): its nearest existing ancestor is
    a folder we can write in. Probed with a temporary file, which works for root and read-only
    mounts alike; nothing is left behind."""
    ancestor = path.parent if what == "file" else path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {path}: {ancestor} is a file, so nothing can be written under it; "
                         f"choose another {what}")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise UsageError(f"{flag} {path}: cannot write in {ancestor} ({error.strerror or error}); "
                         f"choose a {what} in a place you can write to") from None


def check_paths(args: argparse.Namespace) -> None:
    """Where the job will write is checked before any work, so a long run never ends in a traceback."""
    if args.checkpoint is not None:
        if args.checkpoint.is_dir():
            raise UsageError(f"--checkpoint {args.checkpoint} is a folder; give a file, e.g. "
                             f"{args.checkpoint / 'run.pt'}")
        _writable_place(args.checkpoint, "--checkpoint", "file")
    if args.export is not None:
        try:
            require("export", "--export")
        except MissingExtra as error:
            raise UsageError(str(error)) from None
        if args.export.exists() and not (args.export.is_dir() and not any(args.export.iterdir())):
            raise UsageError(f"--export {args.export} already exists; a bundle goes into a new folder "
                             "(remove it or choose another)")
        _writable_place(args.export, "--export", "folder")
    if args.out is not None:
        if args.out.exists() and not args.out.is_dir():
            raise UsageError(f"--out {args.out} is a file; give a folder for the report (it is created if needed)")
        _writable_place(args.out, "--out", "folder")


def check_groups(model: nn.Module, args: argparse.Namespace) -> None:
    groups = list(models.layer_groups(model))
    names = [n for n in args.freeze if n not in ("backbone", "none")] + list(args.unfreeze)
    unknown = [n for n in names if n not in groups]
    if unknown:
        raise UsageError(f"unknown layer group(s) {', '.join(map(repr, unknown))} for {args.backbone}; its groups "
                         f"are: {', '.join(groups)} (plus 'backbone' and 'none' for --freeze)")


def join_world() -> World:
    """Join the torchrun processes (if launched by torchrun) and return this process's place."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    return world


def load_model(args: argparse.Namespace):
    """The pretrained model (weights verified, offline sources tried), its preprocessing and the
    weights member actually used (DEFAULT resolved)."""
    try:
        chosen = models.resolve_weights(args.backbone, None if args.weights.lower() == "none" else args.weights)
        model, preprocess = models.load_model(args.backbone, chosen, image_size=args.image_size)
    except ValueError as error:  # an unknown weights name: the message lists the valid ones
        raise UsageError(f"--weights: {error}") from None
    check_groups(model, args)
    return model, preprocess, str(chosen) if chosen is not None else "none"


def _val_per_class(args: argparse.Namespace) -> int:
    return args.val_per_class or args.per_class or DEFAULT_VAL_PER_CLASS


def _test_per_class(args: argparse.Namespace) -> int:
    """``--test-per-class``, or as many as validation takes, at most what the held-out split's
    smallest class has (said in a note), so the defaults work on every built-in dataset."""
    if args.test_per_class:
        return args.test_per_class
    wanted = _val_per_class(args)
    held_out = data.load_dataset(args.dataset, "val", root=args.root)
    available = min(Counter(protocol.targets_of(held_out)).values())
    if available < wanted:
        print(f"note: {args.dataset}'s held-out split has {available} images in its smallest class: the test split "
              f"takes {available} per class (set --test-per-class to choose)", flush=True)
    return min(wanted, available)


def load_data(args: argparse.Namespace, transform, processes: int) -> protocol.Splits:
    """The protocol's three splits (train, validation, test); a clear UsageError for a folder
    without images or too few examples."""
    try:
        splits = protocol.three_splits(args.dataset, args.per_class, val_per_class=_val_per_class(args),
                                       test_per_class=_test_per_class(args), seed=args.seed,
                                       transform=transform, root=args.root)
    except data.DatasetError as error:     # the data cannot serve these settings; any other error is a bug
        raise UsageError(str(error)) from None
    train = splits.train
    if processes > len(train):
        raise UsageError(f"{processes} processes but only {len(train)} training examples; use at most "
                         f"{len(train)} processes (--nproc_per_node) or more data")
    if args.batch_size % processes:
        raise UsageError(f"--batch-size {args.batch_size} does not split evenly over {processes} processes; "
                         f"use a multiple of {processes}")
    return splits


def prepare_model(model: nn.Module, args: argparse.Namespace, num_classes: int) -> nn.Module:
    """A new head (seeded, so every process starts alike), the freezing asked for; returns the head."""
    runtime.seed_everything(args.seed)
    head = models.replace_head(model, num_classes)
    if args.dropout is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = args.dropout
    if args.freeze == ["backbone"]:
        freezing.freeze_backbone(model)
    elif args.freeze != ["none"]:
        freezing.freeze(model, *args.freeze)
    if args.unfreeze:
        freezing.unfreeze(model, *args.unfreeze)
    return head


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s own random draws (Dropout masks, augmentation)."""
    return seed + 1_000_003 * rank


def make_optimizer(model: nn.Module, head: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """--optimizer (Adam, or SGD with momentum 0.9) with the head at --lr and the unfrozen backbone
    at --backbone-lr (default --lr / 10)."""
    head_ids = {id(p) for p in head.parameters()}
    groups = [{"params": [p for p in head.parameters() if p.requires_grad], "lr": args.lr}]
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    if backbone:
        groups.append({"params": backbone, "lr": args.backbone_lr or args.lr / 10})
    return training.build_optimizer(groups, args.optimizer, args.lr, momentum=0.9)


#: Settings a resumed run may change: they decide how long and where, not what is trained.
RESUMABLE = ("epochs", "no_progress", "resume", "overwrite", "checkpoint", "out", "export")


def dataset_identity(splits: protocol.Splits) -> str:
    """sha256 over what the job trains and chooses on: every training and validation image's
    source (file path relative to the root, or its pixels) and label, and the test selection."""
    digest = hashlib.sha256()
    for part in (splits.train, splits.val, splits.test):
        base, indices = (part.dataset, part.indices) if isinstance(part, Subset) else (part, range(len(part)))
        samples = getattr(base, "samples", None)
        root = Path(getattr(base, "root", "."))
        for i in indices:
            if samples is not None:
                source = Path(samples[i][0])
                digest.update(str(source.relative_to(root) if source.is_relative_to(root) else source).encode())
            else:
                digest.update(base.images[i].numpy().tobytes())
            digest.update(str(int(base.targets[i])).encode())
    return digest.hexdigest()


def job_identity(args: argparse.Namespace, weights: str, splits: protocol.Splits) -> dict:
    """Everything that decides what a run trains: stored in every checkpoint, compared on --resume."""
    import torchvision

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
                if k not in RESUMABLE}
    settings["weights"] = weights
    return {"settings": settings, "classes": list(splits.classes), "dataset": dataset_identity(splits),
            "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
                         "tlhelpers": str(tlhelpers.__version__)}}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_problems(saved: dict, current: dict) -> list[str]:
    """Each difference between a checkpoint's job and this one, as "flag: saved vs asked"."""
    problems = []
    before, now = saved.get("settings", {}), current["settings"]
    for name in sorted(before.keys() | now.keys()):
        if before.get(name) != now.get(name):
            problems.append(f"{_flag(name)} was {before.get(name)!r}, now {now.get(name)!r}")
    if saved.get("classes") != current["classes"]:
        problems.append(f"the classes were {saved.get('classes')}, now {current['classes']}")
    if saved.get("dataset") != current["dataset"]:
        problems.append("the training, validation or test images differ from the ones it was trained on")
    for library, version in current["versions"].items():
        if saved.get("versions", {}).get(library) != version:
            problems.append(f"{library} was {saved.get('versions', {}).get(library)}, now {version}")
    return problems


def check_resume(args: argparse.Namespace, model: nn.Module, job: dict) -> None:
    """A --resume checkpoint is refused, before any training, unless it is this very job:
    the same architecture and class count, every setting but those in :data:`RESUMABLE`, the
    same images and the same library versions."""
    if not (args.resume and args.checkpoint is not None and args.checkpoint.exists()):
        return
    try:
        state = checkpoints.read_checkpoint(args.checkpoint)
    except checkpoints.CheckpointError as error:
        raise UsageError(str(error)) from None
    problems = checkpoints.fingerprint_problems(state["fingerprint"], model)
    if problems:
        raise UsageError(f"--resume {args.checkpoint}: " + "; ".join(problems) + ". Use the --backbone and "
                         "--dataset it was trained with, or another --checkpoint.")
    if "job" not in state:
        raise UsageError(f"--resume {args.checkpoint}: it records no job settings (not written by this "
                         "command), so an exact resume cannot be checked; start a new --checkpoint")
    problems = resume_problems(state["job"], job)
    if problems:
        raise UsageError(f"--resume {args.checkpoint} is another job: " + "; ".join(problems) +
                         ". Only --epochs, --no-progress, --out and --export may change on --resume; "
                         "to change the rest, start a new --checkpoint.")


def write_report(out: Path, model: nn.Module, test, classes: list[str], history: training.History,
                 args: argparse.Namespace, world: World, seconds: float, device: torch.device) -> dict:
    """history.json, confusion_matrix.png and report.json in ``out``; returns the report.

    ``model`` holds the weights of the epoch validation chose; ``accuracy`` is measured on the
    held-out ``test`` split, which chose nothing.
    """
    predictions = evaluation.predict(models.unwrap(model), DataLoader(test, batch_size=256), device)
    matrix = evaluation.confusion_matrix(predictions.labels, predictions.targets, len(classes))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "confusion_matrix.png") as staging:
        plots.plot_confusion_matrix(matrix, classes, title=f"{args.dataset}, test accuracy {predictions.accuracy:.1%}"
                                    ).savefig(staging, format="png", dpi=100)
    best = history.best_epoch("val_acc")
    report = {"accuracy": predictions.accuracy, "split": "test", "test_images": len(test),
              "best_epoch": best, "val_accuracy": history.val_acc[best - 1],
              "epochs": len(history), "processes": world.size,
              "seconds": round(seconds, 2), "device": str(device), "classes": classes,
              "trainable_parameters": models.count_parameters(models.unwrap(model), trainable_only=True),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    for name, content in (("history.json", history.to_dict()), ("report.json", report)):
        with atomic_write(out / name) as staging:
            staging.write_text(json.dumps(content, indent=2) + "\n")
    return report


def export_bundle(args: argparse.Namespace, model: nn.Module, preprocess, weights: str,
                  splits: protocol.Splits) -> dict:
    """Write the --export bundle, scored on the same held-out test images, as files; print where."""
    test_images = data.FewShot(data.load_dataset(args.dataset, "val", root=args.root), splits.test.indices)
    if args.export.exists():
        args.export.rmdir()   # checked empty before training
    manifest = bundle.export(model, args.export, classes=list(splits.classes), transform=preprocess,
                             backbone=args.backbone, weights=weights, test_images=test_images)
    print(f"bundle in {args.export}: test accuracy as served {manifest['test']['accuracy_pt2']:.1%} (model.pt2), "
          f"{manifest['test']['accuracy_onnx']:.1%} (model.onnx); serve it with "
          f"`python {args.export / 'predict.py'} IMAGE...`", flush=True)
    return {"folder": str(args.export), "test_accuracy_pt2": manifest["test"]["accuracy_pt2"],
            "test_accuracy_onnx": manifest["test"]["accuracy_onnx"]}


def run(args: argparse.Namespace) -> dict | None:
    """Fine-tune as ``args`` says; return the report on rank 0 (None on other ranks).

    Every check runs before the processes join and before any training, on every process
    alike, so a bad setting stops all of them with the same message.
    """
    check_arguments(args)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    runtime.seed_everything(args.seed)   # --weights none: the random initialisation is seeded too
    model, preprocess, weights = load_model(args)
    splits = load_data(args, preprocess, processes)
    train, val, test = splits.train, splits.val, splits.test
    head = prepare_model(model, args, len(train.classes))
    job = job_identity(args, weights, splits)
    check_resume(args, model, job)
    world = join_world()
    try:
        device = runtime.pick_device(f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu")
        model.to(device)
        optimizer = make_optimizer(model, head, args)   # frozen parts are not in it, before wrapping
        if world.size > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[world.local_rank] if device.type == "cuda" else None)
        # What must match across processes is settled: the weights (seeded alike, and DDP
        # broadcasts rank 0's when it wraps) and the data order (DistributedSampler's seed).
        # What must differ is seeded per rank: Dropout masks (and augmentation) would otherwise
        # repeat the same random draws in every process.
        runtime.seed_everything(rank_seed(args.seed, world.rank))
        sampler = DistributedSampler(train, num_replicas=world.size, rank=world.rank, shuffle=True, seed=args.seed)
        train_loader = DataLoader(train, batch_size=args.batch_size // world.size, sampler=sampler, num_workers=0)
        val_loader = DataLoader(Subset(val, range(world.rank, len(val), world.size)), batch_size=256, num_workers=0)
        if world.main:
            print(f"{args.backbone} on {args.dataset}: {len(train)} training / {len(val)} validation / "
                  f"{len(test)} test images, "
                  f"{models.count_parameters(models.unwrap(model), trainable_only=True):,} trainable parameters, "
                  f"{world.size} process(es) on {device}", flush=True)
        began = time.perf_counter()
        history = training.fit(model, train_loader, val_loader, optimizer, args.epochs, device=device, amp=args.amp,
                               checkpoint=args.checkpoint, resume=args.resume, overwrite=args.overwrite,
                               bn_policy=args.bn_policy, keep_best="val_acc",
                               progress=world.main and not args.no_progress, checkpoint_extra={"job": job})
        seconds = time.perf_counter() - began
        report = None
        if world.main:
            out = args.out or Path("runs") / f"{args.backbone}-{args.dataset}"
            report = write_report(out, model, test, list(train.classes), history, args, world, seconds, device)
            if args.export is not None:
                report["bundle"] = export_bundle(args, models.unwrap(model), preprocess, weights, splits)
                with atomic_write(out / "report.json") as staging:
                    staging.write_text(json.dumps(report, indent=2) + "\n")
            print(f"test accuracy {report['accuracy']:.1%} (epoch {report['best_epoch']} of {len(history)}, chosen "
                  f"on validation: {report['val_accuracy']:.1%}) in {seconds:.1f} s; "
                  f"report in {out}" + (f", checkpoint {args.checkpoint}" if args.checkpoint else ""), flush=True)
        if world.size > 1:
            dist.barrier()
        return report
    finally:
        if world.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run(args)
    except (UsageError, checkpoints.CheckpointError, AssetError) as error:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
