"""`pipeline backtest --sweep / --optimize` (pipeline/backtest_sweep.py): a grid point is
exactly the backtest of its config, mistakes are one line before anything runs, the
Optuna study resumes from SQLite, and parallel processes and Ray run the same
backtests as this process. Real backtests throughout, on ~1000 bars of the shipped
5-minute BTC candles."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from pipeline.backtest import load_data, run_backtest
from pipeline.backtest_report import fingerprint, metrics
from pipeline.backtest_sweep import Job, grid, make_runner, parse_param
from pipeline.cli import main
from pipeline.config import load_config

from test_backtest import BTC, config

TO = "2026-02-08T12:00"          # the first 1008 bars of the sample


def args(tmp_path: Path, *extra: str) -> list[str]:
    return ["backtest", "--config", str(config(tmp_path)), "--data", str(BTC), "--to", TO,
            "--no-progress", "--out", str(tmp_path / "sweep"), *extra]


def test_grid_points_are_the_single_backtests(tmp_path, capsys):
    """Each point's fills (fingerprint) and figures equal a backtest of a config file with
    those values, run on its own; the table and sweep.json/csv are sorted by the metric."""
    assert main(args(tmp_path, "--sweep", "strategy.enter_margin=0.05,0.2",
                     "--sweep", "min_hold_bars=1,4")) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    points = report["points"]
    assert len(points) == 4 and report["kind"] == "grid" and report["metric"] == "sharpe"
    assert {(p["params"]["strategy.enter_margin"], p["params"]["strategy.min_hold_bars"])
            for p in points} == {(0.05, 1), (0.05, 4), (0.2, 1), (0.2, 4)}
    sharpe = [p["metrics"]["sharpe"] for p in points]
    assert sharpe == sorted(sharpe, reverse=True)
    assert len({p["fingerprint"] for p in points}) == 4, "the parameters should change the fills"
    for p in (points[0], points[-1]):
        one = config(tmp_path, "one")
        text = one.read_text().replace("enter_margin = 0.05", f"enter_margin = {p['params']['strategy.enter_margin']}")
        one.write_text(text.replace("min_hold_bars = 1", f"min_hold_bars = {p['params']['strategy.min_hold_bars']}"))
        alone = run_backtest(load_config(one), [str(BTC)], end=TO)
        assert alone.meta["strategy"]["enter_margin"] == p["params"]["strategy.enter_margin"]
        assert fingerprint(alone.fills) == p["fingerprint"]
        assert metrics(alone)["overall"]["sharpe"] == pytest.approx(p["metrics"]["sharpe"], rel=1e-12)
        assert p["fingerprint"][:12] in out
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["fingerprint"] for r in rows] == [p["fingerprint"] for p in points]
    assert "ran 4 backtests" in out


@pytest.mark.parametrize("sweep, words", [
    ("strategy.enter_marjin=0.1", "no key 'enter_marjin' in [strategy] (did you mean 'enter_margin'?)"),
    ("stratgy.enter_margin=0.1", "no config section 'stratgy' (did you mean 'strategy'?)"),
    ("enter_margin=0.1,2", "enter_margin=2.0: strategy.enter_margin must be in (0, 1]"),
    ("min_hold_bars=1,two", "'two' is not an integer"),
    ("indicators.ema=3", "a list or table cannot be swept"),
    ("enter_margin", "give PARAM=v1,v2"),
    ("enter_margin=0.05..0.3", "is a range: give --optimize N"),
])
def test_a_bad_parameter_is_one_line_before_anything_runs(tmp_path, capsys, sweep, words):
    assert main(args(tmp_path, "--sweep", sweep)) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()


def test_a_bad_metric_or_an_optimize_without_ranges_is_one_line(tmp_path, capsys):
    assert main(args(tmp_path, "--sweep", "enter_margin=0.1", "--metric", "sharp")) == 2
    assert "--metric sharp: not a figure of the backtest report (did you mean 'sharpe'?)" in capsys.readouterr().err
    assert main(args(tmp_path, "--optimize", "3")) == 2
    assert "--optimize needs the parameters to search" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_a_combination_the_config_refuses_is_skipped_and_said(tmp_path, capsys):
    """exit_margin must stay below enter_margin: (0.05, 0.1) is skipped, the others run."""
    assert main(args(tmp_path, "--sweep", "enter_margin=0.05,0.2", "--sweep", "exit_margin=0.02,0.1")) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert len(report["points"]) == 3
    assert report["skipped"][0]["params"] == {"strategy.enter_margin": 0.05, "strategy.exit_margin": 0.1}
    assert "skipped 1 combinations the config refuses" in out


def study_trials(path: Path) -> list:
    import optuna
    return optuna.load_study(study_name="tickpipe-backtest", storage=f"sqlite:///{path}").trials


def test_optuna_study_resumes_from_sqlite(tmp_path, capsys):
    """3 trials, then a rerun asking for 5: the study holds 5, the first 3 unchanged;
    a rerun with other ranges is refused rather than mixed in."""
    study = tmp_path / "study.sqlite"
    search = ["--sweep", "enter_margin=0.05..0.3", "--sweep", "min_hold_bars=1..6",
              "--sweep", "stop_loss=0.0,0.01", "--study", str(study), "--seed", "3"]
    assert main(args(tmp_path, "--optimize", "3", *search)) == 0
    first = study_trials(study)
    assert len(first) == 3 and all(t.state.name == "COMPLETE" for t in first)
    capsys.readouterr()
    assert main(args(tmp_path, "--optimize", "5", *search)) == 0
    out = capsys.readouterr().out
    trials = study_trials(study)
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    assert [(t.params, t.value) for t in trials[:3]] == [(t.params, t.value) for t in first]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5, "a resumed run drew new points"
    assert "5 trials (3 before this run)" in out and "ran 2 backtests" in out
    for t in trials:
        assert t.value == t.user_attrs["metrics"]["sharpe"]
        assert 0.05 <= t.params["strategy.enter_margin"] <= 0.3
        assert isinstance(t.params["strategy.min_hold_bars"], int)
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert report["best"]["value"] == max(t.value for t in trials)
    other = [a.replace("0.05..0.3", "0.05..0.2") for a in search]
    assert main(args(tmp_path, "--optimize", "6", *other)) == 2
    assert "was made with other params" in capsys.readouterr().err


def test_parallel_processes_run_the_same_trials_as_serial(tmp_path):
    """--jobs 2 (two spawned processes, trials asked in batches of two) and --jobs 1 with
    the same seed make the same 4 trials: the TPE sampler's first 10 are its seeded random
    start, which does not depend on the batch size; and the same points give the same
    fills in a pool process as here. (Past 10 trials, a batch is sampled without its own
    members' results, so --jobs changes later points, as in any parallel search.)"""
    search = ["--sweep", "enter_margin=0.05..0.3", "--sweep", "min_hold_bars=1..6", "--seed", "11",
              "--optimize", "4"]
    seen = {}
    for jobs in (1, 2):
        study = tmp_path / f"study{jobs}.sqlite"
        t0 = time.perf_counter()
        assert main(args(tmp_path, "--jobs", str(jobs), "--study", str(study), *search)) == 0
        seen[jobs] = [(t.params, t.value, t.user_attrs["fingerprint"]) for t in study_trials(study)]
        print(f"--jobs {jobs}: 4 trials in {time.perf_counter() - t0:.1f} s (pool start included)")
    assert len(seen[1]) == 4 and seen[1] == seen[2]


def test_ray_local_runs_the_same_backtests(tmp_path):
    """A 3-point sweep as Ray tasks on a local instance gives the same fills as in this
    process; Ray is shut down after (no instance, no raylet left)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'tickpipe[scale]')")
    import psutil
    cfg = load_config(config(tmp_path))
    job = Job(cfg, load_data([str(BTC)], None, TO))
    params = [parse_param("enter_margin=0.05,0.1,0.2")]
    here = grid(cfg, job, params, "sharpe", make_runner(job, 1, None))
    try:
        runner = make_runner(job, None, "local")
    except Exception as e:                    # a sandbox without the sockets or /dev/shm Ray needs
        pytest.skip(f"Ray cannot start here: {type(e).__name__}: {e}")
    try:
        assert runner.workers == 2
        there = grid(cfg, job, params, "sharpe", runner)
    finally:
        runner.close()
    assert not ray.is_initialized()
    key = [(p["params"], p["fingerprint"], p["metrics"]) for p in here["points"]]
    assert [(p["params"], p["fingerprint"], p["metrics"]) for p in there["points"]] == key
    time.sleep(1.0)
    left = [p.name() for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not [n for n in left if "ray" in n or "gcs" in n], left
