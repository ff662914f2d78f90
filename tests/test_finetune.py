"""python -m tlhelpers.finetune: every bad input stops before any training, with one clear line;
a short real run on digits writes its report and checkpoint."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from tlhelpers import checkpoints, data, finetune, protocol

BASE = ["--weights", "IMAGENET1K_V1", "--dataset", "digits", "--per-class", "5", "--val-per-class", "3",
        "--image-size", "32", "--epochs", "1", "--no-progress"]


def fails(argv, capsys, monkeypatch=None) -> str:
    assert finetune.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["--backbone", "resnet19"], "unknown --backbone 'resnet19'; choose one of: .*resnet18"),
    (["--dataset", "cifar"], "unknown --dataset 'cifar'; choose one of: fashion-mnist, digits, imagefolder, hymenoptera"),
    (["--dataset", "imagefolder"], "needs --root"),
    (BASE + ["--unfreeze", "layer4"], "unknown layer group.*'layer4' for mobilenet_v2; its groups are: stem, "),
    (BASE + ["--freeze", "stage9"], "'stage9'"),
    (BASE + ["--weights", "IMAGENET9K"], "--weights: mobilenet_v2 has no weights 'IMAGENET9K'"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--resume"], "--resume needs --checkpoint"),
    (BASE + ["--per-class", "1000"], "digits: class '0' has 142 training files; train 1000 \\+ validation 3"),
])
def test_bad_settings_stop_before_any_work(argv, message, capsys):
    import re
    err = fails(argv, capsys)
    assert re.search(message, err), err


def test_a_root_without_images_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("no images here")
    err = fails(["--dataset", "imagefolder", "--root", str(tmp_path), "--weights", "IMAGENET1K_V1"], capsys)
    assert "No readable images" in err


def test_more_processes_than_examples(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "64")   # as torchrun --nproc_per_node=64 would set it
    err = fails(BASE, capsys)
    assert "64 processes but only 50 training examples" in err


def test_an_existing_checkpoint_needs_resume_or_overwrite(tmp_path, capsys):
    path = tmp_path / "run.pt"
    path.write_bytes(b"something")
    err = fails(BASE + ["--checkpoint", str(path)], capsys)
    assert "--resume" in err and "--overwrite" in err
    assert path.read_bytes() == b"something"


def test_resume_refuses_another_architecture_or_class_count(tmp_path, capsys):
    path = tmp_path / "three.pt"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    checkpoints.save_checkpoint(path, model)
    before = path.read_bytes()
    err = fails(BASE + ["--checkpoint", str(path), "--resume"], capsys)
    assert "saved from a Sequential with 3 classes; this model is a MobileNetV2 with 10 classes" in err
    assert path.read_bytes() == before


def test_resume_refuses_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    assert "plain state_dict" in fails(BASE + ["--checkpoint", str(path), "--resume"], capsys)


def test_a_short_real_run_writes_its_report_and_checkpoint(tmp_path, capsys):
    out, checkpoint = tmp_path / "report", tmp_path / "run.pt"
    argv = BASE + ["--epochs", "2", "--unfreeze", "stage5", "--checkpoint", str(checkpoint), "--out", str(out)]
    assert finetune.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1, 2] and report["epochs"] == 2 and report["processes"] == 1
    assert 0.0 <= report["accuracy"] <= 1.0 and f"test accuracy {report['accuracy']:.1%}" in printed
    # the protocol: validation (from the training files) chose the epoch; test (held-out files) chose nothing
    assert report["split"] == "test" and report["test_images"] == 30
    assert report["val_accuracy"] == max(history["val_acc"])
    assert report["best_epoch"] == history["val_acc"].index(max(history["val_acc"])) + 1
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(checkpoint, weights_only=True)
    assert state["history"]["epoch"] == [1, 2]
    assert report["trainable_parameters"] < 3_000_000   # the backbone stayed frozen but stage5
    assert finetune.main(argv[:-4] + ["--checkpoint", str(checkpoint), "--resume", "--epochs", "3", "--out", str(out)]) == 0
    assert json.loads((out / "history.json").read_text())["epoch"] == [1, 2, 3]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real 1-epoch job with a checkpoint, to resume from."""
    folder = tmp_path_factory.mktemp("job")
    assert finetune.main(BASE + ["--checkpoint", str(folder / "run.pt"), "--out", str(folder / "report")]) == 0
    return folder


@pytest.mark.parametrize("change, named", [
    (["--lr", "0.5"], "--lr was 0.001, now 0.5"),
    (["--per-class", "6"], "--per-class was 5, now 6"),
    (["--image-size", "48"], "--image-size was 32, now 48"),
    (["--seed", "7"], "--seed was 0, now 7"),
    (["--bn-policy", "train"], "--bn-policy was 'frozen-eval', now 'train'"),
    (["--unfreeze", "stage5"], "--unfreeze was [], now ['stage5']"),
    (["--dataset", "fashion-mnist", "--test-per-class", "3"], "--dataset was 'digits', now 'fashion-mnist'"),
])
def test_resume_refuses_any_other_setting_naming_the_flag_and_both_values(finished_run, change, named, capsys, tmp_path):
    checkpoint = finished_run / "run.pt"
    before = checkpoint.read_bytes()
    err = fails(BASE + change + ["--epochs", "2", "--checkpoint", str(checkpoint), "--resume",
                                 "--out", str(tmp_path / "out")], capsys)
    assert named in err and "is another job" in err and "Only --epochs, --no-progress, --out and --export may change" in err
    assert checkpoint.read_bytes() == before and not (tmp_path / "out").exists()     # nothing trained or written


def test_resume_refuses_other_images_with_the_same_settings(finished_run, capsys, monkeypatch):
    from tlhelpers import protocol

    real = protocol.three_splits

    def other_images(*args, **kwargs):       # as if the files on disk had changed since
        kwargs["seed"] = kwargs["seed"] + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(protocol, "three_splits", other_images)
    err = fails(BASE + ["--checkpoint", str(finished_run / "run.pt"), "--resume", "--epochs", "2"], capsys)
    assert "images differ from the ones it was trained on" in err


def test_the_job_settings_travel_in_the_checkpoint(finished_run):
    job = checkpoints.read_checkpoint(finished_run / "run.pt")["job"]
    assert job["settings"]["lr"] == 0.001 and job["settings"]["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert "epochs" not in job["settings"] and job["classes"] == [str(d) for d in range(10)]
    assert set(job["versions"]) == {"torch", "torchvision", "tlhelpers"} and len(job["dataset"]) == 64


def test_where_it_writes_is_checked_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    cases = [(["--checkpoint", str(tmp_path)], "is a folder; give a file"),
             (["--out", str(a_file)], "is a file; give a folder"),
             (["--out", str(a_file / "report")], "is a file, so nothing can be written under it"),
             (["--checkpoint", str(a_file / "run.pt")], "is a file, so nothing can be written under it")]
    for extra, message in cases:
        assert message in fails(BASE + extra, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and a_file.read_text() == "x"


def test_export_writes_a_bundle_scored_on_the_test_split(finished_run, tmp_path, capsys):
    from tlhelpers import predict, serving

    out, folder = tmp_path / "report", tmp_path / "bundle"
    assert finetune.main(BASE + ["--out", str(out), "--export", str(folder)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    manifest = serving.read_manifest(folder)
    assert report["bundle"]["folder"] == str(folder) and f"bundle in {folder}" in printed
    # the same 30 held-out images, through the exported program with the bundle's own preprocessing
    assert manifest["test"]["images"] == report["test_images"] == 30
    assert manifest["test"]["accuracy_pt2"] == pytest.approx(report["accuracy"])
    assert manifest["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V1" and manifest["classes"] == report["classes"]
    image = tmp_path / "digit.png"
    data.load_dataset("digits", "val", per_class=1)[0][0].save(image)
    assert predict.main([str(folder), str(image), "--runtime", "onnx", "--top-k", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")


def test_export_into_an_existing_folder_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "old.txt").write_text("keep me")
    err = fails(BASE + ["--export", str(tmp_path / "bundle"), "--out", str(tmp_path / "report")], capsys)
    assert "already exists; a bundle goes into a new folder" in err
    assert (tmp_path / "bundle" / "old.txt").read_text() == "keep me" and not (tmp_path / "report").exists()


def test_dropout_flag_and_per_rank_seeds(capsys):
    assert "--dropout must be in [0, 1)" in fails(BASE + ["--dropout", "1.5"], capsys)
    model, _, _ = finetune.load_model(finetune.parser().parse_args(BASE + ["--dropout", "0"]))
    args = finetune.parser().parse_args(BASE + ["--dropout", "0"])
    finetune.prepare_model(model, args, 10)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.0]
    seeds = {finetune.rank_seed(7, rank) for rank in range(4)}
    assert len(seeds) == 4 and finetune.rank_seed(7, 0) == 7     # one process keeps its seed


def test_the_optimizer_flag(capsys):
    args = finetune.parser().parse_args(BASE + ["--optimizer", "sgd", "--lr", "0.05", "--unfreeze", "stage5"])
    model, _, _ = finetune.load_model(args)
    head = finetune.prepare_model(model, args, 10)
    optimizer = finetune.make_optimizer(model, head, args)
    assert isinstance(optimizer, torch.optim.SGD) and [g["lr"] for g in optimizer.param_groups] == [0.05, 0.005]
    assert optimizer.param_groups[0]["momentum"] == 0.9
    with pytest.raises(SystemExit):
        finetune.parser().parse_args(["--optimizer", "rmsprop"])
    assert "invalid choice: 'rmsprop'" in capsys.readouterr().err


def test_export_without_its_extra_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """--export needs onnx, onnxscript, onnxruntime and safetensors: without one, the job says which
    extra installs them before loading any data or training a step."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)       # as if it were not installed
    err = fails(BASE + ["--export", str(tmp_path / "bundle"), "--out", str(tmp_path / "report")], capsys)
    assert "--export needs onnxruntime, which is not installed: pip install 'tlhelpers[export]'" in err
    assert not (tmp_path / "report").exists() and not (tmp_path / "bundle").exists()


def test_the_defaults_fit_every_built_in_dataset(capsys):
    """The README's `--dataset digits --epochs 3` with no sizes: the held-out split takes what the
    smallest class has (35 of digits' '2'), and a note says so, instead of stopping at once."""
    args = finetune.parser().parse_args(["--dataset", "digits", "--image-size", "32"])
    splits = finetune.load_data(args, None, processes=1)
    counts = torch.bincount(torch.tensor(protocol.targets_of(splits.test)))
    assert counts.min() == counts.max() == 35
    assert "note: digits's held-out split has 35 images in its smallest class" in capsys.readouterr().out
    explicit = finetune.parser().parse_args(["--dataset", "digits", "--test-per-class", "10"])
    assert len(finetune.load_data(explicit, None, processes=1).test) == 100


def test_a_data_problem_is_a_usage_error_and_a_bug_is_not(capsys, monkeypatch):
    err = fails(BASE[:2] + ["--dataset", "digits", "--per-class", "500", "--epochs", "1", "--no-progress"], capsys)
    assert "digits: class '0' has 142 training files; train 500 + validation 500 per class need 1000" in err

    def broken(*args, **kwargs):
        raise KeyError("a bug in the course")

    monkeypatch.setattr(finetune.protocol, "three_splits", broken)
    args = finetune.parser().parse_args(["--dataset", "digits", "--test-per-class", "3"])
    with pytest.raises(KeyError, match="a bug in the course"):      # not turned into "usage"
        finetune.load_data(args, None, processes=1)
