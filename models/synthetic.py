"""The default ensemble: trained at first start on the synthetic feed's own market.

`pipeline start` on the default config serves the full ensemble with no network
and no data files. When ``[model] artifacts`` holds no ensemble and ``[model]
bootstrap = "synthetic"``, `bootstrap` generates ``bootstrap_bars`` bars of the
synthetic market (`SyntheticMarket`, the very generator the synthetic feed runs,
with its symbols, start price and tick rate, so the bars have the statistics the
live feed will produce, on a seed of their own so the live run is not the
training history) at the config's ``[indicators] bar_seconds``,
trains every configured model on the first symbol's bars with
`models.train.train` (progress bar, walk-forward report) and keeps the result in
the registry; later starts load it.

The training runs in a child process (multiprocessing, spawn), so TensorFlow
and the training's memory and threads never live in the caller, which is the
supervisor of `pipeline start`: it returns the report, its progress bar goes
to the inherited stderr and the lines around it to ``out`` from the caller.
A user mistake in the child is raised again in the caller as the same class
(TrainError, ArtifactError, ConfigurationError) with its one-line message.
Ctrl-C (or any exception in the caller) ends the child and removes what it had
saved: the member versions it made before the ensemble, and its half-written
temporary directories (a registry version appears by a rename of a complete
directory, so nothing else is ever half there). The child ignores SIGINT, so a
Ctrl-C at the terminal, which reaches the whole process group, prints no
traceback of it; it exits by itself if the caller dies.

Artifacts made this way record ``training.data = "synthetic:..."``, their bar
length and ``market.synthetic = true``. If the indicators or the bar length
change, the next start trains a new version for them (an older synthetic one
that does not record its bar length is replaced as well); artifacts the user
trained (`pipeline train`) are never replaced: a mismatch with those stays the
model worker's one-line configuration error.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.config import Config, FeedConfig, feature_names
from shm.records import SIDE_BUY, SIDE_SELL, TICK, TICK_QUOTE, TICK_TRADE

SOURCE = "synthetic"                   # prefix of training.data in bootstrapped artifacts
SEED_OFFSET = 1_000_003                # training history != the live feed's path (same feed seed)
START_MS = 1_767_225_600_000           # 2026-01-01 00:00 UTC: the generated history's first bar
BATCHES_PER_BAR = 10
REGIME_TICKS = 4000     # mean ticks of one symbol between drift regime switches
STOP_WAIT_S = 5.0       # the training child's time to unwind after SIGTERM before SIGKILL


# about where each asset traded in 2024-2025, in US dollars, and what a quote currency is
# worth in them: a synthetic BTC/USDT should look like BTC, not like a $148 coin
USD_PRICE = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0, "BNB": 550.0, "XRP": 0.6, "ADA": 0.5,
             "DOGE": 0.15, "LTC": 80.0, "DOT": 6.0, "AVAX": 30.0, "LINK": 15.0, "TRX": 0.15}
USD_VALUE = {"USDT": 1.0, "USDC": 1.0, "USD": 1.0, "BUSD": 1.0, "FDUSD": 1.0, "EUR": 1.08, "KRW": 1 / 1350,
             "JPY": 1 / 150, "BTC": 60_000.0, "ETH": 3_000.0}
UNKNOWN_PRICE = 100.0


def start_prices(feed: FeedConfig) -> float | np.ndarray:
    """Where each of a synthetic feed's symbols starts: ``start_price`` when set, else
    (0) a plausible price per symbol from its base and quote (UNKNOWN_PRICE otherwise)."""
    if feed.start_price > 0:
        return feed.start_price
    out = []
    for symbol in feed.symbols:
        base, _, quote = symbol.upper().partition("/")
        usd, value = USD_PRICE.get(base), USD_VALUE.get(quote)
        out.append(usd / value if usd is not None and value is not None else UNKNOWN_PRICE)
    return np.array(out)


class SyntheticMarket:
    """Vectorised random market for a fixed set of symbols. ``start_price`` is one price
    for all (each symbol starts within x0.5..x2 of it) or one per symbol (each within
    x0.8..x1.25 of its own)."""

    def __init__(self, n_symbols: int, start_price: float | np.ndarray, seed: int):
        self.rng = np.random.default_rng(seed)
        n = n_symbols
        lo, hi = (0.5, 2.0) if np.ndim(start_price) == 0 else (0.8, 1.25)
        self.logp = np.log(start_price * self.rng.uniform(lo, hi, n))
        self.var = np.full(n, 1e-8)          # per-tick variance of log returns
        self.omega, self.alpha, self.beta = 2e-10, 0.08, 0.90
        self.drift = np.zeros(n)
        self.trade_seq = 0

    def make(self, k: int, symbol_ids: np.ndarray) -> np.ndarray:
        """k ticks for symbols drawn uniformly from ``symbol_ids`` (registry ids)."""
        rng = self.rng
        n = len(symbol_ids)
        local = rng.integers(0, n, k)
        # regime switch: a symbol picks a new drift every REGIME_TICKS of its ticks on
        # average, whatever the batch size (so generated history matches the live feed)
        flip = rng.random(n) < -np.expm1(-(k / n) / REGIME_TICKS)
        self.drift[flip] = rng.normal(0.0, 5e-6, flip.sum())
        z = rng.standard_normal(k) * np.sqrt(self.var[local]) + self.drift[local]
        # per-symbol cumulative sum of returns within the batch
        order = np.argsort(local, kind="stable")
        ls, zs = local[order], z[order]
        cs = np.cumsum(zs)
        starts = np.r_[0, np.flatnonzero(np.diff(ls)) + 1]
        counts = np.diff(np.r_[starts, k])
        cs -= np.repeat(cs[starts] - zs[starts], counts)
        logp = self.logp[ls] + cs
        ends = starts + counts - 1
        touched = ls[starts]
        self.logp[touched] = logp[ends]
        last_ret = zs[ends]
        self.var[touched] = self.omega + self.alpha * last_ret ** 2 + self.beta * self.var[touched]
        self.var = np.clip(self.var, 1e-10, 1e-4)

        out = np.zeros(k, TICK)
        price = np.empty(k)
        price[order] = np.exp(logp)
        half_spread = price * (0.5e-4 + 5.0 * np.sqrt(self.var[local]))
        is_trade = rng.random(k) < 0.75
        out["symbol_id"] = np.asarray(symbol_ids)[local]
        out["kind"] = np.where(is_trade, TICK_TRADE, TICK_QUOTE)
        out["side"] = np.where(rng.random(k) < 0.5, SIDE_BUY, SIDE_SELL)
        out["bid"] = price - half_spread
        out["ask"] = price + half_spread
        out["price"] = np.where(out["side"] == SIDE_BUY, out["ask"], out["bid"])
        out["size"] = np.round(rng.lognormal(-1.0, 1.0, k), 6)
        out["seq"] = self.trade_seq + np.arange(1, k + 1)
        self.trade_seq += k
        return out


def synthetic_trades(feed: FeedConfig, bar_seconds: float, bars: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(symbol index, bar index, price, size) of every trade of ``feed``'s synthetic
    market over ``bars`` bars, in time order. Tick times are spread evenly at
    ``feed.ticks_per_s`` over all the feed's symbols; the market makes them in
    BATCHES_PER_BAR batches per bar."""
    n = len(feed.symbols)
    market = SyntheticMarket(n, start_prices(feed), seed)
    ids = np.arange(n)
    ticks_per_bar = feed.ticks_per_s * bar_seconds
    total = int(round(ticks_per_bar * bars))
    batch = max(1, int(round(ticks_per_bar / BATCHES_PER_BAR)))
    parts: list[tuple[np.ndarray, ...]] = []
    emitted = 0
    while emitted < total:
        k = min(batch, total - emitted)
        t = market.make(k, ids)
        sel = np.flatnonzero(t["kind"] == TICK_TRADE)
        parts.append((t["symbol_id"][sel].astype(np.int64),
                      ((emitted + sel) / ticks_per_bar).astype(np.int64),
                      t["price"][sel], t["size"][sel]))
        emitted += k
    sym, bar, price, size = (np.concatenate(cols) for cols in zip(*parts))
    return sym, bar, price, size


def synthetic_candles(feed: FeedConfig, bar_seconds: float, bars: int, seed: int,
                      symbol: int = 0) -> pa.Table:
    """OHLCV bars of one symbol of ``feed``'s synthetic market, built from its trades
    as the indicator shards build live bars (trades only; a bar without trades is absent)."""
    n = len(feed.symbols)
    if not 0 <= symbol < n:
        raise ValueError(f"symbol index {symbol} outside the feed's {n} symbols")
    sym, bar, price, size = synthetic_trades(feed, bar_seconds, bars, seed)
    mine = sym == symbol
    bar, price, size = bar[mine], price[mine], size[mine]
    first = np.r_[0, np.flatnonzero(np.diff(bar)) + 1]
    last = np.r_[first[1:] - 1, len(bar) - 1]
    return pa.table({
        "timestamp_ms": START_MS + np.round(bar[first] * bar_seconds * 1e3).astype(np.int64),
        "open": price[first], "high": np.maximum.reduceat(price, first),
        "low": np.minimum.reduceat(price, first), "close": price[last],
        "volume": np.add.reduceat(size, first)})


def _synthetic_feed(cfg: Config) -> FeedConfig:
    """The config's first synthetic feed, or the default synthetic feed when it has none."""
    return next((f for f in cfg.feeds if f.kind == "synthetic"), FeedConfig())


def needs_bootstrap(cfg: Config) -> str | None:
    """Why `bootstrap` would train now (a sentence), or None when it would not."""
    from models.registry import ENSEMBLE, ArtifactError, Registry, bar_text, same_bars
    m = cfg.model
    if m.kind != "ensemble" or m.bootstrap != SOURCE:
        return None
    registry = Registry(m.artifacts)
    if not registry.versions(ENSEMBLE):
        return f"no trained ensemble in {registry.root}"
    try:
        _, meta = registry.load(ENSEMBLE, verify=False)
    except ArtifactError:
        return None                            # the model worker reports it
    if not str(meta.get("training", {}).get("data", "")).startswith(SOURCE):
        return None                            # the user's: never replaced
    if list(meta.get("feature_names", [])) != feature_names(cfg):
        return (f"the synthetic ensemble in {registry.root} was trained for other indicators "
                f"({', '.join(meta.get('feature_names', []))})")
    bar_s = cfg.indicators.bar_seconds
    trained = meta.get("bar_seconds")
    if not isinstance(trained, (int, float)) or isinstance(trained, bool):
        return (f"the synthetic ensemble in {registry.root} does not record its bar length "
                f"(made by an older tickpipe)")
    if not same_bars(trained, bar_s):
        return (f"the synthetic ensemble in {registry.root} was trained on {bar_text(trained)} bars "
                f"and this config closes {bar_text(bar_s)} bars")
    return None


def bootstrap(cfg: Config, progress: bool = True, out=sys.stdout) -> dict | None:
    """Train the ensemble on synthetic history when `needs_bootstrap` says so, in a
    child process; the training report, or None when nothing was trained."""
    why = needs_bootstrap(cfg)
    if why is None:
        return None
    m = cfg.model
    feed = _synthetic_feed(cfg)
    bar_s = cfg.indicators.bar_seconds
    print(f"{why}: training {', '.join(m.models)} on {m.bootstrap_bars} bars of {bar_s:g} s of the "
          f"synthetic market ({feed.symbols[0]}); done once, kept in {Path(m.artifacts)}", file=out,
          flush=True)
    report = _train_in_child(cfg, progress)
    from models.train import format_report
    print(format_report(report), file=out, flush=True)
    return report


def _train(cfg: Config, progress: bool) -> dict:
    """The training itself (run in the child)."""
    from models.train import train
    m = cfg.model
    feed = _synthetic_feed(cfg)
    bar_s = cfg.indicators.bar_seconds
    seed = feed.seed + SEED_OFFSET + m.seed
    table = synthetic_candles(feed, bar_s, m.bootstrap_bars, seed)
    source = f"{SOURCE}:{feed.symbols[0]},seed={seed},bars={m.bootstrap_bars},bar_s={bar_s:g}"
    symbol = feed.symbols[0]
    market = {"venue": feed.venue_name, "symbol": symbol, "quote": symbol.partition("/")[2] or None,
              "synthetic": True}
    return train(table, cfg, m.artifacts, progress=progress, source=source, bar_seconds=bar_s,
                 market=market)


# -- the child process ---------------------------------------------------------------
def _user_errors() -> dict[str, type]:
    """The errors a user can cause in training, by name: raised again in the caller."""
    from models.registry import ArtifactError
    from models.train import TrainError
    from pipeline.errors import ConfigurationError
    return {c.__name__: c for c in (TrainError, ArtifactError, ConfigurationError)}


class BootstrapError(RuntimeError):
    """The training child failed on something that is not a user mistake (a bug)."""


class _Stopped(BaseException):
    """SIGTERM from the caller: unwind (registry temporaries removed, semaphores released)."""


def _child_main(conn, cfg: Config, progress: bool, parent_pid: int) -> None:
    """Entry point of the training child: trains and sends ("ok", report) or
    ("error", class name, message) through ``conn``; SIGTERM ends it quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the caller handles Ctrl-C and ends us
    _stop_on_sigterm()

    def orphaned() -> None:                           # the caller died: stop training for nobody
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(3)
    threading.Thread(target=orphaned, name="bootstrap-parent-watch", daemon=True).start()
    try:
        report = _train(cfg, progress)
        msg = ("ok", report)
    except _Stopped:
        conn.close()
        return
    except BaseException as e:                        # noqa: BLE001 - everything goes to the caller
        if type(e).__name__ not in _user_errors():
            traceback.print_exc()                     # a bug: its traceback, once, on stderr
        msg = ("error", type(e).__name__, str(e))
    try:
        conn.send(msg)
    finally:
        conn.close()


def _stop_on_sigterm() -> None:
    """SIGTERM raises _Stopped in the main thread, to unwind. Where it lands inside a
    ``__del__`` (TensorFlow's, in a collection), Python swallows it there and prints it as
    ignored: then it is asked for again, to land in plain code, and nothing is printed."""
    def stopped(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise _Stopped()

    def unraisable(u) -> None:
        if isinstance(u.exc_value, _Stopped):    # once out of here (10 ms), in plain code
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            return
        sys.__unraisablehook__(u)
    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGALRM, stopped)
    sys.unraisablehook = unraisable


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored meanwhile (main thread only): a process started now inherits
    the ignored disposition from its first instruction on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _train_in_child(cfg: Config, progress: bool) -> dict:
    """Run `_train` in a spawned child; its report, or its error raised here. On any
    exception here (KeyboardInterrupt included) the child is ended and what it saved
    is removed before the exception goes on."""
    import multiprocessing as mp
    from models.registry import ENSEMBLE, Registry
    registry = Registry(cfg.model.artifacts)
    names = list(dict.fromkeys([*cfg.model.models, ENSEMBLE]))
    before = {name: set(registry.versions(name)) for name in names}
    existed = {p for p in [registry.root, *(registry.root / n for n in names)] if p.exists()}
    report_file = registry.root / "report.json"
    old_report = report_file.read_bytes() if report_file.is_file() else None

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, cfg, progress, os.getpid()),
                       name="tickpipe-bootstrap", daemon=False)
    sys.stdout.flush()
    sys.stderr.flush()
    done = False
    try:
        with _sigint_ignored():
            proc.start()
        send.close()
        msg = None
        while True:
            if recv.poll(0.25):
                try:
                    msg = recv.recv()
                except EOFError:
                    msg = None
                break
            if not proc.is_alive() and not recv.poll(0):
                break
        proc.join()
        if msg is None:
            code = proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            raise _user_errors()["TrainError"](f"the training process ended without a result ({how}); "
                                               "nothing was kept")
        if msg[0] == "ok":
            done = True
            return msg[1]
        _, kind, text = msg
        cls = _user_errors().get(kind)
        if cls is not None:
            raise cls(text)
        raise BootstrapError(f"training the synthetic ensemble failed: {kind}: {text} "
                             "(the traceback above is the training process's)")
    finally:
        with _sigint_ignored():                       # a second Ctrl-C does not cut the cleanup short
            if proc.is_alive():
                proc.terminate()
                proc.join(STOP_WAIT_S)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            recv.close()
            if not done:
                _discard(registry, names, before, existed, proc.pid, report_file, old_report)


def _discard(registry, names: list[str], before: dict, existed: set, child_pid: int | None,
             report_file: Path, old_report: bytes | None) -> None:
    """Remove what an unfinished bootstrap saved: versions made since it began (its
    own: their training data is synthetic), its temporary directories, report.json
    as it was, and folders that did not exist before."""
    import json
    from models.registry import METADATA
    for name in names:
        d = registry.root / name
        for v in sorted(set(registry.versions(name)) - before[name]):
            path = d / str(v)
            try:
                data = json.loads((path / METADATA).read_text()).get("training", {}).get("data", "")
            except (OSError, ValueError, AttributeError):
                data = SOURCE
            if str(data).startswith(SOURCE):
                shutil.rmtree(path, ignore_errors=True)
        if child_pid is not None and d.is_dir():
            for tmp in d.glob(f".tmp-{child_pid}-*"):
                shutil.rmtree(tmp, ignore_errors=True)
    if old_report is not None:
        report_file.write_bytes(old_report)
    elif report_file.exists():
        report_file.unlink()
    for path in [*(registry.root / n for n in names), registry.root]:
        if path not in existed and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
