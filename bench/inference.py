"""Benchmark: inference latency of the four models and the ensemble, our serving
paths against the naive ones, at batch sizes 1, 64 and 256 (one row per symbol).

Models
    Trained once, outside the clock, on a slice of real candles
    (``--rows`` bars, default 5000, the last of ``shared/data/candles/
    binance_BTC-USDT_5m.csv``) through `models.dataset.build_dataset` with the
    default configuration (its features, horizon and label threshold), with the
    sizes of the default ``[model]`` config: random forest 100 trees of depth 8,
    XGBoost 300 rounds of depth 6, LSTM window 32 x 32 units (one epoch: latency
    does not depend on how well it is trained), RL agent with its default network
    and a few episodes; then the ensemble (``[model] ensemble``, soft vote by
    default) on the members' predictions of the last rows. If the file is absent,
    a seeded geometric random walk is used instead and the output says so.

Inputs
    Batch b is b rows of model inputs (b windows of ``window`` rows for the
    LSTM), as the model worker holds one per symbol: windows ending at b
    different bars of the data. Eight such batches per size are prepared and
    used in turn, so no call sees the input of the call before.

Paths ("ours" is what the model worker calls; "naive" the library's usual call)
    forest    ours: `RandomForestModel.predict_proba` (flat arrays, one numba kernel,
              one thread). naive: the fitted scikit-learn forest's ``predict_proba``
              with its default ``n_jobs=None``; also with ``n_jobs=-1`` (JSON
              ``naive_njobs_all_*``, table line "forest n_jobs=-1"), the setting
              people reach for to make it faster.
    xgboost   ours: `XGBoostModel.predict_proba` (the booster's trees exported to flat
              arrays, one numba kernel, one thread; equal to ``inplace_predict``).
              naive: ``booster.predict(xgboost.DMatrix(X))``.
    lstm      ours: `LSTMModel.predict_proba` (XLA-compiled concrete function per
              batch size, compiled in warm-up). naive: Keras ``model.predict(
              standardised windows, verbose=0)``.
    rl        ours: `RLAgent.predict_proba` (the policy as a numpy MLP). naive: the
              same policy in TensorFlow, eager (``RLAgent.action_proba_tf``). The
              agent is trained in TensorFlow without a Keras model; an equivalent
              Keras model's ``predict`` would cost like the LSTM's (its per-call
              data pipeline), so this naive path is the cheaper, fairer one.
    ensemble  ours: the four "ours" calls in sequence, then `Ensemble.predict_proba`.
              naive: the four naive calls in sequence (forest with n_jobs=None),
              then the same combine. Timed as one sequence per call, not summed.
    Every path includes what it costs to go from the float64 inputs to (b, 3)
    probabilities (our paths' input checks included; the naive LSTM path includes
    the standardisation). Both paths' outputs are compared at every batch size
    (JSON ``max_abs_diff``): they are the same models.

Timing
    Per model and batch size: ``--warmup`` calls, then ``--calls`` timed calls of
    ours, then warm-up and ``--naive-calls`` timed calls of the naive path (fewer:
    Keras' predict costs tens of ms), each call timed alone with
    ``time.perf_counter_ns``. Figures are p50 and p99 in ms (with few naive calls,
    their p99 is close to the maximum); the ratio is naive / ours at p50 (and at
    p99 in the JSON). TensorFlow runs with one intra-op and one inter-op thread
    (models/tfruntime.py) and says whether it found a GPU.

Aims (issue 5): the whole ensemble for 64 symbols under 5 ms at p99, and at least
20x faster than the naive path (p50 ratio). On a shared 2-core machine every
figure depends on what else runs; the JSON records the load average before and after.

Usage::

    python3 bench/inference.py [--quick] [--json OUT.json] [--batches 1 64 256]
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import common

MEMBERS = ("forest", "xgboost", "lstm", "rl")
N_BATCHES = 8                     # distinct input batches per size, used in turn
JSON_NOTE = ("ms per call for a whole batch; ratio_* = naive / ours; forest naive = "
             "scikit-learn predict_proba with n_jobs=None (naive_njobs_all_*: n_jobs=-1); "
             "ensemble = four members in sequence + combine")

clock = time.perf_counter_ns


# -- data and models ------------------------------------------------------------
def load_candles(path: Path, rows: int):
    """The last ``rows`` candles of the file as a pyarrow table, or a seeded random walk."""
    import pyarrow as pa
    if path.exists():
        import pyarrow.csv as pcsv
        table = pcsv.read_csv(path)
        return table.slice(max(0, table.num_rows - rows)), f"{path} (last {rows} bars)"
    bars, source = common.random_walk(rows, path)
    return pa.table({
        "timestamp_ms": 1_700_000_000_000 + 300_000 * np.arange(rows, dtype=np.int64),
        **bars}), source


def train_models(table, args: argparse.Namespace) -> tuple[Any, dict, Any, dict]:
    """(dataset, {name: fitted model}, fitted ensemble, {name: training seconds})."""
    from models.dataset import build_dataset
    from models.ensemble import Ensemble
    from models.train import make_model
    from pipeline.config import Config

    cfg = Config()
    m = cfg.model
    m.lstm_epochs = 1                       # latency does not depend on training
    ds = build_dataset(table, cfg, m.horizon)
    X, y = ds.X, ds.y.astype(np.int64)
    models, seconds = {}, {}
    for name in MEMBERS:
        t0 = time.perf_counter()
        if name == "rl":
            from models.rl import RLAgent
            model = RLAgent(episodes=args.rl_episodes).fit(X, y, seed=m.seed, close=ds.close)
        else:
            model = make_model(name, m).fit(X, y, seed=m.seed)
        seconds[name] = round(time.perf_counter() - t0, 2)
        models[name] = model
    # the ensemble on the members' predictions of the last rows (in-sample: only its
    # cost is measured here, not its skill)
    lstm = models["lstm"]
    rows = np.arange(max(lstm.window - 1, len(X) - 1000), len(X))
    W = windows_at(X, rows, lstm.window)
    probs = {"forest": models["forest"].predict_proba(X[rows]),
             "xgboost": models["xgboost"].predict_proba(X[rows]),
             "lstm": lstm.predict_proba(W), "rl": models["rl"].predict_proba(X[rows])}
    ens = Ensemble(m.ensemble, m.seed).fit(probs, y[rows])
    return ds, models, ens, seconds


def windows_at(X: np.ndarray, rows: np.ndarray, window: int) -> np.ndarray:
    """(len(rows), window, f) float64: the window of rows ending at each of ``rows``."""
    idx = rows[:, None] - (window - 1) + np.arange(window)[None, :]
    return np.ascontiguousarray(X[idx])


def make_batches(X: np.ndarray, window: int, b: int, rng: np.random.Generator) -> list[dict]:
    """N_BATCHES inputs of b symbols: rows (b, f) and the windows ending at them."""
    out = []
    for _ in range(N_BATCHES):
        rows = rng.choice(np.arange(window - 1, len(X)), size=b, replace=b > len(X) - window + 1)
        out.append({"X": np.ascontiguousarray(X[rows]), "W": windows_at(X, rows, window)})
    return out


# -- paths ----------------------------------------------------------------------
def paths(models: dict, ens) -> dict[str, tuple[Callable, Callable]]:
    """name -> (ours(batch) -> (b, 3), naive(batch) -> (b, 3))."""
    import xgboost as xgb
    forest, boost, lstm, rl = (models[k] for k in MEMBERS)
    sk = forest.estimator
    keras_model = lstm.model

    def sk_proba(X, n_jobs):
        sk.n_jobs = n_jobs
        return sk.predict_proba(X)

    ours = {
        "forest": lambda d: forest.predict_proba(d["X"]),
        "xgboost": lambda d: boost.predict_proba(d["X"]),
        "lstm": lambda d: lstm.predict_proba(d["W"]),
        "rl": lambda d: rl.predict_proba(d["X"]),
    }
    naive = {
        "forest": lambda d: sk_proba(d["X"], None),           # scikit-learn's default
        "forest_njobs_all": lambda d: sk_proba(d["X"], -1),
        "xgboost": lambda d: boost.booster.predict(xgb.DMatrix(d["X"])).reshape(-1, 3),
        "lstm": lambda d: keras_model.predict(lstm._scale(d["W"]), verbose=0),
        "rl": lambda d: rl.action_proba_tf(d["X"], 0.0),
    }

    def combine(d):                    # the members' outputs precomputed: the combine alone
        return ens.predict_proba(d["probs"])

    def ens_ours(d):
        return ens.predict_proba({k: ours[k](d) for k in MEMBERS})

    def ens_naive(d):
        return ens.predict_proba({k: naive[k](d) for k in MEMBERS})

    table = {k: (ours[k], naive[k]) for k in MEMBERS}
    table["forest_njobs_all"] = (ours["forest"], naive["forest_njobs_all"])
    table["ensemble"] = (ens_ours, ens_naive)
    table["combine"] = (combine, None)
    return table


def time_calls(fn: Callable, batches: list[dict], warmup: int, calls: int) -> np.ndarray:
    """ns of each of ``calls`` calls after ``warmup`` untimed ones, batches in turn."""
    for i in range(warmup):
        fn(batches[i % len(batches)])
    gc.collect()
    out = np.empty(calls, np.int64)
    for i in range(calls):
        d = batches[i % len(batches)]
        t0 = clock()
        fn(d)
        out[i] = clock() - t0
    return out


def pct_ms(ns: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(ns, 50)) / 1e6, float(np.percentile(ns, 99)) / 1e6


def bench_batch(b: int, table: dict, batches: list[dict], args: argparse.Namespace) -> list[dict]:
    results = []
    njobs_all = None
    for name in ("forest_njobs_all", *MEMBERS, "ensemble"):
        ours, naive = table[name]
        diff = max(float(np.max(np.abs(np.asarray(ours(d), np.float64)
                                       - np.asarray(naive(d), np.float64))))
                   for d in batches[:1 if args.quick else 2])
        naive_ns = time_calls(naive, batches, args.warmup, args.naive_calls)
        n50, n99 = pct_ms(naive_ns)
        if name == "forest_njobs_all":       # only the naive side differs from "forest"
            njobs_all = (n50, n99, diff)
            continue
        ours_ns = time_calls(ours, batches, args.warmup, args.calls)
        o50, o99 = pct_ms(ours_ns)
        r = {"model": name, "batch": b,
             "ours_p50_ms": round(o50, 4), "ours_p99_ms": round(o99, 4),
             "naive_p50_ms": round(n50, 4), "naive_p99_ms": round(n99, 4),
             "ratio_p50": round(n50 / o50, 1), "ratio_p99": round(n99 / o99, 1),
             "calls_ours": args.calls, "calls_naive": args.naive_calls,
             "max_abs_diff": float(f"{diff:.3g}")}
        if name == "forest":
            r.update(naive_njobs_all_p50_ms=round(njobs_all[0], 4),
                     naive_njobs_all_p99_ms=round(njobs_all[1], 4),
                     ratio_njobs_all_p50=round(njobs_all[0] / o50, 1),
                     max_abs_diff_njobs_all=float(f"{njobs_all[2]:.3g}"))
        results.append(r)
    for d in batches:
        d["probs"] = {k: table[k][0](d) for k in MEMBERS}
    c50, c99 = pct_ms(time_calls(table["combine"][0], batches, args.warmup, args.calls))
    results[-1].update(combine_p50_ms=round(c50, 4), combine_p99_ms=round(c99, 4))
    return results


# -- output ---------------------------------------------------------------------
def table_text(results: list[dict]) -> str:
    ms = common.ms
    head = ["model", "batch", "ours p50 ms", "ours p99 ms", "naive p50 ms", "naive p99 ms",
            "naive/ours p50", "p99"]
    rows = [head]
    for r in results:
        rows.append([r["model"], str(r["batch"]), ms(r["ours_p50_ms"]), ms(r["ours_p99_ms"]),
                     ms(r["naive_p50_ms"]), ms(r["naive_p99_ms"]), f"{r['ratio_p50']:,.1f}x",
                     f"{r['ratio_p99']:,.1f}x"])
        if "naive_njobs_all_p50_ms" in r:
            rows.append(["  forest n_jobs=-1", str(r["batch"]), "", "",
                         ms(r["naive_njobs_all_p50_ms"]), ms(r["naive_njobs_all_p99_ms"]),
                         f"{r['ratio_njobs_all_p50']:,.1f}x", ""])
    return common.table(rows, "lr")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = common.parser(__doc__, "about 35 s: fewer rows, calls and RL episodes (same model sizes): "
                                "a smoke run, its figures rough",
                       candles=True)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--rows", type=int, default=None, help="candles to train on (default 5000)")
    ap.add_argument("--calls", type=int, default=None, help="timed calls of ours (default 200)")
    ap.add_argument("--naive-calls", type=int, default=None,
                    help="timed calls of the naive path (default 40)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 10)")
    ap.add_argument("--rl-episodes", type=int, default=None, help="RL training episodes")
    return common.defaults(ap.parse_args(argv), (
        ("rows", 5000, 800), ("calls", 200, 20), ("naive_calls", 40, 3), ("warmup", 10, 1),
        ("rl_episodes", 16, 2)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = common.machine()
    t_start = time.perf_counter()
    candles, source = load_candles(args.data, args.rows)
    if not args.data.exists():
        print(f"  note: {source}", file=sys.stderr)
    print(f"  training on {candles.num_rows} candles ...", file=sys.stderr, flush=True)
    ds, models, ens, train_s = train_models(candles, args)
    from models.lstm import devices
    gpus = devices()
    lstm = models["lstm"]
    lstm.warmup(args.batches)                     # XLA compile per batch size, off the clock
    table = paths(models, ens)
    rng = np.random.default_rng(7)
    results = []
    for b in args.batches:
        print(f"  batch {b} ...", file=sys.stderr, flush=True)
        results.extend(bench_batch(b, table, make_batches(ds.X, lstm.window, b, rng), args))
    load = common.finish(info)

    print(f"data: {source}; {len(ds)} rows x {ds.X.shape[1]} inputs; trained in "
          + ", ".join(f"{k} {v:.1f} s" for k, v in train_s.items()))
    print(f"TensorFlow: {'GPU ' + ', '.join(gpus) if gpus else 'CPU only (no GPU found)'}; "
          f"ensemble: {ens.method}")
    print("latency per call for the whole batch (one row per symbol); "
          "naive/ours = naive time / ours")
    print(table_text(results))
    at64 = next((r for r in results if r["model"] == "ensemble" and r["batch"] == 64), None)
    aims: dict[str, Any] = {}
    if at64:
        aims = {"batch": 64, "ensemble_ours_p99_ms": at64["ours_p99_ms"], "p99_limit_ms": 5.0,
                "p99_met": at64["ours_p99_ms"] < 5.0,
                "ratio_p50": at64["ratio_p50"], "ratio_min": 20.0,
                "ratio_met": at64["ratio_p50"] >= 20.0}
        print(f"aims (ensemble, 64 symbols): p99 {at64['ours_p99_ms']:.2f} ms (aim < 5 ms: "
              f"{'met' if aims['p99_met'] else 'MISSED'}); {at64['ratio_p50']:.1f}x faster than "
              f"naive at p50 (aim >= 20x: {'met' if aims['ratio_met'] else 'MISSED'})")
        parts = {r["model"]: r["ours_p50_ms"] for r in results
                 if r["batch"] == 64 and r["model"] in MEMBERS}
        print("  where the time goes at 64, ours p50: "
              + ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
              + f"; Ensemble.predict_proba alone {at64['combine_p50_ms']:.3f} ms; the sequence's p50 "
            f"is {at64['ours_p50_ms'] - sum(parts.values()) - at64['combine_p50_ms']:+.3f} ms off "
            "the sum of these")
    print(f"{load}; {time.perf_counter() - t_start:.0f} s")
    if args.json:
        import sklearn
        import xgboost
        from models.tfruntime import tensorflow
        info.update(tensorflow=tensorflow().__version__, sklearn=sklearn.__version__,
                    xgboost=xgboost.__version__, gpus=gpus)
        common.save(args, info, {
            "data": source, "rows": len(ds), "inputs": ds.X.shape[1], "train_s": train_s,
            "params": {k: getattr(models[k], "params", {}) for k in MEMBERS},
            "ensemble": ens.describe(),
            "results": results, "aims": aims, "note": JSON_NOTE})
    return 0


if __name__ == "__main__":
    common.run(main)
