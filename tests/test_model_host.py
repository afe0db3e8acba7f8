"""The remote model host on 127.0.0.1: `pipeline serve-model` and the bridge.

A small ensemble of all four models is trained on synthetic history
(models/synthetic.py, no data files needed). The same batches of feature rows
go to a local EnsembleModel and, over CURVE-encrypted ZeroMQ, to a host
process: every output must be identical. Then a whole pipeline runs its
model stage on the host; killing the host makes the stage degraded with HOLD
signals and no new orders, and a restarted host brings it back.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from models.synthetic import bootstrap, synthetic_candles
from pipeline.config import FeedConfig, indicator_specs, load_config
from pipeline.symbols import SymbolRegistry
from pipeline.config import feature_names
from shm.records import features_dtype
from models.serving import EnsembleModel
from shm.records import FLAG_STALE
from workers.model_host import RemoteEnsemble, RemoteError, client_keys, make_keys
from models.ta import Engine

from conftest import SYNTHETIC_SYMBOLS, write_config
from test_pipeline import TIMEOUT, Pipeline, free_port, leftovers

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = SYNTHETIC_SYMBOLS[:4]


def write_host_config(tmp: Path, name: str, artifacts: Path, keys: Path, remote: str = "") -> Path:
    """The tiny ensemble on 2 workers and 4 symbols, served by ``remote`` when one is given."""
    return write_config(tmp, name, ensemble=True, pipeline={"workers": 2, "startup_timeout_s": 120},
                        bus={"metrics_bind": ""}, feeds={"symbols": SYMBOLS},
                        model={"artifacts": artifacts, "remote": remote, "remote_keys": keys,
                               "remote_timeout_s": 1.0, "bootstrap_bars": 500})


@pytest.fixture(scope="module")
def host_setup(tmp_path_factory):
    """Keys, a trained ensemble and the host's config: (tmp, config path, keys dir)."""
    pytest.importorskip("tensorflow", reason="TensorFlow is needed for the LSTM and the RL agent")
    tmp = tmp_path_factory.mktemp("model-host")
    keys = tmp / "keys"
    make_keys(keys)
    cfg_path = write_host_config(tmp, "host", tmp / "artifacts", keys)
    bootstrap(load_config(cfg_path), progress=False, out=open(os.devnull, "w"))
    return tmp, cfg_path, keys


class Host:
    """`pipeline serve-model` in a subprocess; ready when it prints its serving line."""

    def __init__(self, tmp: Path, config: Path, keys: Path, port: int):
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "serve-model", "--bind", self.endpoint,
             "--config", str(config), "--keys", str(keys)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, env={**os.environ, "TICKPIPE_LOG_LEVEL": "WARNING"})
        self.lines: list[str] = []
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + TIMEOUT
            while not any("model host serving" in line for line in self.lines):
                assert sel.select(max(0.0, deadline - time.monotonic())), self.output()
                line = self.proc.stdout.readline()
                assert line, f"the model host exited:\n{self.output()}"
                self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(TIMEOUT)
        self.proc.stdout.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rest, _ = self.proc.communicate(timeout=TIMEOUT)
        self.lines.append(rest)
        return self.proc.returncode


def feature_batches(cfg, n_bars: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, rows) per bar time: each symbol's synthetic bars through the indicator engine,
    as the features table holds them when the model worker reads it."""
    names = feature_names(cfg)
    dtype = features_dtype(names)
    engine = Engine(len(SYMBOLS), indicator_specs(cfg.indicators))
    feed = FeedConfig(symbols=SYMBOLS, ticks_per_s=3000.0)
    bars = [synthetic_candles(feed, 0.2, n_bars, seed=99, symbol=s).slice(0, n_bars - 5)
            for s in range(len(SYMBOLS))]
    n = min(b.num_rows for b in bars)
    out = []
    for t in range(n):
        ids = np.arange(len(SYMBOLS))
        o, h, l, c, v = (np.array([b.column(k)[t].as_py() for b in bars])
                         for k in ("open", "high", "low", "close", "volume"))
        values = engine.update(ids, o, h, l, c, v)
        rows = np.zeros(len(ids), dtype)
        rows["ts_bar_ns"] = np.array([b.column("timestamp_ms")[t].as_py() for b in bars]) * 1_000_000
        rows["symbol_id"] = ids
        for k, col in zip(("open", "high", "low", "close", "volume"), (o, h, l, c, v)):
            rows[k] = col
        for j, name in enumerate(engine.columns):
            rows[name] = values[:, j]
        keep = ids if t % 3 else ids[ids % 2 == 0]      # some batches carry only some symbols
        out.append((keep, rows[keep]))
    return out


def test_remote_signals_equal_the_local_ensemble(host_setup):
    tmp, cfg_path, keys = host_setup
    host = Host(tmp, cfg_path, keys, free_port())
    try:
        cfg = load_config(cfg_path)
        cfg.model.remote = host.endpoint
        names = feature_names(cfg)
        local = EnsembleModel(cfg.model.artifacts, names, len(SYMBOLS))
        remote = RemoteEnsemble(cfg, names, SymbolRegistry.from_config(cfg).keys)
        assert remote.hello() and remote.state == "running"
        assert remote.info["versions"] == local.versions
        complete = 0
        for ids, rows in feature_batches(cfg, 90):
            a = local.predict(ids, rows)
            b = remote.predict(ids, rows)
            for x, y in zip(a, b):
                assert np.array_equal(x, y), (x, y)
            complete += int((a[3] == 0).sum())                 # neither warm-up nor partial
        assert complete > 50                                    # the LSTM history filled on both sides
        st = remote.stats()
        assert st["remote_state"] == "running" and st["stale_signals"] == 0
        assert st["members"] == ["lstm", "forest", "xgboost", "rl"]

        # a pipeline computing other features is refused with a clear message
        other = RemoteEnsemble(cfg, [*names[:-1], "rsi_99"], SymbolRegistry.from_config(cfg).keys)
        with pytest.raises(RemoteError, match="the model host serves features .* but this pipeline"):
            other.hello()
        other.close()

        # a client whose key the host does not accept gets nothing: degraded, not served
        stranger = tmp / "stranger"
        make_keys(stranger)
        (stranger / "server.key").unlink()
        (stranger / "server.key").write_bytes((keys / "server.key").read_bytes())
        cfg2 = load_config(cfg_path)
        cfg2.model.remote, cfg2.model.remote_keys, cfg2.model.remote_timeout_s = host.endpoint, str(stranger), 0.5
        denied = RemoteEnsemble(cfg2, names, SymbolRegistry.from_config(cfg).keys)
        assert not denied.hello() and denied.state == "degraded"
        ids, rows = feature_batches(cfg, 40)[-1]
        probs, member, versions, flags, hold = denied.predict(ids, rows)
        assert hold.all() and (flags == FLAG_STALE).all() and (versions == 0).all()
        denied.close()

        # garbage on an authenticated connection is answered with an error; the host goes on
        server_public, public, secret = client_keys(keys)
        ctx = zmq.Context()
        raw = ctx.socket(zmq.DEALER)
        raw.curve_serverkey, raw.curve_publickey, raw.curve_secretkey = server_public, public, secret
        raw.connect(host.endpoint)
        raw.send_multipart([b"predict", b"{not json", b"", b""])
        assert raw.poll(TIMEOUT * 1000)
        kind, body = raw.recv_multipart()
        assert kind == b"error" and b"malformed request" in body
        raw.close(0)
        ctx.term()
        assert remote.predict(*feature_batches(cfg, 40)[-1])[4].dtype == bool    # still serving
        remote.close()
        assert host.stop() == 0
        assert "stopped:" in host.output() and "Traceback" not in host.output()
    finally:
        host.kill()


def test_pipeline_on_a_remote_host_degrades_and_recovers(host_setup, tmp_path):
    tmp, cfg_path, keys = host_setup
    port = free_port()
    host = Host(tmp, cfg_path, keys, port)
    config = write_host_config(tmp_path, "bridge", tmp_path / "no-artifacts-here", keys,
                               remote=host.endpoint)
    p = Pipeline(tmp_path, config=config)
    try:
        p.start()
        p.wait_running()
        # complete ensemble signals from the host (the LSTM window of 8 bars filled)
        complete = []
        deadline = time.monotonic() + TIMEOUT
        while not complete and time.monotonic() < deadline:
            complete = [s for s in p.tap("signals", limit=20)
                        if s["model_id"] == 1 and s["flags"] == 0]
        assert complete, p.output()
        assert all(s["model_versions"] == [1, 1, 1, 1] for s in complete)
        assert not (tmp_path / "no-artifacts-here").exists()      # nothing trained on the main host

        host.kill()
        st = p.wait_status(lambda st: any(w["id"] == "model.0" and w["state"] == "degraded"
                                          for w in st["workers"]), "the model stage degraded")
        stale = [s for s in p.tap("signals", limit=10) if s["flags"] & FLAG_STALE]
        assert stale and all(s["action"] == 0 for s in stale)
        ex = lambda st: next(w["stats"] for w in st["workers"] if w["id"] == "execution.0")
        orders, held = ex(st)["orders"], ex(st)["open_positions"]
        # more stale batches go by: no position opened (a held one may be closed: the
        # strategy's exit rule still runs on a HOLD)
        st = p.wait_status(lambda st: next(w["stats"] for w in st["workers"] if w["id"] == "model.0")
                           ["stale_signals"] >= 40, "stale signals")
        assert ex(st)["orders"] - orders <= held and ex(st)["open_positions"] <= held
        rep = json.loads(p.cli("report", "--json").stdout)
        (model,) = rep["models"]
        assert model["state"] == "degraded" and host.endpoint in model["reason"]
        assert model["stale_signals"] >= 40
        assert "degraded" in p.cli("report").stdout

        # the host comes back on the same port: the bridge reconnects by itself
        host = Host(tmp, cfg_path, keys, port)
        p.wait_status(lambda st: any(w["id"] == "model.0" and w["state"] == "running"
                                     for w in st["workers"]), "the model stage back")
        fresh = [s for s in p.tap("signals", limit=10) if not s["flags"] & FLAG_STALE]
        assert fresh and all(s["model_id"] == 1 for s in fresh)
        assert p.cli("stop").returncode == 0
        assert p.wait_exit() == 0
        assert leftovers(st["run_id"], p.tmp / "run") == []
    finally:
        p.kill()
        host.kill()


def test_keys_and_host_errors_are_one_line(tmp_path, host_setup):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=TIMEOUT)
    r = cli("keys", str(tmp_path / "k"))
    assert r.returncode == 0, r.stderr
    for name in ("server.key", "server.key_secret", "clients/client.key", "clients/client.key_secret"):
        assert (tmp_path / "k" / name).exists()
    assert oct((tmp_path / "k" / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    r = cli("keys", str(tmp_path / "k"))
    assert r.returncode == 2 and "never overwritten" in r.stderr and "Traceback" not in r.stderr

    _, cfg_path, _ = host_setup
    r = cli("serve-model", "--bind", f"tcp://127.0.0.1:{free_port()}", "--config", str(cfg_path),
            "--keys", str(tmp_path / "none"))
    assert r.returncode == 2 and "no such key file" in r.stderr and "Traceback" not in r.stderr
