"""Every command in the README's ```bash blocks runs as written (the front door must not break).

The README is read, not copied: each command line (continuations joined, comments dropped) must
have an entry in HOW, or this fails naming the new command. Each entry runs the command as the
README spells it, in a scratch folder that holds what the reader is assumed to have (their photo
folder, a photo, a link to the course's ``.venv``), with only these changes, each written next
to its command: a tiny budget where a flag allows (``--epochs``, ``--per-class``, ``--image-size``),
and, for servers, a free port and a time limit (the test starts them, fetches a page, stops
them). ``make test`` is the command running this test, and ``pip install -r requirements.txt``
needs the package index (tests/test_packaging.py installs the same package with its extras from
a built wheel into a fresh virtual environment): both are listed, with that reason, and not run.

Slow (a minute or two: a JupyterLab start, a site build, three tiny training runs, torchrun):
``make test`` runs it, ``make unit`` does not.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin"
NOT_RUN = {
    "make test": "the command running this test",
    "pip install -r requirements.txt": "needs the package index; tests/test_packaging.py installs the same "
                                       "package with its extras from a built wheel into a fresh venv",
}
#: README command -> (the command this test runs, where: "repo" or "scratch", a page to fetch or None).
#: ``{port}`` is a free port. Every change from the README's text is a tiny budget or a port.
HOW: dict[str, tuple[str, str, str | None]] = {
    "make lab": ("make lab PORT={port}", "repo", "/lab"),
    "python -m tlhelpers.assets fetch": ("python -m tlhelpers.assets fetch", "scratch", None),
    "jupyter lab notebooks/": ("jupyter lab {root}/notebooks/ --no-browser --port={port} --ip=127.0.0.1"
                               + (" --allow-root" if os.geteuid() == 0 else ""), "scratch", "/lab"),
    "make book": ("make book", "repo", None),
    "cd build/book && python -m http.server": ("cd {root}/build/book && python -m http.server {port} "
                                               "--bind 127.0.0.1", "scratch", "/index.html"),
    ".venv/bin/python -m tlhelpers.finetune --dataset imagefolder --root my_photos --per-class 50 "
    "--epochs 5 --unfreeze stage5 head_conv --checkpoint runs/mine.pt --out runs/mine":
        (".venv/bin/python -m tlhelpers.finetune --dataset imagefolder --root my_photos --per-class 6 "
         "--epochs 1 --unfreeze stage5 head_conv --checkpoint runs/mine.pt --out runs/mine "
         "--image-size 64 --val-per-class 3 --no-progress", "scratch", None),
    ".venv/bin/torchrun --standalone --nproc_per_node=2 -m tlhelpers.finetune --dataset digits --epochs 3":
        (".venv/bin/torchrun --standalone --nproc_per_node=2 -m tlhelpers.finetune --dataset digits --epochs 1 "
         "--per-class 5 --image-size 32 --no-progress", "scratch", None),
    ".venv/bin/python -m tlhelpers.finetune --dataset digits --per-class 20 --epochs 3 --export runs/digits-bundle":
        (".venv/bin/python -m tlhelpers.finetune --dataset digits --per-class 5 --epochs 1 --image-size 32 "
         "--export runs/digits-bundle --no-progress", "scratch", None),
    "python runs/digits-bundle/predict.py photo.png": ("python runs/digits-bundle/predict.py photo.png", "scratch", None),
    "python runs/digits-bundle/predict.py --runtime onnx photo.png":
        ("python runs/digits-bundle/predict.py --runtime onnx photo.png", "scratch", None),
    ".venv/bin/python -m tlhelpers.predict runs/digits-bundle *.png":
        (".venv/bin/python -m tlhelpers.predict runs/digits-bundle *.png", "scratch", None),
}


def readme_commands() -> list[str]:
    """Each command line of the README's ```bash blocks, continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(re.sub(r"\s+", " ", command))
    return commands


def test_every_readme_command_is_run_here_or_says_why_not():
    commands = readme_commands()
    assert len(commands) >= 10, "the README's bash blocks were not found"
    unknown = [c for c in commands if c not in HOW and c not in NOT_RUN]
    assert not unknown, f"README commands this test does not run yet (add them to HOW): {unknown}"
    stale = [c for c in list(HOW) + list(NOT_RUN) if c not in commands]
    assert not stale, f"HOW/NOT_RUN name commands the README no longer has: {stale}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """The reader's folder: .venv (a link to the course's), my_photos/{train,val}/{cat,coffee}, photo.png."""
    from tlhelpers import data

    folder = tmp_path_factory.mktemp("reader")
    (folder / ".venv").symlink_to(ROOT / ".venv")
    photos = data.sample_photos()
    for split, count in (("train", 9), ("val", 3)):
        for label, name in (("cat", "chelsea"), ("coffee", "coffee")):
            where = folder / "my_photos" / split / label
            where.mkdir(parents=True)
            for i in range(count):
                photos[name].crop((i, i, photos[name].width - i, photos[name].height - i)).save(where / f"{i}.jpg")
    photos["chelsea"].convert("L").resize((28, 28)).save(folder / "photo.png")
    return folder


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", OMP_WAIT_POLICY="PASSIVE")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(command: str, cwd: Path, port: int, page: str) -> None:
    """Start ``command``, fetch ``page`` from it within 120 s, stop it and everything it started."""
    server = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=_env(), start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, last = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            assert server.poll() is None, f"{command!r} stopped: {server.stdout.read()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{page}", timeout=5) as response:
                    assert response.status == 200
                    return
            except OSError as error:
                last = error
                time.sleep(1)
        pytest.fail(f"{command!r} served nothing at {page} in 120 s ({last})")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


#: In the README's order (HOW lists them so): the bundle is written before it is served, the site
#: built before it is served.
ORDER = list(HOW)


@pytest.mark.parametrize("readme_command", ORDER, ids=[c.split(" --")[0][:40] for c in ORDER])
def test_readme_command_runs(readme_command, scratch):
    command, where, page = HOW[readme_command]
    cwd = ROOT if where == "repo" else scratch
    if page is not None:
        port = _free_port()
        _serve(command.format(port=port, root=ROOT), cwd, port, page)
        return
    done = subprocess.run(["bash", "-c", command.format(root=ROOT)], cwd=cwd, env=_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, f"{command!r} failed ({done.returncode}):\n{done.stdout[-3000:]}"
    if "predict" in command:
        assert re.search(r"photo\.png: \S+ [01]\.\d+", done.stdout), f"{command!r} printed no top-k:\n{done.stdout}"


def test_not_run_commands_still_exist_as_written():
    """What NOT_RUN skips is still what it says: `make test` is a Makefile target, requirements.txt installs the project."""
    assert re.search(r"^test:", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert "-e ." in (ROOT / "requirements.txt").read_text()
    assert shutil.which("make") and sys.executable
