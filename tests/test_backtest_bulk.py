"""A backtest scores every bar close at once (models/serving: ``predict_bulk``) where
live scores the newest close only: the outputs must be those of one call per close,
member by member, the LSTM's windows included, and the trades the same."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.serving import EnsembleModel
from models.train import train
from pipeline.backtest import Backtest, load_data, run_backtest
from pipeline.backtest_report import fingerprint
from pipeline.config import feature_names, load_config
from workers.bars import bar_steps

from conftest import TINY_LSTM, TINY_TREES, toml

ROOT = Path(__file__).resolve().parent.parent
BTC = ROOT / "samples" / "binance_BTC-USDT_5m.csv"
ETH = ROOT / "samples" / "binance_ETH-USDT_5m.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ensemble with an LSTM (window 8), a forest and XGBoost, trained on BTC 5m."""
    folder = tmp_path_factory.mktemp("bulk")
    conf = folder / "bulk.toml"
    conf.write_text(toml({
        "pipeline": {"name": "bulk"},
        "indicators": {"bar_seconds": 300.0, "ema": [3, 8], "rsi": [14]},
        "model": {"kind": "ensemble", "artifacts": str(folder / "models"), "models": ["lstm", "forest", "xgboost"],
                  "folds": 2, "horizon": 6, **TINY_TREES, **TINY_LSTM},
        "strategy": {"enter_margin": 0.02, "exit_margin": 0.0, "min_hold_bars": 1},
        "risk": {"max_position_notional": 1e9, "max_order_notional": 1e9, "max_gross_exposure": 1e9,
                 "max_venue_exposure": 1e9, "max_drawdown_frac": 0.9, "max_daily_loss_frac": 0.9},
        "execution": {"venue_rules": False},
    }))
    cfg = load_config(conf)
    train(str(BTC), cfg, folder / "models", progress=False)
    return cfg


def serve(cfg, n: int) -> EnsembleModel:
    return EnsembleModel(cfg.model.artifacts, feature_names(cfg), n, cfg.indicators.bar_seconds)


def test_bulk_outputs_are_one_call_per_close(trained, tmp_path):
    data = load_data([str(BTC), str(ETH)], end="2026-02-08")
    bt = Backtest(trained, data, tmp_path / "j.sqlite", model=serve(trained, 2))
    try:
        found = bt._closes(bar_steps(data.ticks, bt.bar_ns))
        closes = [found.at(k) for k in range(len(found))]
    finally:
        bt.close()
    closes.insert(40, closes[39])                        # a close seen twice (a re-read): not appended twice
    ids = [c.rows["symbol_id"].astype(np.intp) for c in closes]
    rows = [c.rows for c in closes]
    one, bulk = serve(trained, 2), serve(trained, 2)
    each = [one.predict(i, r) for i, r in zip(ids, rows)]
    number = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    together = bulk.predict_bulk(np.concatenate(ids), np.concatenate(rows), number)
    for k, name in enumerate(("probs", "member", "versions", "flags", "hold")):
        want = np.concatenate([e[k] for e in each])
        if want.dtype.kind == "f":
            np.testing.assert_allclose(together[k], want, rtol=0, atol=1e-6, err_msg=name)
        else:
            assert np.array_equal(together[k], want), name
    flags = together[3]
    assert (flags & 1 << 4).any() and not (flags & 1 << 4).all()    # partial (no LSTM window yet), then full
    assert np.array_equal(bulk.count, one.count) and np.array_equal(bulk.last_bar, one.last_bar)
    assert np.allclose(bulk.hist, one.hist)
    # and it goes on as one call per close would
    more_ids, more_rows = ids[-1], rows[-1].copy()
    more_rows["ts_bar_ns"] += 300 * 10**9
    np.testing.assert_allclose(bulk.predict(more_ids, more_rows)[0], one.predict(more_ids, more_rows)[0],
                               atol=1e-6)


class OneCloseAtATime:
    """The ensemble served the live way: one call per close (no ``predict_bulk``)."""

    def __init__(self, model: EnsembleModel):
        self._model = model

    def predict(self, ids, rows):
        return self._model.predict(ids, rows)

    def __getattr__(self, name):
        if name == "predict_bulk":
            raise AttributeError(name)
        return getattr(self._model, name)


def test_a_backtest_trades_the_same_either_way(trained):
    live_way = run_backtest(trained, [str(BTC)], end="2026-02-09", model=OneCloseAtATime(serve(trained, 1)))
    bulk_way = run_backtest(trained, [str(BTC)], end="2026-02-09")
    assert len(bulk_way.fills) >= 4, "the test strategy should trade"
    assert fingerprint(bulk_way.fills) == fingerprint(live_way.fills)
    np.testing.assert_allclose(bulk_way.signals["probs"], live_way.signals["probs"], atol=1e-6)
