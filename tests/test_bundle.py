"""An exported bundle leaves the course behind: torch alone or onnxruntime alone serves it, and
both agree with the eager model on real images."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from tlhelpers import bundle, data, models, serving

WEIGHTS = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
TRANSFORM = WEIGHTS.transforms(crop_size=64, resize_size=64)


@pytest.fixture(scope="module")
def test_images():
    """Real held-out images as a user hands them over: PIL, with labels (digits, 3 per class)."""
    return data.load_dataset("digits", "val", per_class=3, seed=0)


@pytest.fixture(scope="module")
def exported(pretrained_mobilenet_v2, test_images, tmp_path_factory):
    torch.manual_seed(0)
    model = copy.deepcopy(pretrained_mobilenet_v2)
    models.replace_head(model, 10)
    folder = tmp_path_factory.mktemp("bundles") / "digits"
    manifest = bundle.export(model, folder, classes=test_images.classes, transform=TRANSFORM, backbone="mobilenet_v2",
                             weights=str(WEIGHTS), test_images=test_images)
    return model.eval(), folder, manifest


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name, photo in data.sample_photos().items():
        photo.save(folder / f"{name}.jpg")
        paths.append(folder / f"{name}.jpg")
    return paths


def test_the_bundle_holds_everything_a_server_needs(exported):
    _, folder, manifest = exported
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "labels.txt", "model.onnx", "model.pt2",
                                                       "predict.py", "weights.safetensors"]
    saved = json.loads((folder / "bundle.json").read_text())
    assert saved == manifest and saved["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert saved["preprocessing"] == {"resize_size": 64, "crop_size": 64, "mean": [0.485, 0.456, 0.406],
                                      "std": [0.229, 0.224, 0.225], "interpolation": "bilinear",
                                      "convert": "RGB (tlhelpers.serving.to_rgb)"}
    assert {"torch", "torchvision", "onnx", "onnxruntime"} <= set(saved["versions"]) and saved["onnx_opset"] == 18
    assert (folder / "labels.txt").read_text().split() == [str(d) for d in range(10)]
    assert not list(folder.parent.glob(".*partial"))


def test_the_onnx_file_passes_the_checker_with_its_opset(exported):
    import onnx

    model = onnx.load(str(exported[1] / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]


def test_safetensors_weights_load_into_the_architecture(exported):
    from safetensors.torch import load_file

    model, folder, _ = exported
    fresh = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    fresh.load_state_dict(load_file(str(folder / "weights.safetensors")))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_the_bundles_preprocessing_is_the_weights_own(photo_files, exported):
    spec = exported[2]["preprocessing"]
    from PIL import Image

    for path in photo_files:
        with Image.open(path) as image:
            assert np.array_equal(serving.preprocess(image, spec), TRANSFORM(image.convert("RGB")).numpy()), path


def _serve(folder, runtime: str, images, blocked: list[str]) -> subprocess.CompletedProcess:
    """The bundle's predict.py in a fresh process in which ``blocked`` modules cannot be imported."""
    code = ("import runpy, sys\n"
            f"for name in {blocked!r}: sys.modules[name] = None   # importing these now fails\n"
            f"sys.argv = ['predict.py', '--runtime', {runtime!r}, '--json', '--top-k', '3', *{[str(p) for p in images]!r}]\n"
            f"runpy.run_path({str(folder / 'predict.py')!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"), cwd=folder.parent)


@pytest.mark.parametrize("runtime, blocked", [("pt2", ["tlhelpers", "torchvision", "onnxruntime"]),
                                              ("onnx", ["tlhelpers", "torch", "torchvision"])])
def test_torch_alone_or_onnxruntime_alone_serves_it_like_the_eager_model(runtime, blocked, exported, photo_files):
    model, folder, manifest = exported
    done = _serve(folder, runtime, photo_files, blocked)
    assert done.returncode == 0, done.stderr[-3000:]
    served = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image"] for r in served] == [str(p) for p in photo_files]
    from PIL import Image

    batch = torch.stack([torch.from_numpy(serving.preprocess(Image.open(p), manifest["preprocessing"]))
                         for p in photo_files])
    with torch.inference_mode():
        eager = model(batch)
    logits = torch.tensor([r["logits"] for r in served])
    torch.testing.assert_close(logits, eager, rtol=0, atol=1e-4)
    assert [r["top"][0][0] for r in served] == [manifest["classes"][i] for i in eager.argmax(1).tolist()]


def test_the_recorded_test_accuracy_is_the_eager_models(exported, test_images):
    model, _, manifest = exported
    with torch.inference_mode():
        predicted = model(torch.stack([TRANSFORM(image) for image, _ in test_images])).argmax(1)
    eager = (predicted == torch.tensor(test_images.targets)).float().mean().item()
    assert manifest["test"]["images"] == 30
    assert manifest["test"]["accuracy_pt2"] == pytest.approx(eager) == manifest["test"]["accuracy_onnx"]


def test_an_unreadable_image_gets_one_line_and_the_rest_are_predicted(exported, photo_files, tmp_path, capsys):
    from tlhelpers import predict

    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    status = predict.main([str(exported[1]), str(photo_files[0]), str(broken), str(photo_files[1]), "--top-k", "2"])
    out, err = capsys.readouterr()
    assert status == 1
    assert [line.split(":")[0] for line in out.splitlines()] == [str(photo_files[0]), str(photo_files[1])]
    assert err.count("\n") == 1 and err.startswith(f"{broken}: cannot read this image (UnidentifiedImageError")


def test_not_a_bundle_is_one_clear_line(tmp_path, photo_files, capsys):
    from tlhelpers import predict

    assert predict.main([str(tmp_path), str(photo_files[0])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a bundle: cannot read bundle.json" in err


def test_an_existing_folder_is_not_replaced_by_accident(exported):
    model, folder, _ = exported
    before = (folder / "bundle.json").read_text()
    with pytest.raises(FileExistsError, match="already exists"):
        bundle.export(model, folder, classes=[str(d) for d in range(10)], transform=TRANSFORM,
                      backbone="mobilenet_v2", weights=str(WEIGHTS))
    assert (folder / "bundle.json").read_text() == before


def _copy_bundle(folder, tmp_path):
    import shutil

    copied = tmp_path / "copied"
    shutil.copytree(folder, copied)
    return copied


@pytest.mark.parametrize("damage", ["appended", "missing"])
def test_a_tampered_or_incomplete_bundle_is_refused_with_one_line(exported, photo_files, tmp_path, capsys, damage):
    """The library, tlhelpers-predict and the bundle's own predict.py (torch or onnxruntime alone)
    all refuse it, naming the file, before loading anything."""
    from tlhelpers import predict

    folder = _copy_bundle(exported[1], tmp_path)
    onnx_file = folder / "model.onnx"
    if damage == "appended":
        onnx_file.write_bytes(onnx_file.read_bytes() + b"garbage")
        expected = "model.onnx does not match the sha256 in bundle.json"
    else:
        onnx_file.unlink()
        expected = "is incomplete: model.onnx is missing"
    with pytest.raises(serving.BundleError, match=expected.replace(".", r"\.")):
        serving.Predictor(folder, "onnx")
    with pytest.raises(serving.BundleError, match="model.onnx"):
        serving.Predictor(folder, "pt2")           # every file is checked, whichever runtime serves
    assert predict.main([str(folder), str(photo_files[0])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    for runtime, blocked in (("onnx", ["tlhelpers", "torch", "torchvision"]),
                             ("pt2", ["tlhelpers", "torchvision", "onnxruntime"])):
        done = _serve(folder, runtime, photo_files[:1], blocked)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr


@pytest.mark.parametrize("order", [
    ["--top-k", "2", "BUNDLE", "IMAGE"],
    ["BUNDLE", "--top-k", "2", "IMAGE"],
    ["BUNDLE", "IMAGE", "--top-k", "2"],
    ["--json", "BUNDLE", "--top-k", "2", "IMAGE", "--runtime", "onnx"],
])
def test_tlhelpers_predict_takes_its_options_anywhere(exported, photo_files, capsys, order):
    from tlhelpers import predict

    argv = [str(exported[1]) if a == "BUNDLE" else str(photo_files[0]) if a == "IMAGE" else a for a in order]
    assert predict.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out.strip()
    if "--json" in order:
        assert len(json.loads(out)["top"]) == 2
    else:
        assert out.startswith(f"{photo_files[0]}: ") and out.count(",") == 1      # two classes


def test_images_are_predicted_in_batches_in_order(exported, photo_files, tmp_path):
    predictor = serving.Predictor(exported[1], "onnx")
    sizes = []
    real = predictor.__call__

    class Counting:
        manifest, classes = predictor.manifest, predictor.classes

        def __call__(self, batch):
            sizes.append(len(batch))
            return real(batch)

    broken = tmp_path / "broken.png"
    broken.write_text("no")
    paths = [str(p) for p in photo_files] * 3 + [str(broken)]
    results, errors = serving.predict_files(Counting(), paths, k=1, batch_size=4)
    assert max(sizes) <= 4 and sum(sizes) == len(paths) - 1
    assert [r["image"] for r in results] == paths[:-1] and len(errors) == 1
    whole, _ = serving.predict_files(predictor, paths[:-1], k=1)
    assert [r["top"] for r in results] == [r["top"] for r in whole]


def test_export_leaves_the_callers_model_alone_and_a_failed_reexport_keeps_the_old_bundle(
        exported, test_images, tmp_path, monkeypatch):
    model, folder, _ = exported
    folder = _copy_bundle(folder, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    model.train()
    try:
        monkeypatch.setattr(bundle, "_write_programs", lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            bundle.export(model, folder, classes=test_images.classes, transform=TRANSFORM, backbone="mobilenet_v2",
                          weights=str(WEIGHTS), overwrite=True)
        assert model.training, "export works on a copy: the caller's model keeps its mode"
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["copied"]       # no staging folder left
    finally:
        model.eval()
