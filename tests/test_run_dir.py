"""The run directory is ours alone: made 0700, refused when it is a link, not a
directory, another user's or writable by others; the state file is never
written or read through a planted link; every ipc socket is owner-only."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pipeline import bus
from pipeline.errors import UserError
from pipeline.supervisor import read_state

from test_pipeline import Pipeline


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_made_owner_only_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        d = bus.check_run_dir(tmp_path / "a" / "run", create=True)
    finally:
        os.umask(old)
    assert d.is_dir() and mode(d) == 0o700


def test_a_run_dir_that_is_not_ours_alone_is_refused(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(UserError, match=r"is writable by others \(mode 0777\)"):
        bus.check_run_dir(open_dir, create=True)
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(UserError, match="is a symbolic link"):
        bus.check_run_dir(link)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(UserError, match="is not a directory"):
        bus.check_run_dir(afile, create=True)
    if os.getuid() == 0:                      # only root can give a directory away
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(UserError, match="belongs to uid 65534"):
            bus.check_run_dir(theirs)
        with pytest.raises(UserError, match="belongs to uid 65534"):
            read_state(theirs, "default")


def test_state_file_never_written_or_read_through_a_link(tmp_path):
    run = bus.check_run_dir(tmp_path / "run", create=True)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o644)
    # links planted where a writer might put its temporary file, and as the state file
    for name in (f".default.json.{os.getpid()}.tmp", "default.tmp"):
        (run / name).symlink_to(victim)
    bus.write_private(run / "default.json", b'{"pid": 1}')
    assert victim.read_text() == "precious" and mode(victim) == 0o644
    assert mode(run / "default.json") == 0o600 and not (run / "default.json").is_symlink()
    (run / "default.json").unlink()
    (run / "default.json").symlink_to(victim)
    with pytest.raises(UserError, match="cannot read the state file"):
        read_state(run, "default")


def test_start_refuses_an_open_run_dir_in_one_line(tmp_path):
    p = Pipeline(tmp_path)
    run = Path(p.env["TICKPIPE_RUN_DIR"])
    run.mkdir()
    run.chmod(0o777)
    r = p.cli("start", "--duration", "1")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        f"pipeline: run directory {run} is writable by others (mode 0777); refusing to use it "
        "(remove it, or set TICKPIPE_RUN_DIR or pipeline.run_dir to a directory of your own, mode 0700)"]
    assert "Traceback" not in r.stdout + r.stderr


def test_every_ipc_socket_is_owner_only(tmp_path):
    tap_path = tmp_path / "elsewhere" / "tap.sock"
    tap_path.parent.mkdir()
    p = Pipeline(tmp_path, tap_bind=f"ipc://{tap_path}").start()
    try:
        p.wait_running()
        run = Path(p.env["TICKPIPE_RUN_DIR"])
        assert mode(run) == 0o700
        state = json.loads((run / "t.json").read_text())
        sockets = [e[len("ipc://"):] for e in state["endpoints"].values() if e.startswith("ipc://")]
        assert len(sockets) == 4 and any(s.endswith(".tap") for s in sockets)
        for path in sockets + [str(tap_path)]:
            assert stat.S_ISSOCK(os.lstat(path).st_mode), path
            assert mode(path) == 0o600, f"{path}: {mode(path):04o}"
        assert mode(run / "t.json") == 0o600
        assert p.cli("stop").returncode == 0
        assert p.wait_exit() == 0
    finally:
        p.kill()
