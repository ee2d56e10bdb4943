"""atomic_write: modes that do not depend on the umask, data on disk before the rename."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from monitor import files
from monitor.files import PUBLIC_MODE, atomic_write


@pytest.fixture
def umask():
    def set_umask(value: int) -> None:
        os.umask(value)
    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_files_are_0640_under_a_permissive_umask(tmp_path: Path, umask):
    umask(0)
    atomic_write(tmp_path / "state/sub/status.json", "{}")
    assert mode(tmp_path / "state/sub/status.json") == 0o640
    assert mode(tmp_path / "state") == mode(tmp_path / "state/sub") == 0o750


def test_pages_stay_readable_for_the_web_server_under_a_strict_umask(tmp_path: Path, umask):
    umask(0o027)  # systemd unit's UMask=
    atomic_write(tmp_path / "html/router/Gi0%2F1/day.png", b"\x89PNG", PUBLIC_MODE)
    assert mode(tmp_path / "html/router/Gi0%2F1/day.png") == 0o644
    for directory in ("html", "html/router", "html/router/Gi0%2F1"):
        assert mode(tmp_path / directory) == 0o755
    # A directory that was already there keeps the mode its owner gave it.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine").chmod(0o711)
    atomic_write(tmp_path / "mine/index.html", "<p>", PUBLIC_MODE)
    assert mode(tmp_path / "mine") == 0o711


def test_private_files_keep_their_own_mode(tmp_path: Path, umask):
    atomic_write(tmp_path / "mail/1.eml", b"x", 0o600)
    assert mode(tmp_path / "mail/1.eml") == 0o600 and mode(tmp_path / "mail") == 0o700


def test_data_is_synced_before_the_rename_and_the_directory_after(tmp_path: Path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    atomic_write(tmp_path / "status.json", "{}")
    assert events == [("fsync", False), ("replace", "status.json"), ("fsync", True)]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch):
    target = tmp_path / "status.json"
    atomic_write(target, "old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
