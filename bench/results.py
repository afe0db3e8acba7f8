"""Trading results, stated plainly (issue 13): the ensemble strategy against each of
its members alone and against buy-and-hold, walk-forward out of sample, after fees
and slippage, on Binance BTC/USDT and ETH/USDT 5-minute candles (../shared/data).

Every run is `pipeline.backtest_checks.walk_forward` (what `pipeline backtest
--walk-forward` runs) on one symbol's file with conf/backtest.toml, whose [model]
section this script copies into OUT/configs/ with one change each:

* ``ensemble``: ``models`` left at the default, all four members (lstm, forest,
  xgboost, rl), ``folds`` 4, weights by soft vote;
* ``forest``, ``xgboost``, ``lstm``, ``rl``: ``models = ["<member>"]`` (an ensemble of
  one member, whose weight is 1) and ``folds = 1``. The folds only score the members
  and fit the ensemble's weights; the model served in each window is refitted on all
  of the window's rows with the same seed whatever ``folds`` is, so a member alone
  serves what it serves inside the ensemble, trained at half the cost.

Each symbol is its own walk-forward (walk_forward trains on the first --data file's
candles and serves that model to every symbol, so a BTC+ETH run would trade ETH
with a model of BTC): rolling --train-bars windows, each model trading the
--test-bars after its window, positions and equity carried across windows.

The figures are `pipeline.backtest_report.metrics` of the walk-forward's result,
which starts at the first window's first decision (the first training window is
played flat to warm up, and left out of the figures, as `pipeline backtest
--walk-forward` reports it). Buy-and-hold is the same period: the whole capital
in the symbol from the close of the first bar decided, no fees. Strategy sizing is conf/backtest.toml's [strategy] (default notional 100
quote per position at the target volatility, at most 1000, on 10000 of capital),
so the strategy rarely has more than a tenth of the capital at risk.

    python bench/results.py --json results.json                  # the README table
    python bench/results.py --quick                              # a smoke run, 4 weeks of BTC

Writes the configs, each run's walk-forward models and results.json (with --json)
to --out. Skips (exit 0) with a message when ../shared/data is absent.
"""
from __future__ import annotations

import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import common

CONFIG = common.ROOT / "conf" / "backtest.toml"
FILES = {"BTC/USDT": "binance_BTC-USDT_5m.csv", "ETH/USDT": "binance_ETH-USDT_5m.csv"}
VARIANTS = ["ensemble", "forest", "xgboost", "lstm", "rl"]


def config_text(variant: str) -> str:
    """conf/backtest.toml with its [model] section set for ``variant``."""
    text = CONFIG.read_text()
    if variant == "ensemble":
        extra = '\nmodels = ["lstm", "forest", "xgboost", "rl"]\nfolds = 4\n'
    else:
        extra = f'\nmodels = ["{variant}"]\nfolds = 1\n'
    text, n = re.subn(r"^\[model\]\n", lambda m: m.group(0) + extra.lstrip("\n"), text, flags=re.M)
    if n != 1:
        raise SystemExit(f"{CONFIG}: no [model] section to set")
    return text


def run_one(symbol: str, variant: str, path: str, config: str, train_bars: int, test_bars: int,
            out: str, start: str | None, end: str | None) -> dict:
    """One walk-forward; its out-of-sample figures."""
    from pipeline.backtest_checks import walk_forward
    from pipeline.backtest_report import _iso, fingerprint, metrics
    from pipeline.config import load_config
    cfg = load_config(config)
    t0 = time.perf_counter()
    result = walk_forward(cfg, [path], train_bars, test_bars, out, start, end)
    seconds = time.perf_counter() - t0
    oos = metrics(result)             # walk_forward's result starts at the first traded decision
    o, b = oos["overall"], oos["overall"]["buy_and_hold"]
    keys = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "trades", "win_rate",
            "profit_factor", "exposure", "fees", "slippage", "turnover", "end_value")
    return {"symbol": symbol, "variant": variant, "config": config, "out": out,
            "seconds": round(seconds, 1), "period": oos["period"],
            "windows": result.meta["walk_forward"]["windows"],
            "periods": [{k: p[k] for k in ("from", "to", "train_rows", "model_versions")}
                        for p in result.meta["periods"]],
            "execution": result.meta["execution"], "strategy": result.meta["strategy"],
            "bars_per_s": result.meta["bars_per_s"], "fingerprint": fingerprint(result.fills),
            # the risk guard's refusals (a 10 % drawdown leaves only reducing orders until resumed)
            "denials": result.counts.get("denials", {}), "fills": int(len(result.fills)),
            "first_fill": _iso(result.fills["ts_ns"][0]) if len(result.fills) else None,
            "last_fill": _iso(result.fills["ts_ns"][-1]) if len(result.fills) else None,
            "strategy_figures": {k: o[k] for k in keys}, "buy_and_hold": b}


def pct(x, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x * 100:+.{digits}f} %"


def num(x, fmt: str = "+.2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def markdown(runs: list[dict]) -> str:
    rows = ["| Symbol | Strategy | Return | Sharpe | Max drawdown | Trades | Exposure | Fees paid |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for symbol in dict.fromkeys(r["symbol"] for r in runs):
        mine = [r for r in runs if r["symbol"] == symbol]
        for r in mine:
            f = r["strategy_figures"]
            name = "ensemble (4 members)" if r["variant"] == "ensemble" else f"{r['variant']} alone"
            rows.append(f"| {symbol} | {name} | {pct(f['total_return'])} | {num(f['sharpe'])} | "
                        f"{pct(-f['max_drawdown'] if f['max_drawdown'] else 0.0)} | {f['trades']} | "
                        f"{f['exposure'] * 100:.1f} % | {f['fees']:,.2f} |")
        b = mine[0]["buy_and_hold"]
        rows.append(f"| {symbol} | buy-and-hold | {pct(b['total_return'])} | {num(b['sharpe'])} | "
                    f"{pct(-b['max_drawdown'] if b['max_drawdown'] else 0.0)} | 1 | 100.0 % | 0.00 |")
    return "\n".join(rows)


def main() -> int:
    ap = common.parser(__doc__, "a smoke run: BTC only, 4 weeks, 4000/2000-bar windows")
    ap.add_argument("--train-bars", type=int, help="bars each model learns from (default 30000)")
    ap.add_argument("--test-bars", type=int, help="bars each model trades (default 15000)")
    ap.add_argument("--from", dest="start", help="first date played (UTC, YYYY-MM-DD; default: the file's)")
    ap.add_argument("--to", dest="end", help="play up to this date (default: the file's end; --quick 2025-01-28)")
    ap.add_argument("--symbols", nargs="+", choices=list(FILES), help="default: both (--quick: BTC/USDT)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    ap.add_argument("--jobs", type=int, default=1, help="walk-forwards at once, in separate processes")
    ap.add_argument("--out", type=Path, default=Path("/tmp/tickpipe-results"),
                    help="configs, models and the JSON go here (default /tmp/tickpipe-results)")
    args = common.defaults(ap.parse_args(), [("train_bars", 30000, 4000), ("test_bars", 15000, 2000),
                                             ("end", None, "2025-01-28"),
                                             ("symbols", list(FILES), ["BTC/USDT"])])
    candles = common.SHARED_DATA / "candles"
    missing = [candles / FILES[s] for s in args.symbols if not (candles / FILES[s]).exists()]
    if not common.SHARED_DATA.exists() or missing:
        print(f"skipped: the real candles are absent ({missing[0] if missing else common.SHARED_DATA}); "
              "the results table needs ../shared/data/candles")
        return 0
    info = common.machine("numpy", "scikit-learn", "xgboost", "tensorflow")
    (args.out / "configs").mkdir(parents=True, exist_ok=True)
    configs = {}
    for v in args.variants:
        configs[v] = args.out / "configs" / f"{v}.toml"
        configs[v].write_text(config_text(v))
    tasks = [(s, v, str(candles / FILES[s]), str(configs[v]), args.train_bars, args.test_bars,
              str(args.out / f"{s.split('/')[0].lower()}-{v}"), args.start, args.end)
             for v in args.variants for s in args.symbols]      # the long ensembles first, side by side
    t0 = time.perf_counter()
    runs = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, *t) for t in tasks]
        for task, fut in zip(tasks, futures):
            r = fut.result()
            runs.append(r)
            f = r["strategy_figures"]
            print(f"  {r['symbol']:9} {r['variant']:9} return {pct(f['total_return'])}, Sharpe "
                  f"{num(f['sharpe'])}, {f['trades']} trades, {r['windows']} windows, {r['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    runs.sort(key=lambda r: (args.symbols.index(r["symbol"]), VARIANTS.index(r["variant"])))
    for s in args.symbols:                      # one benchmark per symbol, whatever traded
        bh = {r["variant"]: round(r["buy_and_hold"]["total_return"], 12) for r in runs if r["symbol"] == s}
        if len(set(bh.values())) > 1:
            raise AssertionError(f"{s}: buy-and-hold differs between runs: {bh}")
    first = runs[0]
    ex = first["execution"]
    print(markdown(runs))
    print()
    for s in args.symbols:
        r = next(r for r in runs if r["symbol"] == s)
        print(f"{s}: out of sample {r['period']['start'][:16]} .. {r['period']['end'][:16]} "
              f"({r['period']['bars']} bars), {r['windows']} windows of {args.train_bars} training / "
              f"{args.test_bars} traded bars")
    for r in runs:
        if r["denials"]:
            print(f"{r['symbol']} {r['variant']}: the risk guard refused {r['denials']}; fills "
                  f"{r['first_fill'][:16]} .. {r['last_fill'][:16]}")
    print(f"costs: taker fee {ex['fee_bps']} bps, maker {ex['maker_fee_bps']} bps, slippage "
          f"{ex['slippage_bps']} bps, capital {ex['capital']:,.0f}; strategy notional "
          f"{first['strategy']['notional']} (max {first['strategy']['max_notional']}), "
          f"long only: {not first['strategy']['allow_short']}")
    print(f"wall time {wall / 60:.1f} min for {len(runs)} walk-forwards ({args.jobs} at once); {common.finish(info)}")
    common.save(args, info, {"train_bars": args.train_bars, "test_bars": args.test_bars,
                             "wall_s": round(wall, 1), "runs": runs, "table": markdown(runs)})
    return 0


if __name__ == "__main__":
    common.run(main)
