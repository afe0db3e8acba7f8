"""Training: walk-forward report, strategy returns after fees, the ensemble, artifacts, CLI."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from models.dataset import build_dataset
from models.ensemble import Ensemble, log_loss
from models.registry import ENSEMBLE, MODELS, Registry
from models.train import REPORT, TrainError, format_report, load_artifact, make_model, positions, \
    strategy_return, train
from pipeline.cli import main
from pipeline.config import Config, ConfigError, load_config, resolve_paths

from conftest import ALL_FOUR, TINY_LSTM, TINY_TREES, data_file, toml

ROOT = Path(__file__).resolve().parent.parent
CANDLES = data_file("candles/binance_BTC-USDT_1h.csv")
FIRST, ROWS = 2000, 3000            # a slice of 1h BTC/USDT: Nov 2017 to Mar 2018, up, crash, flat

TINY = {"models": ["forest", "xgboost"], "folds": 3, "horizon": 6, "seed": 3, **TINY_TREES}


def tiny_toml(**model) -> str:
    """A [model] section alone: TINY with these keys changed."""
    return toml({"model": {**TINY, **model}})


def write_slice(path: Path, first: int, rows: int) -> Path:
    with open(CANDLES) as src, open(path, "w") as dst:
        lines = src.readlines()
        dst.write(lines[0])
        dst.writelines(lines[1 + first:1 + first + rows])
    return path


def tiny_config(tmp: Path, **model) -> tuple[Config, Path]:
    path = tmp / "tiny.toml"
    path.write_text(tiny_toml(**model))
    return load_config(path), path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run on the real slice: (report, out dir, csv, config, config path)."""
    tmp = tmp_path_factory.mktemp("train")
    data = write_slice(tmp / "candles.csv", FIRST, ROWS)
    cfg, cfg_path = tiny_config(tmp)
    out = tmp / "models"
    report = train(data, cfg, out, progress=False)
    return report, out, data, cfg, cfg_path


METRICS = ("accuracy", "log_loss", "strategy_return", "buy_hold_return")


def test_report_has_every_model_and_fold(trained):
    report, out, *_ = trained
    assert list(report["models"]) == ["forest", "xgboost"]
    assert len(report["folds"]) == 3
    for res in [*report["models"].values(), report["ensemble"]]:
        assert [f["fold"] for f in res["folds"]] == [1, 2, 3]
        for f in [*res["folds"], res["all"]]:
            for key in METRICS:
                assert math.isfinite(f[key]), (key, f)
            assert 0.0 <= f["accuracy"] <= 1.0 and f["log_loss"] > 0 and f["strategy_return"] > -1
        assert [f["rows"] for f in res["folds"]] == [f["scored_rows"] for f in report["folds"]]
        assert res["all"]["rows"] == sum(f["scored_rows"] for f in report["folds"])
    for f in report["folds"]:      # tree models predict every validation row
        assert f["scored_rows"] == f["val_rows"] > 100 and f["train_rows"] > 0
        assert sum(f["labels"].values()) == f["scored_rows"]
    assert json.loads((out / REPORT).read_text()) == report
    assert report["artifacts"] == {"forest": 1, "xgboost": 1, "ensemble": 1}
    assert "in-sample" in report["ensemble"]["note"]


def test_buy_hold_equals_closes_of_the_file(trained):
    """Independent of the dataset code: the closes at each fold's first and last bar, from the CSV."""
    report, _, data, *_ = trained
    with open(data) as f:
        close = {int(r["timestamp_ms"]): float(r["close"]) for r in csv.DictReader(f)}
    chained = 1.0
    for k, fold in enumerate(report["folds"]):
        expected = close[fold["last_ms"]] / close[fold["first_ms"]] - 1.0
        chained *= 1.0 + expected
        for res in [*report["models"].values(), report["ensemble"]]:
            assert res["folds"][k]["buy_hold_return"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    for res in [*report["models"].values(), report["ensemble"]]:
        assert res["all"]["buy_hold_return"] == pytest.approx(chained - 1.0, rel=1e-12)


def test_strategy_return_hand_example():
    """Long 100 -> 110, flip short 110 -> 99, flat, long 99 -> 108.9, out; 10 bps per side."""
    close = [100.0, 110.0, 99.0, 99.0, 108.9]
    pos = [1, -1, 0, 1, -1]                  # the last row's signal is never traded
    c = 0.001
    expected = ((1 - c) * 1.1) * ((1 - 2 * c) * 1.1) * ((1 - c) * 1.0) * ((1 - c) * 1.1) * (1 - c) - 1
    ret, trades = strategy_return(pos, close, c)
    assert ret == pytest.approx(expected, rel=1e-14)
    assert trades == 5                       # enter, flip, flat, long, exit
    # always long without fees is buy-and-hold; with fees it pays one entry and one exit
    assert strategy_return([1] * 5, close, 0.0) == (pytest.approx(108.9 / 100 - 1, rel=1e-14), 2)
    assert strategy_return([1] * 5, close, c)[0] == pytest.approx((1 - c) ** 2 * 1.089 - 1, rel=1e-14)
    assert strategy_return([0] * 5, close, c) == (0.0, 0)
    # signals: argmax down / flat / up -> -1 / 0 / +1, or 0 / 0 / +1 long only
    p = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])
    assert positions(p).tolist() == [-1, 0, 1]
    assert positions(p, long_only=True).tolist() == [0, 0, 1]


def test_ensemble_weights_and_oof_log_loss(trained):
    report, *_ = trained
    ens = report["ensemble"]
    w = np.array(list(ens["weights"].values()))
    assert ens["method"] == "soft_vote" and ens["members"] == ["forest", "xgboost"]
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
    best = min(r["all"]["log_loss"] for r in report["models"].values())
    assert ens["all"]["log_loss"] <= best + 1e-12        # the OOF rows its weights were learned on


def test_soft_vote_unit(tmp_path):
    """An informative member gets the weight; save/load gives identical output."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    good = np.full((2000, 3), 0.2)
    good[np.arange(2000), y] = 0.6
    noise = rng.dirichlet(np.ones(3), 2000)
    ens = Ensemble("soft_vote").fit({"good": good, "noise": noise}, y)
    assert ens.members == ["good", "noise"]
    assert ens.weights[0] > 0.9 and (ens.weights >= 0).all() and ens.weights.sum() == pytest.approx(1)
    probs = {"noise": noise, "good": good}                   # order of the dict does not matter
    ens.save(tmp_path)
    again = Ensemble.load(tmp_path)
    assert np.array_equal(again.predict_proba(probs), ens.predict_proba(probs))
    assert log_loss(y, ens.predict_proba(probs)) <= min(log_loss(y, good), log_loss(y, noise))
    out = again.outputs(probs)
    assert set(out) == {"good", "noise", "ensemble"} and np.array_equal(out["good"], good)
    with pytest.raises(ValueError, match="combines good, noise"):
        ens.predict_proba({"good": good})


def test_stacking_unit(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 1500)
    a = np.full((1500, 3), 0.25)
    a[np.arange(1500), y] = 0.5
    b = rng.dirichlet(np.ones(3), 1500)
    ens = Ensemble("stacking", seed=0).fit({"a": a, "b": b}, y)
    p = ens.predict_proba({"a": a, "b": b})
    assert p.shape == (1500, 3) and np.allclose(p.sum(axis=1), 1.0)
    assert log_loss(y, p) < log_loss(y, np.full((1500, 3), 1 / 3))
    from sklearn.linear_model import LogisticRegression
    lr = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(np.hstack([a, b]), y)
    assert np.allclose(p, lr.predict_proba(np.hstack([a, b])), atol=1e-12)
    ens.save(tmp_path)
    assert np.array_equal(Ensemble.load(tmp_path).predict_proba({"a": a, "b": b}), p)
    with pytest.raises(ValueError, match="every class"):
        Ensemble("stacking").fit({"a": a[y != 0], "b": b[y != 0]}, y[y != 0])


def test_registry_artifacts_and_reload(trained):
    report, out, data, cfg, _ = trained
    ds = build_dataset(data, cfg, cfg.model.horizon)
    reg = Registry(out)
    probs = {}
    for name in ("forest", "xgboost"):
        model, meta = load_artifact(out, name)
        assert meta["feature_names"] == ds.feature_names and meta["input_names"] == ds.input_names
        assert meta["data_range"] == ds.data_range() and meta["metrics"] == report["models"][name]
        assert meta["parameters"] == make_model(name, cfg.model).params
        assert meta["training"]["seed"] == 3 and meta["classes"] == ["down", "flat", "up"]
        assert {"numpy", "scikit-learn", "xgboost"} <= set(meta["libraries"])
        assert reg.versions(name) == [1]
        fresh = make_model(name, cfg.model).fit(ds.X, ds.y, seed=cfg.model.seed)
        probs[name] = model.predict_proba(ds.X)
        assert np.array_equal(probs[name], fresh.predict_proba(ds.X))
    ens, meta = load_artifact(out, ENSEMBLE)
    assert meta["members"] == ["forest", "xgboost"] and meta["member_versions"] == {"forest": 1, "xgboost": 1}
    assert meta["feature_names"] == ds.feature_names
    w = report["ensemble"]["weights"]
    assert np.allclose(ens.predict_proba(probs), w["forest"] * probs["forest"] + w["xgboost"] * probs["xgboost"],
                       rtol=0, atol=1e-15)


def test_fixed_seed_gives_identical_report(trained, tmp_path):
    report, _, data, cfg, _ = trained
    again = train(data, cfg, tmp_path / "again", progress=False)
    assert again == report


def test_stacking_run(trained, tmp_path):
    _, _, data, _, _ = trained
    cfg, _ = tiny_config(tmp_path, ensemble="stacking", long_only=True)
    report = train(data, cfg, tmp_path / "out", progress=False)
    assert report["ensemble"]["method"] == "stacking" and report["training"]["positions"] == "long_flat"
    assert np.asarray(report["ensemble"]["coef"]).shape == (3, 6)
    assert math.isfinite(report["ensemble"]["all"]["log_loss"])
    assert "stacking" in format_report(report)


class SequenceStub:
    """A model in the coming LSTM's shape: ``window`` rows of context, ``predict_sequence``
    with NaN for rows it cannot predict. ``blind`` rows at the start of every call are NaN,
    more than the window needs, to exercise the alignment of all models."""
    window = 5
    blind = 9
    calls: list = []

    def __init__(self, **params):
        self.params = params
        self.prior = None

    def fit(self, X, y, seed=0):
        self.prior = np.bincount(np.asarray(y, dtype=np.int64), minlength=3) / len(y)
        return self

    def predict_proba(self, X):
        raise AssertionError("a sequence model is asked through predict_sequence")

    def predict_sequence(self, X):
        type(self).calls.append(len(X))
        p = np.tile(self.prior, (len(X), 1))
        p[:self.blind] = np.nan
        return p

    def save(self, directory):
        (Path(directory) / "prior.json").write_text(json.dumps(self.prior.tolist()))

    @classmethod
    def load(cls, directory):
        m = cls()
        m.prior = np.array(json.loads((Path(directory) / "prior.json").read_text()))
        return m


def test_sequence_model_context_and_alignment(trained, tmp_path, monkeypatch):
    _, _, data, _, _ = trained
    monkeypatch.setitem(MODELS, "seq", SequenceStub)
    SequenceStub.calls = []
    cfg, _ = tiny_config(tmp_path)
    cfg.model.models = ["forest", "seq"]
    report = train(data, cfg, tmp_path / "out", progress=False)
    blind_val = SequenceStub.blind - (SequenceStub.window - 1)   # rows of each block left without context
    for f in report["folds"]:
        assert f["scored_rows"] == f["val_rows"] - blind_val
    # every model (and the ensemble) is scored on the same rows
    for res in [*report["models"].values(), report["ensemble"]]:
        assert [r["rows"] for r in res["folds"]] == [f["scored_rows"] for f in report["folds"]]
    # each call got the block plus window-1 rows before it
    assert SequenceStub.calls == [f["val_rows"] + SequenceStub.window - 1 for f in report["folds"]]


class Refuses(SequenceStub):
    def fit(self, X, y, seed=0):
        raise ValueError(f"{len(X)} rows are fewer than one window of 5000")


def test_a_model_refusing_its_data_is_a_train_error(trained, tmp_path, monkeypatch):
    _, _, data, _, _ = trained
    monkeypatch.setitem(MODELS, "refuses", Refuses)
    cfg, _ = tiny_config(tmp_path)
    cfg.model.models = ["forest", "refuses"]
    with pytest.raises(TrainError, match=r"^refuses, fold 1 \(\d+ training rows\): \d+ rows are fewer"):
        train(data, cfg, tmp_path / "out", progress=False)


# -- CLI ----------------------------------------------------------------------------------
def test_cli_prints_the_table(trained, tmp_path, capsys):
    report, _, data, _, cfg_path = trained
    rc = main(["train", "--data", str(data), "--config", str(cfg_path), "--out", str(tmp_path / "m"),
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "accuracy" in out and "log loss" in out and "buy&hold" in out
    for name in ("forest", "xgboost", "ensemble"):
        rows = [line for line in out.splitlines() if line.startswith(name + " ")]
        assert [line.split()[1] for line in rows] == ["1", "2", "3", "all"], out
    assert "ensemble: soft vote, weights forest" in out
    assert json.loads((tmp_path / "m" / REPORT).read_text()) == report      # same seed, same report
    assert "saved in" in out and (tmp_path / "m" / "ensemble" / "1" / "ensemble.json").exists()


def _one_line_error(capsys, argv: list[str], match: str) -> None:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("pipeline: ") and match in err, err


def test_cli_errors_are_one_line(tmp_path, capsys):
    _, cfg_path = tiny_config(tmp_path)
    base = ["train", "--config", str(cfg_path), "--out", str(tmp_path / "m"), "--no-progress"]
    _one_line_error(capsys, [*base, "--data", str(tmp_path / "missing.csv")], "missing.csv: no such file")
    bad = tmp_path / "bad.toml"
    bad.write_text(tiny_toml(models=["forest", "xgbost"]))
    _one_line_error(capsys, ["train", "--config", str(bad), "--data", "x.csv"],
                    "unknown model 'xgbost' (did you mean 'xgboost'?")
    bad.write_text(tiny_toml(ensemble="vote"))
    _one_line_error(capsys, ["train", "--config", str(bad), "--data", "x.csv"],
                    "model.ensemble must be one of soft_vote, stacking")
    short = write_slice(tmp_path / "short.csv", FIRST, 60)
    _one_line_error(capsys, [*base, "--data", str(short)], "too few for 3 folds")


@pytest.mark.parametrize("line, match", [
    ("horizon = 0", "model.horizon must be >= 1"),
    ("folds = 0", "model.folds must be >= 1"),
    ("label_threshold = -0.1", "model.label_threshold must be >= 0"),
    ("models = []", "model.models must name at least one model"),
    ('models = ["forest", "forest"]', "lists forest twice"),
    ("xgb_learning_rate = 0.0", "model.xgb_learning_rate must be in (0, 1]"),
    ("forest_trees = 0", "model.forest_trees must be >= 1"),
    ("seed = -1", "model.seed must be in"),
    ("xgb_rounds = 1.5", "model.xgb_rounds must be an integer"),
    ('bootstrap = "synth"', 'model.bootstrap must be "synthetic" or "" (off)'),
    ("bootstrap_bars = 100", "model.bootstrap_bars must be >= 500"),
    ('remote = "gpu-host:5560"', "model.remote must be a tcp://HOST:PORT address"),
    ('kind = "momentum"\nremote = "tcp://gpu:5560"', "model.remote serves the trained ensemble"),
    ('remote = "tcp://gpu:5560"\nremote_timeout_s = 6', "must be under half of pipeline.heartbeat_timeout_s"),
])
def test_config_validation(tmp_path, line, match):
    path = tmp_path / "c.toml"
    path.write_text(f"[model]\n{line}\n")
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(path)


def test_default_config_file_matches_defaults():
    builtin = Config()
    resolve_paths(builtin, ROOT)             # conf/default.toml's paths are relative to conf/
    assert load_config(ROOT / "conf" / "default.toml").model == builtin.model


def test_all_four_models_train_into_the_ensemble(trained, tmp_path):
    """LSTM (sequences), forest, XGBoost and the RL agent (learning from prices)
    in one walk-forward run, scored on the same rows, saved and reloaded."""
    pytest.importorskip("tensorflow", reason="TensorFlow is needed for the LSTM and the RL agent")
    _, _, data, _, _ = trained
    cfg, _ = tiny_config(tmp_path, models=ALL_FOUR, folds=2, **TINY_LSTM)
    report = train(data, cfg, tmp_path / "out", progress=False)
    assert list(report["models"]) == ["lstm", "forest", "xgboost", "rl"]
    assert report["artifacts"] == {"lstm": 1, "forest": 1, "xgboost": 1, "rl": 1, ENSEMBLE: 1}
    for name in report["models"]:
        assert all(math.isfinite(f["log_loss"]) for f in report["models"][name]["folds"])
    # every model is scored on the same rows: those where the LSTM has its window
    rows = {name: [f["rows"] for f in report["models"][name]["folds"]] for name in report["models"]}
    assert len({tuple(r) for r in rows.values()}) == 1
    assert [f["scored_rows"] for f in report["folds"]] == rows["lstm"]
    assert abs(sum(report["ensemble"]["weights"].values()) - 1) < 1e-9
    ds = build_dataset(data, cfg, cfg.model.horizon)
    lstm, meta = load_artifact(tmp_path / "out", "lstm")
    p = lstm.predict_sequence(ds.X)
    assert np.isnan(p[:7]).all() and np.allclose(p[7:].sum(axis=1), 1.0)
    rl, meta = load_artifact(tmp_path / "out", "rl")
    assert meta["class"] == "models.rl.RLAgent" and rl.predict_proba(ds.X).shape == (len(ds.X), 3)


def test_cli_train_sorts_shuffled_rows_and_prints_the_dropped_count(trained, tmp_path, capsys):
    """The same slice shuffled, with two rows twice: the same training as the file in order,
    and one line that says what reading the file dropped and sorted."""
    report, _, data, _, cfg_path = trained
    lines = data.read_text().splitlines()
    rows = lines[1:]
    mixed = [rows[i] for i in np.random.default_rng(8).permutation(len(rows))] + rows[100:102]
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0]] + mixed) + "\n")
    rc = main(["train", "--data", str(shuffled), "--config", str(cfg_path), "--out",
               str(tmp_path / "m"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    said = [line for line in out.splitlines() if "dropped 2 bad rows (duplicate 2)" in line]
    assert len(said) == 1 and "sorted " in said[0] and "rows that were out of order" in said[0], out
    got = json.loads((tmp_path / "m" / REPORT).read_text())
    assert got["data"]["dropped"] == {"duplicate": 2} and got["data"]["reordered"] > 1000
    assert got["models"] == report["models"] and got["folds"] == report["folds"]


def test_the_time_left_weighs_each_model_by_its_own_pace():
    """An LSTM fit costs many forests: the estimate uses each model's seconds per row, and
    a model not timed yet counts at the mean of those that were."""
    from models.train import FitTimes
    t = FitTimes()
    assert t.left([("lstm", 100)]) is None and t.left_text([("lstm", 100)]) == ""
    t.add("lstm", 10.0, 1000)            # 0.01 s a row
    t.add("forest", 1.0, 1000)           # 0.001 s a row
    todo = [("lstm", 2000), ("forest", 2000), ("xgboost", 1000)]
    assert t.left(todo) == pytest.approx(20.0 + 2.0 + 1000 * 0.0055)
    assert t.left_text(todo) == ", about 27 s left"
    assert t.left_text([("lstm", 10_000)]) == ", about 1 min 40 s left"
