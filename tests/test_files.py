"""tlhelpers.files.atomic_write: files others can read, modes kept, nothing half-written."""

from __future__ import annotations

import os
import stat

import pytest

from tlhelpers import files


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_file_gets_the_umasks_mode_not_0600(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        assert files.current_umask() == umask
        with files.atomic_write(tmp_path / "weights.pth") as staging:
            staging.write_bytes(b"data")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "weights.pth") == expected


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    path.chmod(0o640)
    with files.atomic_write(path) as staging:
        staging.write_text("new")
    assert path.read_text() == "new" and _mode(path) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"complete")
    with pytest.raises(RuntimeError), files.atomic_write(path) as staging:
        staging.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_file_and_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    with files.atomic_write(tmp_path / "x.bin") as staging:
        staging.write_bytes(b"1")
    assert any(p.endswith(".partial") for p in synced)        # the content, before the rename
    assert str(tmp_path) in synced                            # the folder, after it


def test_first_source_tries_in_order_records_failures_and_gives_up_clearly():
    calls = []

    def failing(name, error):
        def attempt():
            calls.append(name)
            raise error
        return attempt

    result = files.first_source([("a", failing("a", OSError("no network"))), ("b", lambda: calls.append("b") or 42),
                                 ("c", failing("c", AssertionError("never reached")))],
                                tried=["cache (not there)"], give_up=lambda tried: AssertionError(tried))
    assert result == 42 and calls == ["a", "b"]
    tried: list[str] = []
    with pytest.raises(files.AssetError, match=r"a: OSError: no network \| b: ValueError: bad zip") as caught:
        files.first_source([("a", failing("a", OSError("no network"))), ("b", failing("b", ValueError("bad zip")))],
                           tried=tried, give_up=lambda t: files.AssetError(" | ".join(t)))
    assert tried == ["a: OSError: no network", "b: ValueError: bad zip"] and caught.value is not None


def test_first_source_stops_at_a_refused_file():
    def refused():
        raise files.HashMismatchError("wrong hash")

    with pytest.raises(files.HashMismatchError):
        files.first_source([("cache", refused), ("download", lambda: "never tried")],
                           tried=[], give_up=lambda t: AssertionError(t), stop_on=(files.HashMismatchError,))


def test_atomic_folder_swaps_in_a_complete_folder_and_keeps_nothing_else(tmp_path):
    target = tmp_path / "site"
    with files.atomic_folder(target) as staging:
        (staging / "index.html").write_text("one")
        (staging / "static").mkdir()
        (staging / "static" / "a.css").write_text("css")
    assert (target / "index.html").read_text() == "one" and (target / "static" / "a.css").exists()
    with files.atomic_folder(target) as staging:
        (staging / "index.html").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["index.html"] and (target / "index.html").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]          # no staging or old folder left
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~files.current_umask()


def test_a_failed_atomic_folder_leaves_the_old_folder_whole(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "model.onnx").write_text("old model")
    with pytest.raises(RuntimeError, match="export failed"), files.atomic_folder(target) as staging:
        (staging / "model.onnx").write_text("half a new")
        raise RuntimeError("export failed")
    assert (target / "model.onnx").read_text() == "old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_when_the_swap_itself_fails_the_old_folder_is_moved_back(tmp_path, monkeypatch):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_rename = type(target).rename

    def rename(self, destination):
        if self.name.endswith(".partial"):
            raise OSError("disk full")
        return real_rename(self, destination)

    monkeypatch.setattr(type(target), "rename", rename)
    with pytest.raises(OSError, match="disk full"), files.atomic_folder(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_bug_in_a_source_is_not_mistaken_for_a_failed_source():
    """A TypeError is the course's own mistake: it propagates at once instead of reading as
    "this source failed" and sending the learner to the next one."""
    def buggy():
        raise TypeError("unsupported operand")

    tried: list[str] = []
    with pytest.raises(TypeError, match="unsupported operand"):
        files.first_source([("cache", buggy), ("download", lambda: "never tried")], tried=tried,
                           give_up=lambda t: AssertionError(t))
    assert tried == []
