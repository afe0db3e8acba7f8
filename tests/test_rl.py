"""RL agent and trading environment on a slice of real candles: gymnasium's env
checker, reward accounting (hand-computed and vectorised), training time, the numpy
policy equal to TensorFlow's, save/load identical without TensorFlow, seeded
reproducibility, NaN refused."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import data_file

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
CANDLES = data_file("candles/binance_BTC-USDT_1h.csv")
pytest.importorskip("gymnasium", reason="gymnasium is not installed: the trading environment "
                                        "is a gymnasium.Env (pip install gymnasium)")
needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                              reason="tensorflow is not installed: the RL agent trains with it "
                                     "(pip install tensorflow-cpu)")

from gymnasium.utils.env_checker import check_env  # noqa: E402

from models.rl import RLAgent, TradingEnv  # noqa: E402

FEE = 0.0012                     # taker fee + slippage, per unit of position changed
TRAIN = 1400                     # rows for training, the rest for predictions
AGENT = dict(hidden=[32, 32], episodes=64, episode_length=64, episodes_per_update=4, fee=FEE)


@pytest.fixture(scope="module")
def data():
    """2000 real 1h BTC/USDT candles; horizon 1, so ``future_return`` is the one-bar return."""
    import pyarrow.csv as pcsv

    from models.dataset import build_dataset
    from pipeline.config import Config
    d = build_dataset(pcsv.read_csv(CANDLES).slice(1000, 2000), Config(), horizon=1)
    assert len(d) > 1900 and np.isfinite(d.X).all()
    return d


@pytest.fixture(scope="module")
def trained(data):
    """(agent, fit seconds) on the first TRAIN rows; TensorFlow imported beforehand
    (its import, 4-8 s, is not training)."""
    import tensorflow  # noqa: F401
    t0 = time.perf_counter()
    agent = RLAgent(**AGENT).fit(data.X[:TRAIN], data.y[:TRAIN], seed=7, close=data.close[:TRAIN])
    return agent, time.perf_counter() - t0


# ---- environment ----

@pytest.mark.parametrize("episode_length", [64, None])
def test_check_env(data, episode_length):
    env = TradingEnv(data.X, close=data.close, fee=FEE, episode_length=episode_length)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # any checker warning fails the test
        check_env(env, skip_render_check=True)  # no render modes (and no spec to probe them)
    assert env.observation_space.shape == (data.X.shape[1] + 1,)
    assert env.action_space.n == 3


def test_reward_accounting_by_hand():
    """Long, short, short, flat over four bars: rewards and equity computed by hand."""
    X = np.arange(10.0).reshape(5, 2)
    close = [100.0, 110.0, 99.0, 99.0, 108.9]           # +10 %, -10 %, 0 %, +10 %
    fee = 0.001
    env = TradingEnv(X, close=close, fee=fee)            # whole series: 4 steps
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.tolist() == [0.0, 1.0, 0.0]   # X[0], flat
    r = [110 / 100 - 1, 99 / 110 - 1, 99 / 99 - 1, 108.9 / 99 - 1]
    expected = [+1 * r[0] - fee * 1,           # flat -> long: one unit traded
                -1 * r[1] - fee * 2,           # long -> short: two units
                -1 * r[2] - fee * 0,           # stay short
                0 * r[3] - fee * 1]            # short -> flat
    equity = 0.0
    for k, (action, position) in enumerate([(2, 1.0), (0, -1.0), (0, -1.0), (1, 0.0)]):
        obs, reward, terminated, truncated, info = env.step(action)
        equity += expected[k]
        assert reward == pytest.approx(expected[k], rel=1e-12, abs=1e-15)
        assert obs.tolist() == [*X[k + 1], position]        # the position is observed
        assert info["position"] == position and info["t"] == k + 1
        assert not terminated and truncated == (k == 3)
    assert info["equity"] == pytest.approx(equity, rel=1e-12)
    assert info["equity"] == pytest.approx(0.1 + 0.1 + 0 - 0.004, rel=1e-12)
    assert info["fees"] == pytest.approx(0.004, rel=1e-12)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)
    with pytest.raises(ValueError, match="action must be"):
        env.reset(seed=0)
        env.step(3)


def test_reward_accounting_real(data):
    """A random action sequence over a real window: equity = sum of position * return
    minus fee * |position change|, computed vectorised."""
    env = TradingEnv(data.X, close=data.close, fee=FEE, episode_length=300)
    obs, info = env.reset(seed=3)
    t0 = info["t"]
    actions = np.random.default_rng(0).integers(0, 3, 300)
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
    assert truncated and info["t"] == t0 + 300
    pos = actions - 1.0
    ret = data.close[t0 + 1:t0 + 301] / data.close[t0:t0 + 300] - 1
    trades = np.abs(np.diff(np.r_[0.0, pos]))
    assert info["equity"] == pytest.approx(np.sum(pos * ret) - FEE * trades.sum(), rel=1e-9)
    assert info["fees"] == pytest.approx(FEE * trades.sum(), rel=1e-12)
    np.testing.assert_array_equal(obs[:-1], data.X[t0 + 300].astype(np.float32))


def test_windows_seeded_and_prices_either_way(data):
    env = TradingEnv(data.X, close=data.close, episode_length=100)
    starts = [env.reset(seed=5)[1]["t"]] + [env.reset()[1]["t"] for _ in range(5)]
    again = [env.reset(seed=5)[1]["t"]] + [env.reset()[1]["t"] for _ in range(5)]
    assert starts == again and len(set(starts)) > 1
    assert all(0 <= s <= len(data) - 1 - 100 for s in starts)
    assert env.reset(options={"start": 17})[1]["t"] == 17
    # the one-bar forward returns give the same rewards as the closes
    by_return = TradingEnv(data.X, future_return=data.future_return)
    np.testing.assert_allclose(by_return.returns, env.returns, rtol=1e-12, atol=0)
    whole = TradingEnv(data.X, close=data.close)
    assert whole.reset(seed=1)[1]["t"] == 0 and whole.episode_length == len(data) - 1


def test_env_refuses_bad_input(data):
    bad = data.X[:50].copy()
    bad[10, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity \(feature columns \[3\]\)"):
        TradingEnv(bad, close=data.close[:50])
    close = data.close[:50].copy()
    close[7] = np.nan
    with pytest.raises(ValueError, match="close must be finite"):
        TradingEnv(data.X[:50], close=close)
    with pytest.raises(ValueError, match="exactly one of close"):
        TradingEnv(data.X[:50])
    with pytest.raises(ValueError, match="one per row"):
        TradingEnv(data.X[:50], close=data.close[:49])


# ---- agent ----

@needs_tf
def test_training_fast_and_numpy_equals_tf(trained, data):
    agent, seconds = trained
    assert seconds < 20, f"training took {seconds:.1f} s"
    assert len(agent.history) == AGENT["episodes"] // AGENT["episodes_per_update"]
    X = data.X[TRAIN:]
    for position in (-1.0, 0.0, 1.0):
        np.testing.assert_allclose(agent.action_proba(X, position),
                                   agent.action_proba_tf(X, position), rtol=0, atol=1e-5)
    # the position is an input: the policy's answer depends on it
    assert not np.allclose(agent.action_proba(X, -1.0), agent.action_proba(X, 1.0))


@needs_tf
def test_predict_proba(trained, data):
    agent, _ = trained
    X = data.X[TRAIN:]
    p = agent.predict_proba(X)
    assert p.shape == (len(X), 3) and p.dtype == np.float64
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(p, agent.action_proba(X, 0.0))     # from flat
    assert agent.predict_proba(X[:1]).shape == (1, 3)


@needs_tf
def test_save_load_identical_without_tensorflow(trained, data, tmp_path):
    agent, _ = trained
    agent.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"policy.npz", "params.json"}
    loaded = RLAgent.load(tmp_path)
    assert loaded.params == agent.params and loaded.n_features == agent.n_features
    for position in (-1.0, 0.0, 1.0):
        np.testing.assert_array_equal(loaded.action_proba(data.X, position),
                                      agent.action_proba(data.X, position))
    # serving needs numpy only: a fresh process loads and predicts without importing TF
    np.save(tmp_path / "x.npy", data.X[:64])
    code = ("import sys, numpy as np; from models.rl import RLAgent; "
            f"a = RLAgent.load({str(tmp_path)!r}); "
            f"np.save({str(tmp_path / 'p.npy')!r}, a.predict_proba(np.load({str(tmp_path / 'x.npy')!r}))); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), agent.predict_proba(data.X[:64]))


@needs_tf
def test_seeded_training_reproducible(trained, data):
    """Same seed, same weights bit for bit (numpy initialisation and sampling, no TF
    randomness, single-process CPU kernels); another seed, other weights."""
    agent, _ = trained
    same = RLAgent(**AGENT).fit(data.X[:TRAIN], seed=7, close=data.close[:TRAIN])
    for a, b in zip(agent.layers, same.layers):
        np.testing.assert_array_equal(a, b)
    assert same.history == agent.history
    other = RLAgent(**AGENT).fit(data.X[:TRAIN], seed=8, close=data.close[:TRAIN])
    assert not np.array_equal(agent.layers[0], other.layers[0])


@needs_tf
def test_nan_refused(trained, data):
    agent, _ = trained
    bad = data.X[:4].copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity \(feature columns \[3\]\)"):
        agent.predict_proba(bad)
    with pytest.raises(ValueError, match="NaN"):
        RLAgent(**AGENT).fit(np.r_[bad, data.X[4:100]], close=data.close[:100])
    with pytest.raises(ValueError, match="trained on"):
        agent.predict_proba(data.X[:4, :-1])
    with pytest.raises(ValueError, match="exactly one of close"):
        RLAgent(**AGENT).fit(data.X[:100], data.y[:100])


def test_unfitted_and_unknown_params():
    with pytest.raises(RuntimeError, match="fit or load"):
        RLAgent().predict_proba(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="unknown RL agent parameters"):
        RLAgent(hiden=[8])
