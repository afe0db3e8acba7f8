"""Which pipeline a command is about when neither --name nor --config says: the one
running here, whatever its name (issue 12: a named pipeline was invisible to a plain
`pipeline status`), or a clear list when several run."""
from __future__ import annotations

import argparse
import json
import os

import psutil
import pytest

from conftest import write_config
from pipeline.cli import _target, main
from pipeline.supervisor import running_pipelines, state_path


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("TICKPIPE_RUN_DIR", str(folder))
    monkeypatch.chdir(tmp_path)                    # no conf/default.toml here: built-in defaults
    return folder


def running(run_dir, name: str, config: str, alive: bool = True) -> None:
    """The state file a supervisor writes: this test's process as its supervisor, or
    (``alive`` false) a supervisor that died, its pid since taken by another process."""
    p = psutil.Process(os.getpid())
    st = {"name": name, "run_id": "r" + name, "pid": p.pid, "pid_start": p.create_time() - 100 * (not alive),
          "config": config, "endpoints": {"control": f"ipc://{run_dir}/{name}.control"}}
    state_path(run_dir, name).write_text(json.dumps(st))


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(config=kw.get("config"), name=kw.get("name"))


def test_the_one_running_pipeline_is_found_by_itself(tmp_path, run_dir):
    conf = write_config(tmp_path, "venues", pipeline={"name": "venues"}, risk={"max_position_notional": 77.0})
    running(run_dir, "venues", str(conf))
    cfg = _target(args())
    assert cfg.pipeline.name == "venues" and cfg.source == str(conf)
    assert cfg.risk.max_position_notional == 77.0          # its own config, not the default
    assert _target(args(name="other")).pipeline.name == "other"   # said explicitly: as said


def test_several_running_are_listed_and_none_is_guessed(tmp_path, run_dir, capsys):
    running(run_dir, "a", "conf/a.toml")
    running(run_dir, "b", "conf/b.toml")
    running(run_dir, "dead", "conf/c.toml", alive=False)
    assert [st["name"] for st in running_pipelines(run_dir)] == ["a", "b"]
    for cmd in (["status"], ["stop"], ["report"], ["halt"], ["tap", "ticks"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "2 pipelines are running here: 'a' (conf/a.toml), 'b' (conf/b.toml)" in err
        assert "--name NAME or --config FILE" in err and len(err.strip().splitlines()) == 1


def test_nothing_running_keeps_the_default(run_dir, capsys):
    assert _target(args()).pipeline.name == "default"
    assert main(["status"]) == 1 or "no pipeline named 'default' is running" in capsys.readouterr().err
