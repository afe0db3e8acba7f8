"""The default config serves the full ensemble with no network and no data files:
at first start it trains one on the synthetic market's history and keeps it.

The quick tests use a tiny forest + XGBoost config (a forest + LSTM one where
TensorFlow must be imported, in the training child and not in the caller); the
last one runs the real conf/default.toml as a user does (`pipeline start` from
a fresh directory).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from models.registry import ENSEMBLE, Registry
from models.serving import EnsembleModel
from models.synthetic import SOURCE, bootstrap, needs_bootstrap, synthetic_candles
from models.train import TrainError, train
from pipeline.config import feature_names
from pipeline.config import FeedConfig, load_config
from pipeline.storage import OHLCV_COLUMNS, check_candles

from conftest import TINY_TREES, toml
from test_pipeline import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent


def tiny(tmp: Path, artifacts: Path, ema=(12, 26), name: str = "tiny", bar_seconds: float = 1.0, **model):
    """A tiny forest + XGBoost ensemble; every other setting but the EMAs and the bar
    length is the default."""
    path = tmp / f"{name}.toml"
    path.write_text(toml({"indicators": {"ema": list(ema), "bar_seconds": bar_seconds},
                          "model": {"artifacts": artifacts, "models": ["forest", "xgboost"],
                                    "bootstrap_bars": 600, "folds": 2, **TINY_TREES, **model}}))
    return load_config(path)


def test_synthetic_candles_are_valid_bars_of_the_live_market():
    feed = FeedConfig(symbols=["A/USDT", "B/USDT"], ticks_per_s=400.0)
    t = synthetic_candles(feed, 0.5, 300, seed=11)
    assert t.column_names == OHLCV_COLUMNS
    cols = [t.column(c).to_numpy() for c in OHLCV_COLUMNS]
    good, bad = check_candles(*cols)
    assert good.all() and not bad
    ts = cols[0]
    assert len(ts) >= 290 and np.all(np.diff(ts) % 500 == 0)   # 0.5 s bars, a quiet one may be absent
    assert (cols[5] > 0).all()
    again = synthetic_candles(feed, 0.5, 300, seed=11)
    assert again.equals(t)                                      # the seed fixes the history
    assert not synthetic_candles(feed, 0.5, 300, seed=12).equals(t)
    with pytest.raises(ValueError, match="outside the feed's 2 symbols"):
        synthetic_candles(feed, 0.5, 10, seed=1, symbol=2)


@pytest.fixture(scope="module")
def first_bootstrap(tmp_path_factory):
    """The tiny ensemble's first bootstrap (1 s bars, EMA 12/26), trained once for the tests
    that start from it: (artifacts, what needs_bootstrap said before, report, its text).
    Each test copies the artifacts (`fresh_copy`) and changes only its copy."""
    tmp = tmp_path_factory.mktemp("first-bootstrap")
    arts = tmp / "artifacts"
    cfg = tiny(tmp, arts)
    before = needs_bootstrap(cfg)
    out = io.StringIO()                                 # not stdout: the text comes back from the child
    report = bootstrap(cfg, progress=False, out=out)
    return arts, before, report, out.getvalue()


def fresh_copy(first_bootstrap, tmp_path: Path) -> Path:
    arts = tmp_path / "artifacts"
    shutil.copytree(first_bootstrap[0], arts)
    return arts


def test_bootstrap_trains_once_and_keeps_it(tmp_path, first_bootstrap):
    _, before, report, text = first_bootstrap
    assert "no trained ensemble" in before
    arts = fresh_copy(first_bootstrap, tmp_path)
    cfg = tiny(tmp_path, arts)
    assert report["artifacts"] == {"forest": 1, "xgboost": 1, ENSEMBLE: 1}
    assert report["data"]["source"].startswith(f"{SOURCE}:BTC/USDT")
    _, meta = Registry(arts).load(ENSEMBLE)
    assert meta["training"]["data"] == report["data"]["source"]
    assert meta["bar_seconds"] == 1.0
    assert meta["market"] == {"venue": "synthetic", "symbol": "BTC/USDT", "quote": "USDT", "synthetic": True}
    assert text.startswith("no trained ensemble in")
    # the report says, in its table, what its figures are worth (issue 12, item 8)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model ") and "log loss" in line)
    assert lines[header - 1].startswith("SYNTHETIC MARKET: every figure below is in-sample for the market "
                                        "the models were trained on"), text
    assert lines[header - 1].endswith("it means nothing for a real market")
    last_row = max(i for i, line in enumerate(lines) if line.startswith("ensemble ") and " all " in line)
    assert any(line.startswith("the returns above are on the synthetic market: not a forecast of any "
                               "real one") for line in lines[last_row + 1:last_row + 3]), text
    assert "bars: 1 s (generated); BTC/USDT on the synthetic market" in text
    assert needs_bootstrap(cfg) is None and bootstrap(cfg, progress=False) is None
    assert Registry(arts).versions(ENSEMBLE) == [1]

    # the indicators change: the synthetic ensemble is ours to replace, as a new version
    other = tiny(tmp_path, arts, ema=(5, 9), name="other")
    assert "trained for other indicators" in needs_bootstrap(other)
    bootstrap(other, progress=False, out=open(os.devnull, "w"))
    assert Registry(arts).versions(ENSEMBLE) == [1, 2]


def test_bootstrap_trains_again_for_other_bars(tmp_path, first_bootstrap):
    """The synthetic ensemble is trained for the config's bar length; another bar length
    (or an older ensemble that does not record it) makes a new version, which serves."""
    arts = fresh_copy(first_bootstrap, tmp_path)      # version 1, trained on 1 s bars
    assert needs_bootstrap(tiny(tmp_path, arts)) is None
    slower = tiny(tmp_path, arts, name="slower", bar_seconds=2.0)
    assert needs_bootstrap(slower) == (f"the synthetic ensemble in {arts} was trained on 1 s bars and this "
                                       "config closes 2 s bars")
    report = bootstrap(slower, progress=False, out=open(os.devnull, "w"))
    assert report["data"]["bar_seconds"] == 2.0 and Registry(arts).versions(ENSEMBLE) == [1, 2]
    assert needs_bootstrap(slower) is None
    model = EnsembleModel(arts, feature_names(slower), 4, bar_seconds=2.0, symbols=["BTC/USDT@synthetic"])
    assert model.versions[ENSEMBLE] == 2 and model.notes == []

    meta_path = arts / ENSEMBLE / "2" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["bar_seconds"]                             # as the bootstrap saved it before
    meta_path.write_text(json.dumps(meta))
    assert "does not record its bar length" in needs_bootstrap(slower)


def test_an_error_in_the_training_child_is_one_line_and_leaves_nothing(tmp_path):
    arts = tmp_path / "artifacts"
    cfg = tiny(tmp_path, arts, bootstrap_bars=500, folds=100)   # too few bars for 100 folds
    with pytest.raises(TrainError) as e:
        bootstrap(cfg, progress=False, out=open(os.devnull, "w"))
    assert "\n" not in str(e.value) and "too few for 100 folds" in str(e.value)
    assert type(e.value) is TrainError                  # the class pipeline start prints in one line
    assert not arts.exists()


CHILD_SCRIPT = textwrap.dedent("""
    import json, sys
    from pipeline.config import load_config
    from models.synthetic import bootstrap
    try:
        report = bootstrap(load_config(sys.argv[1]), progress=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "artifacts": report["artifacts"]}))
""")


def lstm_config(tmp: Path, artifacts: Path, bars: int = 800, epochs: int = 3):
    """Forest then LSTM: the LSTM needs TensorFlow, and its final fit comes after the forest's
    artifact is saved (the moment a Ctrl-C would leave a partial set behind)."""
    return tiny(tmp, artifacts, name="lstm", bar_seconds=0.5, models=["forest", "lstm"], bootstrap_bars=bars,
                lstm_window=8, lstm_units=8, lstm_epochs=epochs)


def test_training_runs_in_a_child_and_tensorflow_stays_out_of_the_caller(tmp_path):
    pytest.importorskip("tensorflow", reason="TensorFlow is needed for the LSTM")
    arts = tmp_path / "artifacts"
    cfg = lstm_config(tmp_path, arts, bars=500, epochs=1)
    r = subprocess.run([sys.executable, "-c", CHILD_SCRIPT, cfg.source], cwd=tmp_path, capture_output=True,
                       text=True, timeout=6 * TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert result == {"tensorflow": False, "artifacts": {"forest": 1, "lstm": 1, ENSEMBLE: 1}}
    assert f"no trained ensemble in {arts}: training forest, lstm" in r.stdout   # the caller's lines
    assert "ensemble: soft vote, weights forest" in r.stdout
    assert "train:" in r.stderr and "all rows lstm" in r.stderr     # the child's progress bar
    assert "Traceback" not in r.stderr


def test_ctrl_c_stops_the_child_and_keeps_no_partial_version(tmp_path):
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("tensorflow", reason="TensorFlow is needed for the LSTM")
    arts = tmp_path / "artifacts"
    cfg = lstm_config(tmp_path, arts)
    proc = subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT, cfg.source], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 6 * TIMEOUT
        while not (arts / "forest" / "1").exists():           # the forest saved, the LSTM fitting
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        assert not (arts / ENSEMBLE).exists()
        trainers = [c for c in psutil.Process(proc.pid).children()
                    if "resource_tracker" not in " ".join(c.cmdline())]
        assert len(trainers) == 1
        os.killpg(proc.pid, signal.SIGINT)                    # Ctrl-C reaches the whole process group
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and out.splitlines()[-1] == "interrupted", out + err
    assert "Traceback" not in err and "leaked" not in err, err
    psutil.wait_procs(trainers, timeout=5)
    assert not any(t.is_running() for t in trainers)          # the training child is gone
    assert not arts.exists(), sorted(str(p) for p in arts.rglob("*"))   # nothing of it kept


def test_bootstrap_never_replaces_the_users_artifacts(tmp_path):
    arts = tmp_path / "artifacts"
    cfg = tiny(tmp_path, arts)
    user_data = tmp_path / "mine.parquet"
    import pyarrow.parquet as pq
    pq.write_table(synthetic_candles(FeedConfig(), 1.0, 700, seed=5), user_data)
    train(user_data, cfg, arts, progress=False)
    # trained by the user for ema [12, 26]; a run with other indicators is refused by
    # the model worker (test_serving), never silently retrained over
    assert needs_bootstrap(tiny(tmp_path, arts, ema=(5, 9), name="other")) is None
    off = tiny(tmp_path, tmp_path / "empty")
    off.model.bootstrap = ""
    assert needs_bootstrap(off) is None


def test_default_config_serves_the_ensemble_from_a_fresh_directory(tmp_path):
    """`pipeline start` exactly as README's first command runs it, in a new directory."""
    pytest.importorskip("tensorflow", reason="TensorFlow is needed for the LSTM and the RL agent")
    (tmp_path / "conf").mkdir()
    shutil.copy(ROOT / "conf" / "default.toml", tmp_path / "conf" / "default.toml")
    env = {**os.environ, "TICKPIPE_RUN_DIR": str(tmp_path / "run"), "TICKPIPE_LOG_LEVEL": "WARNING"}

    def cli(*args, timeout=TIMEOUT):
        return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    log = open(tmp_path / "first.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "start"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        signals = []
        deadline = time.monotonic() + 6 * TIMEOUT          # training first: about a minute here
        # no CLI process until the supervisor has started (its first line after the training):
        # a tap started in a loop all through the training takes a core from it
        while "starting tickpipe" not in (tmp_path / "first.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.2)                                 # polling the log, against the deadline
        while not signals and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            r = cli("tap", "signals", "--json", "--limit", "3", "--timeout", "20")
            if r.returncode == 0:
                signals = [json.loads(line) for line in r.stdout.splitlines()]
        assert signals, (tmp_path / "first.log").read_text()
        assert all(s["model_id"] == 1 for s in signals)          # the ensemble, not the momentum rule
        st = json.loads(cli("status", "--json").stdout)
        (model,) = [w["stats"] for w in st["workers"] if w["id"].startswith("model.")]
        assert model["members"] == ["lstm", "forest", "xgboost", "rl"]
        assert model["versions"] == {"ensemble": 1, "lstm": 1, "forest": 1, "xgboost": 1, "rl": 1}
        assert cli("stop").returncode == 0
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(TIMEOUT)
    first = (tmp_path / "first.log").read_text()
    # conf/../artifacts: the config's paths are relative to its folder, shown absolute
    assert (f"no trained ensemble in {tmp_path / 'artifacts'}: training lstm, forest, xgboost, rl"
            in first)
    assert "ensemble: soft vote, weights" in first                # the training report's table
    assert Registry(tmp_path / "artifacts").versions(ENSEMBLE) == [1]

    # the second start loads what the first one trained
    r = cli("start", "--duration", "3", timeout=3 * TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "training" not in r.stdout and "stopped: duration of 3 s reached" in r.stdout
    assert Registry(tmp_path / "artifacts").versions(ENSEMBLE) == [1]


def test_a_stop_that_lands_inside_a_destructor_is_asked_for_again_not_printed():
    """The training child's SIGTERM raises _Stopped to unwind; landing inside a __del__ (as
    in TensorFlow's, during a collection) Python swallows it and prints it as ignored: the
    child asks again, quietly, and unwinds from plain code."""
    script = textwrap.dedent("""
        import gc, time
        from models.synthetic import _Stopped, _stop_on_sigterm
        _stop_on_sigterm()

        class Dies:
            def __del__(self):
                raise _Stopped()          # as if SIGTERM's handler ran here
        try:
            d = Dies()
            del d
            for _ in range(1000):
                time.sleep(0.01)
            print("not stopped")
        except _Stopped:
            print("stopped in plain code")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "stopped in plain code", out
    assert "Traceback" not in out.stderr and "ignored" not in out.stderr, out.stderr
