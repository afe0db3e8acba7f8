"""Benchmark: the kimchi-premium route trader (workers/strategy/routes.py) on 10
routes, book updates replayed at venue rates; against the seed plan's figures and a
naive bot measured in the same run (issue 14, the seed's Task 4).

Routes and updates
    10 assets on Upbit (KRW) against Binance (USDT). Each update is one venue's
    top-20 book of one asset, synthesised around the real simultaneous books of
    2025-08-23 in tests/data/orderbook (their level spacing and sizes, scaled to
    each asset's price and snapped onto its tick: Upbit's table of that date,
    Binance's filters), deterministic (seed 14). Rates: 10 updates a second per
    venue and asset (Binance's 100 ms depth stream; Upbit pushed at the same rate),
    200 a second in all. The Binance price walks (1 bp a step); the premium is
    +14 bps (the real books against FRED's 1,381.71) plus a slow wander and, every
    6 s on each route, a 0.5 s spike of +/-60 bps, so routes enter and unwind.
    The full run replays one minute (12,000 updates), --quick 300.

What is measured
    Paced pass: the updates replayed at their own times (sleeping between them).
    Per update, ``time.perf_counter_ns`` from the update handed over (its arrays
    wrapped in a Book) to the route's answer: both legs' INTENT rows, or nothing
    (avg, p50, p95, p99; and the same over the updates that produced a pair).
    CPU %: each engine's CPU time (``time.process_time`` around its calls) over the
    pass's wall time, and the whole process's (psutil cpu_times, both engines and
    the replay loop); RSS of the process at the end (psutil). Legs fill at once at
    their walked prices (a paper fill, outside the timing), so inventory and
    position move and the routes unwind.
    Unpaced pass: the same updates as fast as they go, fresh cores: route
    evaluations per second (one update evaluates the route of its asset).

Peers
    * The seed plan's figures (D75-2: 25 ms a loop on average, 40 ms p99, >= 40
      iterations/s, CPU < 10 %, RSS < 60 MB) are printed as the target; they were
      not measured here.
    * "naive peer": the same decision written the way a typical bot writes it
      (ccxt-style lists of [price, size], Python loops walking both directions,
      a deque's mean for the level, rounded limits, order dicts), measured in this
      run on the same updates. It is not a published project's code: ccxt has no
      arbitrage engine. It skips what ours checks (book validity, lot and notional
      rules, inventory reservations).

The issue's aims for ours: p99 <= 1 ms and >= 10,000 route evaluations/s, within
the seed's CPU and memory figures.

Usage::

    python3 bench/arbitrage.py [--quick] [--json OUT.json] [--updates N]
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from datetime import datetime
from decimal import Decimal

import numpy as np

import common
from pipeline.clock import SimClock
from workers.execution.venue_rules import KST, SymbolRules, upbit_rules
from workers.strategy.arbitrage import Book
from workers.strategy.routes import ArbRoute, Inventory, RouteParams, RouteSpec

DATA = common.ROOT / "tests" / "data" / "orderbook"
UPBIT_FILE = DATA / "upbit_BTC-KRW_top20_snapshots_2025-08-23T2103Z.jsonl"
BINANCE_FILE = DATA / "binance_BTC-USDT_top20_snapshots_2025-08-23T2105Z.jsonl"
FX = 1381.71                    # FRED's 2025-08-22 fixing, KRW per USD (taken as per USDT)
PREMIUM_BPS = 14.0              # the real books' level against it
RATE_PER_VENUE = 10             # updates a second per venue and asset
UPBIT_FEE, BINANCE_FEE = 5.0, 10.0
ENTRY_BPS, EXIT_BPS, BAND_BPS = 20.0, -5.0, 5.0
NOTIONAL_USDT = 1000.0          # a pair's size
SEED_TARGET = {"avg_ms": 25.0, "p99_ms": 40.0, "iterations_per_s": 40.0, "cpu_percent": 10.0,
               "rss_mb": 60.0}
AIMS = {"p99_ms": 1.0, "evaluations_per_s": 10_000.0}

# asset, Binance price (USDT), Binance tick, Binance lot step: rough prices of August 2025
ASSETS = [("BTC", 115_279.255, "0.01", "0.00001"), ("ETH", 4_780.0, "0.01", "0.0001"),
          ("XRP", 3.02, "0.0001", "0.1"), ("SOL", 205.3, "0.01", "0.001"),
          ("DOGE", 0.2352, "0.00001", "1"), ("ADA", 0.921, "0.0001", "0.1"),
          ("LINK", 26.07, "0.01", "0.01"), ("AVAX", 25.13, "0.01", "0.01"),
          ("SUI", 3.713, "0.0001", "0.1"), ("TRX", 0.3604, "0.0001", "0.1")]


def kst_ns(text: str) -> int:
    return int(round(datetime.fromisoformat(text).replace(tzinfo=KST).timestamp() * 1e6)) * 1000


# -- the replay ---------------------------------------------------------------------------------
class Shape:
    """A real book's shape: each level's price over the mid, and its size in quote."""

    def __init__(self, snap: dict):
        bids, asks = np.array(snap["bids"], float), np.array(snap["asks"], float)
        mid = (bids[0, 0] + asks[0, 0]) / 2
        self.bid_rel, self.ask_rel = bids[:, 0] / mid, asks[:, 0] / mid
        self.bid_notional, self.ask_notional = bids[:, 1] * mid, asks[:, 1] * mid

    def book(self, mid: float, tick: float, decimals: int, out: np.ndarray) -> None:
        """The shape at ``mid`` on ``tick`` into ``out`` (4 x levels: bid px, bid size,
        ask px, ask size): bids floored, asks ceiled, each level a tick beyond the last."""
        bp = np.floor(mid * self.bid_rel / tick) * tick
        ap = np.ceil(mid * self.ask_rel / tick) * tick
        if ap[0] <= bp[0]:
            ap[0] = bp[0] + tick
        for k in range(1, len(bp)):
            bp[k] = min(bp[k], bp[k - 1] - tick)
            ap[k] = max(ap[k], ap[k - 1] + tick)
        out[0], out[2] = np.round(bp, decimals), np.round(ap, decimals)
        out[1], out[3] = self.bid_notional / mid, self.ask_notional / mid


def _decimals(tick: Decimal) -> int:
    return max(0, -tick.as_tuple().exponent)


def routes_and_replay(n_updates: int, window: int):
    """The 10 route specs, and ``n_updates`` updates: (route, venue 0 Upbit / 1
    Binance, time ns) per update and their books (n x 4 x 20 float64)."""
    up_snap = [json.loads(x) for x in UPBIT_FILE.read_text().splitlines() if x.strip()][6]
    bn_snap = [json.loads(x) for x in BINANCE_FILE.read_text().splitlines() if x.strip()][2]
    up_shape, bn_shape = Shape(up_snap), Shape(bn_snap)
    t0 = kst_ns(up_snap["timestamp"])
    specs, ticks = [], []
    up_rules = upbit_rules([f"KRW-{a}" for a, *_ in ASSETS], t0)
    for i, (asset, price, tick, lot) in enumerate(ASSETS):
        kr = up_rules[f"KRW-{asset}"]
        up_tick = kr.tick_at(Decimal(repr(price * FX * 1.02)))          # the book's highest price
        br = SymbolRules(f"{asset}USDT", lot_step=Decimal(lot), tick_size=Decimal(tick),
                         min_qty=Decimal(lot), min_notional=Decimal("5"))
        specs.append(RouteSpec(i, asset, "upbit", 2 * i, kr, UPBIT_FEE, "binance", 2 * i + 1, br,
                               BINANCE_FEE))
        ticks.append(((float(up_tick), _decimals(up_tick)), (float(tick), _decimals(Decimal(tick)))))

    # schedule: per route, Binance every 100 ms, Upbit 50 ms after, each route 7 ms later
    step = 1_000_000_000 // RATE_PER_VENUE
    per_route = -(-n_updates // (2 * len(ASSETS)))
    events = []
    for i in range(len(ASSETS)):
        for k in range(per_route):
            events.append((k * step + i * 7_000_000, i, 1))
            events.append((k * step + step // 2 + i * 7_000_000, i, 0))
    events.sort()
    events = events[:n_updates]

    rng = np.random.default_rng(14)
    mids = np.array([a[1] for a in ASSETS])
    wander = np.zeros(len(ASSETS))
    meta = np.zeros((len(events), 3), np.int64)
    books = np.zeros((len(events), 4, 20))
    for n, (t, i, venue) in enumerate(events):
        mids[i] *= math.exp(rng.normal(0, 1e-4))
        wander[i] += -0.02 * wander[i] + rng.normal(0, 1.0)              # bps, mean-reverting
        phase = (t / 1e9 - 0.6 - 0.08 * i) % 6.0
        spike = (60.0 if (int((t / 1e9 - 0.6 - 0.08 * i) // 6.0) % 2 == 0) else -60.0) \
            if t / 1e9 >= 0.6 + 0.08 * i and phase < 0.5 else 0.0
        meta[n] = (i, venue, t0 + t)
        if venue == 1:
            tick, dec = ticks[i][1]
            bn_shape.book(mids[i], tick, dec, books[n])
        else:
            tick, dec = ticks[i][0]
            up_shape.book(mids[i] * FX * (1 + (PREMIUM_BPS + wander[i] + spike) * 1e-4), tick, dec,
                          books[n])
    # each venue's first book, so both books exist from the first update on
    first = np.zeros((len(ASSETS), 2, 4, 20))
    for i in range(len(ASSETS)):
        bn_shape.book(ASSETS[i][1], *ticks[i][1], first[i, 1])
        up_shape.book(ASSETS[i][1] * FX * (1 + PREMIUM_BPS * 1e-4), *ticks[i][0], first[i, 0])
    return specs, meta, books, first, t0


def params_for(spec: RouteSpec, price: float, window: int) -> RouteParams:
    return RouteParams(qty=NOTIONAL_USDT / price, entry_bps=ENTRY_BPS, exit_bps=EXIT_BPS,
                       band_bps=BAND_BPS, window=window)


# -- ours --------------------------------------------------------------------------------------------
class Ours:
    """The 10 ArbRoutes on one inventory, their current books, paper fills."""

    def __init__(self, specs, first, t0: int, window: int):
        self.clock = SimClock(t0)
        coins, cash = {}, {"upbit": 0.0, "binance": 0.0}
        self.routes = []
        for spec, (asset, price, *_) in zip(specs, ASSETS):
            p = params_for(spec, price, window)
            coins[("upbit", asset)] = coins[("binance", asset)] = 50 * p.qty
            cash["upbit"] += 50 * NOTIONAL_USDT * FX * 1.05
            cash["binance"] += 50 * NOTIONAL_USDT * 1.05
        self.inventory = Inventory(coins, cash)
        for spec, (asset, price, *_) in zip(specs, ASSETS):
            self.routes.append(ArbRoute(spec, params_for(spec, price, window), self.inventory, self.clock))
        self.books = [[Book(*f[0], t0), Book(*f[1], t0)] for f in first]
        self.pairs = 0

    def update(self, i: int, venue: int, arr: np.ndarray, ts: int, seq: int):
        """The timed part: wrap the arrays, evaluate the route."""
        self.books[i][venue] = Book(arr[0], arr[1], arr[2], arr[3], ts)
        b = self.books[i]
        return self.routes[i].on_books(b[0], b[1], FX, ts - ts % 1_000_000_000, seq)

    def fill(self, i: int, rows) -> None:
        r = self.routes[i]
        for row in rows:
            r.on_fill(int(row["seq"]), float(row["qty"]), float(row["ref_price"]), done=True)
        self.pairs += 1


# -- the naive peer ------------------------------------------------------------------------------------
class Naive:
    """The decision as a typical bot writes it: latest ccxt-style books in a dict,
    both directions walked with Python loops, the level as a deque's mean, limits
    rounded with round(), order dicts; balances in a dict, filled at once."""

    def __init__(self, specs, first, window: int):
        self.books = {}
        self.window = {}
        self.symbols = {}
        self.balances = {}
        for spec, f, (asset, price, tick, lot) in zip(specs, first, ASSETS):
            self.books[("upbit", asset)] = {"bids": f[0][:2].T.tolist(), "asks": f[0][2:].T.tolist()}
            self.books[("binance", asset)] = {"bids": f[1][:2].T.tolist(), "asks": f[1][2:].T.tolist()}
            self.window[asset] = deque(maxlen=window)
            qty = math.floor(NOTIONAL_USDT / price / float(lot)) * float(lot)
            self.symbols[asset] = {"qty": qty, "upbit_tick": float(spec.krw_rules.tick_at(
                Decimal(repr(price * FX)))), "binance_tick": float(tick), "position": 0.0}
            self.balances[("upbit", asset)] = self.balances[("binance", asset)] = 50 * qty
        self.balances["KRW"] = 1e12
        self.balances["USDT"] = 1e9
        self.pairs = 0

    @staticmethod
    def walk(levels: list, qty: float):
        left, cost, worst = qty, 0.0, None
        for price, size in levels:
            take = min(left, size)
            cost += take * price
            left -= take
            worst = price
            if left <= 1e-12:
                return cost / qty, worst
        return None, None

    def update(self, asset: str, venue: str, book: dict, fx: float):
        self.books[(venue, asset)] = book
        up, bn = self.books[("upbit", asset)], self.books[("binance", asset)]
        if not up["bids"] or not up["asks"] or not bn["bids"] or not bn["asks"]:
            return None
        s = self.symbols[asset]
        qty = s["qty"]
        mid = ((up["bids"][0][0] + up["asks"][0][0]) / 2 / fx) / ((bn["bids"][0][0] + bn["asks"][0][0]) / 2) - 1
        w = self.window[asset]
        full = len(w) == w.maxlen
        mean = sum(w) / len(w) if w else 0.0
        w.append(mid * 1e4)
        if not full:
            return None
        orders = []
        # sell on Upbit, buy on Binance
        sell_px, sell_worst = self.walk(up["bids"], qty)
        buy_px, buy_worst = self.walk(bn["asks"], qty)
        if sell_px and buy_px:
            net = (sell_px / fx * (1 - UPBIT_FEE / 1e4)) / (buy_px * (1 + BINANCE_FEE / 1e4)) - 1
            need = EXIT_BPS if s["position"] < 0 else ENTRY_BPS
            if net * 1e4 - mean >= need and self.balances[("upbit", asset)] >= qty:
                orders = [("upbit", "sell", sell_worst * (1 - BAND_BPS / 1e4), s["upbit_tick"]),
                          ("binance", "buy", buy_worst * (1 + BAND_BPS / 1e4), s["binance_tick"])]
        if not orders:
            sell_px, sell_worst = self.walk(bn["bids"], qty)
            buy_px, buy_worst = self.walk(up["asks"], qty)
            if sell_px and buy_px:
                net = (sell_px * (1 - BINANCE_FEE / 1e4)) / (buy_px / fx * (1 + UPBIT_FEE / 1e4)) - 1
                need = EXIT_BPS if s["position"] > 0 else ENTRY_BPS
                if net * 1e4 + mean >= need and self.balances[("binance", asset)] >= qty:
                    orders = [("binance", "sell", sell_worst * (1 - BAND_BPS / 1e4), s["binance_tick"]),
                              ("upbit", "buy", buy_worst * (1 + BAND_BPS / 1e4), s["upbit_tick"])]
        if not orders:
            return None
        out = []
        for venue_, side, price, tick in orders:
            price = round(round(price / tick) * tick, 10)
            out.append({"symbol": f"{asset}/{'KRW' if venue_ == 'upbit' else 'USDT'}", "venue": venue_,
                        "type": "limit", "side": side, "amount": qty, "price": price,
                        "params": {"timeInForce": "IOC"}})
        return out

    def fill(self, asset: str, orders: list) -> None:
        for o in orders:
            sign = 1 if o["side"] == "buy" else -1
            self.balances[(o["venue"], asset)] += sign * o["amount"]
            if o["venue"] == "upbit":
                self.symbols[asset]["position"] -= sign * o["amount"]
        self.pairs += 1


# -- the passes -----------------------------------------------------------------------------------------
def _stats(ns: list[int]) -> dict:
    if not ns:
        return {"count": 0}
    t = np.array(ns) / 1e6
    return {"count": len(t), "avg_ms": float(t.mean()), "p50_ms": float(np.percentile(t, 50)),
            "p95_ms": float(np.percentile(t, 95)), "p99_ms": float(np.percentile(t, 99)),
            "max_ms": float(t.max())}


def _warm(ours: Ours, naive: Naive, meta, books, warm: int) -> None:
    """The first ``warm`` updates, untimed and unpaced: every route's window fills."""
    for n in range(warm):
        i, venue, ts = (int(x) for x in meta[n])
        ours.clock.set(ts)
        rows = ours.update(i, venue, books[n], ts, n)
        if len(rows):
            ours.fill(i, rows)
        if naive is not None:
            book = {"bids": books[n][:2].T.tolist(), "asks": books[n][2:].T.tolist()}
            orders = naive.update(ASSETS[i][0], "upbit" if venue == 0 else "binance", book, FX)
            if orders:
                naive.fill(ASSETS[i][0], orders)


def paced(specs, meta, books, first, t0, window: int, warm: int) -> tuple[dict, dict, dict]:
    """Both engines on each update after the warm-up, at the update's own time."""
    import psutil
    proc = psutil.Process()
    ours, naive = Ours(specs, first, t0, window), Naive(specs, first, window)
    _warm(ours, naive, meta, books, warm)
    pairs0 = (ours.pairs, naive.pairs)
    lat_o, lat_o_pairs, lat_n, lat_n_pairs = [], [], [], []
    cpu_o = cpu_n = 0.0
    c0 = proc.cpu_times()
    start = time.perf_counter()
    ts0 = int(meta[warm][2])
    for n in range(warm, len(meta)):
        i, venue, ts = (int(x) for x in meta[n])
        due = (ts - ts0) / 1e9
        ahead = due - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
        ours.clock.set(ts)
        arr = books[n]
        p0, t_0 = time.process_time(), time.perf_counter_ns()
        rows = ours.update(i, venue, arr, ts, n)
        t_1, p1 = time.perf_counter_ns(), time.process_time()
        cpu_o += p1 - p0
        lat_o.append(t_1 - t_0)
        if len(rows):
            lat_o_pairs.append(t_1 - t_0)
            ours.fill(i, rows)
        book = {"bids": arr[:2].T.tolist(), "asks": arr[2:].T.tolist()}     # ccxt's shape, untimed
        asset = ASSETS[i][0]
        p0, t_0 = time.process_time(), time.perf_counter_ns()
        orders = naive.update(asset, "upbit" if venue == 0 else "binance", book, FX)
        t_1, p1 = time.perf_counter_ns(), time.process_time()
        cpu_n += p1 - p0
        lat_n.append(t_1 - t_0)
        if orders:
            lat_n_pairs.append(t_1 - t_0)
            naive.fill(asset, orders)
    wall = time.perf_counter() - start
    c1 = proc.cpu_times()
    process_cpu = (c1.user + c1.system - c0.user - c0.system) / wall * 100
    counters, denials = {}, {}
    for r in ours.routes:
        for k, v in r.counters.items():
            counters[k] = counters.get(k, 0) + v
        for k, v in r.denials.items():
            denials[k] = denials.get(k, 0) + v
    measured = len(meta) - warm
    o = {"updates": measured, "latency_ms": _stats(lat_o), "latency_pairs_ms": _stats(lat_o_pairs),
         "pairs": ours.pairs - pairs0[0], "cpu_percent": cpu_o / wall * 100,
         "counters_with_warmup": counters, "denials": denials,
         "imbalance_alerts": sum(im.alert for im in ours.inventory.imbalances(0.2))}
    nv = {"updates": measured, "latency_ms": _stats(lat_n), "latency_pairs_ms": _stats(lat_n_pairs),
          "pairs": naive.pairs - pairs0[1], "cpu_percent": cpu_n / wall * 100}
    run = {"wall_s": wall, "process_cpu_percent": process_cpu, "warmup_updates": warm,
           "rss_mb": proc.memory_info().rss / 2**20}
    return o, nv, run


def unpaced(specs, meta, books, first, t0, window: int, warm: int) -> tuple[float, float]:
    """Route evaluations per second after the warm-up, each engine alone on fresh state,
    as fast as it goes."""
    ours = Ours(specs, first, t0, window)
    _warm(ours, None, meta, books, warm)
    start = time.perf_counter()
    for n in range(warm, len(meta)):
        i, venue, ts = (int(x) for x in meta[n])
        ours.clock.set(ts)
        rows = ours.update(i, venue, books[n], ts, n)
        if len(rows):
            ours.fill(i, rows)
    ours_rate = (len(meta) - warm) / (time.perf_counter() - start)
    naive = Naive(specs, first, window)
    elapsed = 0.0
    for n in range(len(meta)):
        i, venue = int(meta[n][0]), int(meta[n][1])
        book = {"bids": books[n][:2].T.tolist(), "asks": books[n][2:].T.tolist()}    # untimed
        asset = ASSETS[i][0]
        s = time.perf_counter()
        orders = naive.update(asset, "upbit" if venue == 0 else "binance", book, FX)
        if orders:
            naive.fill(asset, orders)
        if n >= warm:
            elapsed += time.perf_counter() - s
    return ours_rate, (len(meta) - warm) / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__, "a few seconds: 300 updates, a window of 10")
    ap.add_argument("--updates", type=int, help="updates replayed (default 12000, one minute at "
                                                "200/s; --quick 300)")
    ap.add_argument("--window", type=int, help="premium samples in each route's rolling mean "
                                               "(default 300, 15 s; --quick 10)")
    args = common.defaults(ap.parse_args(argv), [("updates", 12000, 300), ("window", 300, 10)])
    info = common.machine("psutil")
    print(f"  synthesising {args.updates} updates on {len(ASSETS)} routes ...", file=sys.stderr, flush=True)
    warm = (args.window + 2) * len(ASSETS)          # every route's window full after these
    specs, meta, books, first, t0 = routes_and_replay(warm + args.updates, args.window)
    print(f"  {warm} updates of warm-up, then a paced replay of "
          f"{args.updates / (2 * RATE_PER_VENUE * len(ASSETS)):.1f} s ...", file=sys.stderr, flush=True)
    ours, naive, run = paced(specs, meta, books, first, t0, args.window, warm)
    print("  unpaced replay ...", file=sys.stderr, flush=True)
    ours["evaluations_per_s"], naive["evaluations_per_s"] = unpaced(specs, meta, books, first, t0,
                                                                    args.window, warm)
    ours["rss_mb"] = naive["rss_mb"] = run["rss_mb"]
    load = common.finish(info)

    lo, ln = ours["latency_ms"], naive["latency_ms"]
    print(f"our figures (workers/strategy/routes.py, measured): {len(ASSETS)} routes, {ours['updates']} "
          f"updates in {run['wall_s']:.1f} s after {warm} of warm-up, {ours['pairs']} pairs of IOC legs")
    print(f"naive peer (a typical bot's loop, measured in this run): {naive['pairs']} pairs")
    print("seed plan target (D75-2, not measured here): avg 25 ms, p99 40 ms, >= 40 iterations/s, "
          "CPU < 10 %, RSS < 60 MB")
    rows = [["per update", "ours", "naive peer", "seed target", "ours faster by"]]
    for key, name in (("avg_ms", "latency avg ms"), ("p50_ms", "latency p50 ms"),
                      ("p95_ms", "latency p95 ms"), ("p99_ms", "latency p99 ms")):
        target = SEED_TARGET.get(key)
        rows.append([name, common.ms(lo[key]), common.ms(ln[key]), "-" if target is None else f"{target:g}",
                     f"{ln[key] / lo[key]:.1f}x"])
    lp, lnp = ours["latency_pairs_ms"], naive["latency_pairs_ms"]
    if lp["count"] and lnp["count"]:
        rows.append([f"p99 ms, updates with a pair ({lp['count']} / {lnp['count']})", common.ms(lp["p99_ms"]),
                     common.ms(lnp["p99_ms"]), "-", f"{lnp['p99_ms'] / lp['p99_ms']:.1f}x"])
    rows.append(["route evaluations/s (unpaced)", common.rate(ours["evaluations_per_s"]),
                 common.rate(naive["evaluations_per_s"]), ">= 40",
                 f"{ours['evaluations_per_s'] / naive['evaluations_per_s']:.1f}x"])
    rows.append(["CPU % at 200 updates/s", f"{ours['cpu_percent']:.2f}", f"{naive['cpu_percent']:.2f}", "< 10",
                 "-"])
    print(common.table(rows, "lr"))
    print(f"process: CPU {run['process_cpu_percent']:.1f} % over the paced pass (both engines and the "
          f"replay loop), RSS {run['rss_mb']:.1f} MB (with the replay's books in memory)")
    ok_p99 = lo["p99_ms"] <= AIMS["p99_ms"]
    ok_rate = ours["evaluations_per_s"] >= AIMS["evaluations_per_s"]
    print(f"issue 14 aims: p99 <= 1 ms: {'met' if ok_p99 else 'NOT met'} ({common.ms(lo['p99_ms'])} ms); "
          f">= 10,000 route evaluations/s: {'met' if ok_rate else 'NOT met'} "
          f"({ours['evaluations_per_s']:,.0f}/s)")
    print(load)
    common.save(args, info, {"routes": len(ASSETS), "updates": ours["updates"],
                             "rates": {"per_venue_and_asset_per_s": RATE_PER_VENUE,
                                       "total_per_s": 2 * RATE_PER_VENUE * len(ASSETS)},
                             "ours": ours, "naive_peer": naive, "process": run,
                             "seed_target": SEED_TARGET, "aims": AIMS,
                             "aims_met": {"p99_ms": ok_p99, "evaluations_per_s": ok_rate},
                             "ratios": {"p99_peer_over_ours": ln["p99_ms"] / lo["p99_ms"],
                                        "avg_peer_over_ours": ln["avg_ms"] / lo["avg_ms"],
                                        "evaluations_ours_over_peer":
                                            ours["evaluations_per_s"] / naive["evaluations_per_s"]}})
    return 0


if __name__ == "__main__":
    common.run(main)
