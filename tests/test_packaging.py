"""The package as others install it: the built wheel, in a fresh virtual environment outside the checkout.

The wheel is built from this checkout (``pip wheel --no-build-isolation``, offline) and installed
without dependencies into a new virtual environment in a temporary folder. The tests run offline,
so that environment cannot download torch: it sees the course's installed dependencies through a
``.pth`` line placed after its own site-packages (its own ``tlhelpers`` comes first). Checked: the
installed package (not the checkout) is what runs, its metadata declares every extra with
requirements the environment satisfies, the simulator's JavaScript and CSS are inside it, both
command-line tools answer ``--help``, and a tiny model exported with ``bundle.export`` is served by
``tlhelpers-predict``, all from the fresh environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("export", "course", "test")


def _run(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh environment's python, a work folder outside the checkout) with the wheel installed."""
    work = tmp_path_factory.mktemp("outside")
    wheels = work / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(ROOT)], cwd=work)
    (wheel,) = wheels.glob("tlhelpers-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=work).stdout.strip())
    (site / "zz_course_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=work)
    return python, work


def test_the_installed_package_runs_not_the_checkout(fresh):
    python, work = fresh
    where = _run([str(python), "-c", "import tlhelpers, sys; print(tlhelpers.__file__); print(sys.prefix)"],
                 cwd=work).stdout.split()
    assert Path(where[0]).is_relative_to(Path(where[1])) and not Path(where[0]).is_relative_to(ROOT)


def test_the_metadata_declares_every_extra_and_the_environment_satisfies_it(fresh):
    python, work = fresh
    code = ("import importlib.metadata as m, json\n"
            "from packaging.requirements import Requirement\n"
            "dist = m.distribution('tlhelpers')\n"
            "out = {'extras': dist.metadata.get_all('Provides-Extra'), 'unmet': []}\n"
            f"for extra in {EXTRAS!r} + ('',):\n"
            "    for text in dist.requires:\n"
            "        r = Requirement(text)\n"
            "        if r.marker is not None and not r.marker.evaluate({'extra': extra}) or (r.marker is None) != (extra == ''):\n"
            "            continue\n"
            "        try:\n"
            "            ok = m.version(r.name) in r.specifier or not r.specifier\n"
            "        except m.PackageNotFoundError:\n"
            "            ok = False\n"
            "        if not ok: out['unmet'].append(text)\n"
            "print(json.dumps(out))\n")
    found = json.loads(_run([str(python), "-c", code], cwd=work).stdout)
    assert set(EXTRAS) <= set(found["extras"])
    assert not found["unmet"], f"requirements the course's environment does not satisfy: {found['unmet']}"


def test_the_simulators_javascript_and_css_are_installed(fresh):
    python, work = fresh
    static = Path(_run([str(python), "-c", "import tlhelpers.simulator as s, pathlib; "
                                           "print(pathlib.Path(s.__file__).parent / 'static')"], cwd=work).stdout.strip())
    assert (static / "freeze_view.js").stat().st_size > 10_000 and (static / "freeze_view.css").exists()


@pytest.mark.parametrize("tool", ["tlhelpers-predict", "tlhelpers-finetune"])
def test_the_command_line_tools_answer_help(fresh, tool):
    python, work = fresh
    done = _run([str(python.parent / tool), "--help"], cwd=work)
    assert done.stdout.startswith("usage: ")


def test_a_tiny_export_and_predict_round_trip(fresh):
    """bundle.export from the installed package, then the installed tlhelpers-predict serves it."""
    python, work = fresh
    code = ("import torch, torchvision\n"
            "from PIL import Image\n"
            "from tlhelpers import bundle\n"
            "torch.manual_seed(0)\n"
            "model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),"
            " torch.nn.Linear(4, 2))\n"
            "preset = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms(crop_size=32, resize_size=32)\n"
            "bundle.export(model, 'bundle', classes=['ant', 'bee'], transform=preset, backbone='tiny', weights='none')\n"
            "Image.new('RGB', (40, 30), (200, 120, 40)).save('photo.png')\n")
    _run([str(python), "-c", code], cwd=work)
    done = _run([str(python.parent / "tlhelpers-predict"), "--top-k", "2", "bundle", "photo.png", "--runtime", "onnx",
                 "--json"], cwd=work)
    result = json.loads(done.stdout)
    assert result["image"] == "photo.png" and sorted(name for name, _ in result["top"]) == ["ant", "bee"]
    assert abs(sum(p for _, p in result["top"]) - 1.0) < 1e-5
