"""Shared fixtures for the tlhelpers tests.

Rules these fixtures enforce: real small models and real data; only the network is faked.

* ``OMP_WAIT_POLICY=PASSIVE`` is set before torch is imported (spinning OpenMP threads make
  torch several times slower on a shared 2-core machine).
* Every test runs offline (autouse ``no_internet``): connections to anything but this machine
  fail the way they do without a network, and ``pip download`` in :mod:`tlhelpers.assets`
  fails as it does without PyPI. A test that wants a download to "work" fakes it explicitly.
* ``flaky_urlopen(payload_for)`` makes urllib / torch.hub downloads start and then drop.
* ``isolated_torch_home`` / ``isolated_data_dir`` point the hub cache and the data folder at
  empty temporary folders, so tests can watch exactly what gets written there;
  ``torch_home_with_mobilenet`` is such a cache holding a copy of the real MobileNetV2 file;
  ``files_under(folder)`` lists what is there.
* ``pretrained_mobilenet_v2`` is the real MobileNetV2 with its real ImageNet weights, read once
  per session from the real hub cache (``make setup`` / ``python -m tlhelpers.assets fetch``
  puts it there); ``mobilenet_v2`` is a fresh copy of it that a test may change; ``resnet18``
  is a seeded random ResNet-18; ``sample_photos`` the real photos from tlhelpers.data.
* ``build_on_meta(name)`` builds any torchvision classifier on the meta device (shapes only).
* ``digits``: (train, validation) scikit-learn digits as tensors (20 and 10 per class), from
  ``tests/tiny.py``, which also holds the small CNN the training and checkpoint tests share.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import copy  # noqa: E402
import errno  # noqa: E402
import ipaddress  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from tlhelpers import assets  # noqa: E402

#: The hub cache as it was when the tests started (before any fixture isolated it).
REAL_HUB_DIR = Path(torch.hub.get_dir())
#: The real, verified MobileNetV2 ImageNet weights file.
REAL_MOBILENET_FILE = REAL_HUB_DIR / "checkpoints" / assets.MOBILENET_V2_FILE

OFFLINE_HINT = "tests run offline (tests/conftest.py no_internet)"


# --------------------------------------------------------------------------- offline

def _is_local(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host)
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_internet(monkeypatch):
    """Fail every connection to another machine the way an offline laptop does.

    Loopback (127.0.0.1, ::1, localhost) and Unix sockets keep working, so JupyterLab and
    kernels still do. ``pip download`` in tlhelpers.assets runs in a subprocess, out of reach
    of these patches, so it is replaced by a failure that reads like pip's offline one.
    """
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            raise socket.gaierror(socket.EAI_NONAME, f"Name or service not known: {host} ({OFFLINE_HINT})")
        return real_getaddrinfo(host, *args, **kwargs)

    def _refuse(sock, address) -> bool:
        return sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0])

    def connect(self, address):
        if _refuse(self, address):
            raise OSError(errno.ENETUNREACH, f"Network is unreachable ({OFFLINE_HINT})")
        return real_connect(self, address)

    def connect_ex(self, address):
        if _refuse(self, address):
            return errno.ENETUNREACH
        return real_connect_ex(self, address)

    def pip_offline(requirement, folder):
        raise assets.AssetError(
            f"pip download {requirement} failed: ERROR: Could not find a version that satisfies "
            f"the requirement {requirement} (no network: {OFFLINE_HINT})"
        )

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(assets, "_pip_download", pip_offline)


class PartialResponse:
    """A urlopen() response that delivers ``payload`` and then loses the connection."""

    def __init__(self, url: str, payload: bytes, total: int | None = None):
        self.url = url
        self._payload = payload
        self.length = total if total is not None else 2 * len(payload) + 1
        self.status = 200

    def info(self):
        import email.message

        message = email.message.Message()
        message["Content-Length"] = str(self.length)
        return message

    def read(self, size: int = -1) -> bytes:
        if self._payload:
            chunk = self._payload if size is None or size < 0 else self._payload[:size]
            self._payload = self._payload[len(chunk):]
            return chunk
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (faked mid-download)")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def flaky_urlopen(monkeypatch):
    """Make urlopen (urllib, torch.hub) answer with ``payload_for(url)`` bytes, then drop.

    Returns the list of URLs requested. HEAD-style redirect checks (torchvision asks before
    downloading) get a response that reads nothing. Usage:
    ``urls = flaky_urlopen(lambda url: b"half a file")``.
    """
    import urllib.request

    requested: list[str] = []

    def install(payload_for):
        def urlopen(request, *args, **kwargs):
            url = request.full_url if hasattr(request, "full_url") else str(request)
            requested.append(url)
            return PartialResponse(url, payload_for(url))

        monkeypatch.setattr(urllib.request, "urlopen", urlopen)
        monkeypatch.setattr(torch.hub, "urlopen", urlopen)
        return requested

    return install


# --------------------------------------------------------------------------- isolated folders

def _files_under(folder: Path) -> list[str]:
    """Every file (not folder) under ``folder``, relative, sorted; [] if it does not exist."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


@pytest.fixture
def files_under():
    """``files_under(folder)``: every file (not folder) below it, relative and sorted."""
    return _files_under


@pytest.fixture
def isolated_torch_home(tmp_path, monkeypatch) -> Path:
    """An empty ``$TORCH_HOME`` and hub dir; returns its ``hub/checkpoints`` folder (not created)."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    saved = getattr(torch.hub, "_hub_dir", None)  # set_dir() has no "unset": restore by hand
    torch.hub.set_dir(str(home / "hub"))
    checkpoints = home / "hub" / "checkpoints"
    assert assets.checkpoint_dir() == checkpoints
    try:
        yield checkpoints
    finally:
        torch.hub._hub_dir = saved


@pytest.fixture
def real_mobilenet_file() -> Path:
    """Path of the real, verified MobileNetV2 weights in the real hub cache."""
    if not REAL_MOBILENET_FILE.is_file():
        pytest.fail(f"{REAL_MOBILENET_FILE} is missing: run `python -m tlhelpers.assets fetch` "
                    "(make setup does) before the tests")
    return REAL_MOBILENET_FILE


@pytest.fixture
def torch_home_with_mobilenet(isolated_torch_home, real_mobilenet_file) -> Path:
    """An isolated hub cache holding a copy of the real MobileNetV2 V1 file; returns the folder."""
    isolated_torch_home.mkdir(parents=True)
    shutil.copyfile(real_mobilenet_file, isolated_torch_home / assets.MOBILENET_V2_FILE)
    return isolated_torch_home


@pytest.fixture
def isolated_data_dir(tmp_path, monkeypatch) -> Path:
    """An empty, not yet created ``$TLHELPERS_DATA``; returns its path."""
    folder = tmp_path / "data"
    monkeypatch.setenv("TLHELPERS_DATA", str(folder))
    return folder


# --------------------------------------------------------------------------- real models

@pytest.fixture(scope="session")
def pretrained_mobilenet_v2() -> torch.nn.Module:
    """The real MobileNetV2 with ImageNet weights (IMAGENET1K_V1), in eval mode. Do not modify:
    use the ``mobilenet_v2`` fixture for a copy you may change."""
    if not REAL_MOBILENET_FILE.is_file():
        pytest.fail(f"{REAL_MOBILENET_FILE} is missing: run `python -m tlhelpers.assets fetch`")
    assets.verify(REAL_MOBILENET_FILE)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(REAL_MOBILENET_FILE, map_location="cpu", weights_only=True))
    return model.eval()


@pytest.fixture
def mobilenet_v2(pretrained_mobilenet_v2) -> torch.nn.Module:
    """A private copy of the pretrained MobileNetV2 that a test may freeze, train or cut."""
    return copy.deepcopy(pretrained_mobilenet_v2)


@pytest.fixture
def resnet18() -> torch.nn.Module:
    """A randomly initialised ResNet-18 (no weights needed), seeded."""
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None)


@pytest.fixture(scope="session")
def digits():
    from tiny import digits_tensors

    return digits_tensors("train"), digits_tensors("val", per_class=10)


@pytest.fixture(scope="session")
def sample_photos():
    from tlhelpers import data

    return data.sample_photos()


def _build_on_meta(name: str, **kwargs) -> torch.nn.Module:
    """Build torchvision classifier ``name`` on the meta device: shapes only, no memory, fast.

    RegNet builders compute their block widths with torch tensors and ``.tolist()``, which
    meta tensors cannot do; that arithmetic runs on the CPU while the layers go on meta.
    """
    from torchvision.models import regnet

    original = regnet.BlockParams.__dict__["from_init_params"]

    def widths_on_cpu(cls, *args, **kw):
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kw)

    regnet.BlockParams.from_init_params = classmethod(widths_on_cpu)
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name, **kwargs)
    finally:
        regnet.BlockParams.from_init_params = original


@pytest.fixture(scope="session")
def build_on_meta():
    """``build_on_meta(name, **kwargs)``: a torchvision classifier on the meta device."""
    return _build_on_meta
