"""A user's mistakes get one line and an exit status, never a traceback, and leave
nothing behind (issue 12 item 4): a directory where a file belongs, a folder that
does not exist, a CSV with a line of the wrong width or text where a number belongs,
Ctrl-C in the middle of a command."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_config
from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent
HEADER = "timestamp_ms,open,high,low,close,volume\n"


def candles_csv(path: Path, n: int = 300, bad: dict[int, str] | None = None) -> Path:
    """``n`` one-minute candles; ``bad`` replaces data line k (0-based) with that text."""
    lines = [HEADER]
    for k in range(n):
        p = 100.0 + (k % 17) * 0.5
        line = f"{1_700_000_000_000 + 60_000 * k},{p},{p + 1},{p - 1},{p + 0.25},{10 + k % 5}\n"
        lines.append((bad or {}).get(k, line))
    path.write_text("".join(lines))
    return path


def one_line_error(capsys, code: int, argv: list[str]) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pipeline: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("command", [["status"], ["stop"], ["report"], ["start"], ["pnl"],
                                     ["features", "--data", "x.csv", "--out", "y.parquet"]])
def test_a_config_that_is_a_directory(tmp_path, capsys, command):
    err = one_line_error(capsys, 2, command + ["--config", str(tmp_path)])
    assert "is a directory; give the config file" in err


def test_features_out_mistakes_leave_nothing(tmp_path, capsys):
    data = candles_csv(tmp_path / "c.csv")
    folder = tmp_path / "out"
    folder.mkdir()
    err = one_line_error(capsys, 2, ["features", "--data", str(data), "--out", str(folder)])
    assert "is a directory; give a file path" in err
    far = tmp_path / "no" / "such" / "f.parquet"
    err = one_line_error(capsys, 2, ["features", "--data", str(data), "--out", str(far)])
    assert "does not exist" in err and not (tmp_path / "no").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "out"]
    near = tmp_path / "new" / "f.parquet"                  # its own folder is made, no more
    assert main(["features", "--data", str(data), "--out", str(near)]) == 0
    assert near.is_file() and [p.name for p in near.parent.iterdir()] == ["f.parquet"]
    err = one_line_error(capsys, 2, ["journal", "export", "--journal", str(tmp_path / "j.sqlite"),
                                     "--out", str(folder)])


def test_bad_csv_lines_are_dropped_counted_and_named(tmp_path, capsys, caplog):
    data = candles_csv(tmp_path / "c.csv", bad={3: "1,2,3\n", 7: f"{1_700_000_000_000 + 60_000 * 7},1,2,0.5,abc,1\n"})
    out = tmp_path / "f.parquet"
    with caplog.at_level("WARNING"):
        assert main(["features", "--data", str(data), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "dropped 2 bad rows (nan 1, malformed line 1)" in said
    logged = " | ".join(r.getMessage() for r in caplog.records)
    assert "1 line of the wrong width skipped (line 5)" in logged        # header is line 1
    assert "1 cell of close not a number (line 9)" in logged


def test_ctrl_c_in_a_command_is_one_line_and_130(tmp_path):
    """SIGINT while `pipeline train` works: exit status 130, one line, no traceback, no
    half-written model version."""
    data = candles_csv(tmp_path / "c.csv", n=3000)
    # the default models' sizes: minutes of work, so the signal surely lands in the middle
    conf = write_config(tmp_path, "t", model={"kind": "ensemble", "folds": 3})
    out = tmp_path / "models"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--config", str(conf), "--data",
                             str(data), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # the progress bar (stderr, no newlines) names the fit under way: then it is mid-training
        seen, deadline = b"", time.monotonic() + 300
        while b"fold 1/" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen.decode(errors="replace")
            ready, _, _ = select.select([proc.stderr], [], [], 5.0)
            if ready:
                seen += os.read(proc.stderr.fileno(), 4096)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
        err = rest.decode(errors="replace")
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "pipeline: train interrupted"
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".tmp")] if out.exists() else []
    assert leftovers == []


def test_data_folders_without_market_files_are_named(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    csvs = tmp_path / "csvs"
    csvs.mkdir()
    candles_csv(csvs / "c.csv")
    err = one_line_error(capsys, 2, ["features", "--data", str(empty), "--out", str(tmp_path / "f.parquet")])
    assert "holds no Parquet market files" in err and "columns  are" not in err
    err = one_line_error(capsys, 2, ["features", "--data", str(csvs), "--out", str(tmp_path / "f.parquet")])
    assert "it has 1 CSV file: give one with --data" in err
    bad = tmp_path / "g.parquet"
    bad.write_text("not parquet")
    one_line_error(capsys, 2, ["features", "--data", str(bad), "--out", str(tmp_path / "f.parquet")])
