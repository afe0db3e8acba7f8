"""The model-signal strategy: signals in, intents out.

A pure core (numpy in, numpy out, a clock passed in): the strategy process
drives it live and a backtest drives it on a simulated clock, so both trade
by the same rules. What a model's argmax alone gets wrong, and what each rule
here is for:

* **Confidence gate and hysteresis.** The signal is the probability margin
  ``p(up) - p(down)``. A position opens only when the margin reaches
  ``enter_margin`` and closes only when it falls below ``exit_margin`` (lower):
  a margin wandering around one level would otherwise flip the position every
  bar, and at 12 bps a side the fees eat the edge.
* **Minimum holding period.** A position is held at least ``min_hold_bars``
  bars unless a stop takes it out.
* **Volatility-targeted size.** The notional is ``notional`` scaled by
  ``target_vol / vol`` (the bar's ``vol_20``, or ``atr_14 / close``), capped at
  ``max_notional``: the same risk in a quiet market as in a wild one. Both are in
  the account's currency: a KRW symbol is sized at its rate (``fx``), and a
  symbol with no rate yet opens nothing.
* **Stop-loss and take-profit** against the entry price, checked on every
  price the strategy sees (each signal's reference price, and ticks through
  `on_price`).
* **Limit entries** (``entry_order = "limit"``): an entry rests as a limit order
  ``entry_offset_bps`` better than the signal's price (post-only with
  ``entry_post_only``), and execution cancels what has not filled after
  ``entry_ttl_s``; exits stay market orders. What rests counts as asked for:
  execution's positions table carries each symbol's working quantity, so a
  resting entry is neither entered twice nor taken for a refusal. An exit while
  an entry rests cancels it (an ORDER_CANCEL intent) and sells what filled.
* **Bad data trades nothing new.** A signal flagged FLAG_GAP, FLAG_WARMUP or
  FLAG_STALE, or with a NaN or non-positive price, opens nothing; a position
  may still be closed by a stop.

Each intent's ``seq`` is derived from what caused it (the signal's ring and
sequence, or the price update for a stop), never from a counter, so that a
restarted strategy that sees the same signal again derives the same intent and
the order manager's client order id refuses to send it twice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.clock import Clock
from pipeline.config import StrategyConfig
from shm.records import (FLAG_GAP, FLAG_STALE, FLAG_WARMUP, INTENT, ORDER_CANCEL, ORDER_LIMIT, ORDER_MARKET,
                         REASON_ENTRY, REASON_EXIT, REASON_STOP_LOSS, REASON_TAKE_PROFIT, SIDE_BUY,
                         SIDE_SELL, TIF_GTC, TIF_IOC, TIF_POST_ONLY)
from workers.execution.fx import FxRates

NO_NEW_RISK = FLAG_GAP | FLAG_WARMUP | FLAG_STALE
SOURCE_BITS = 48        # intent seq = source << 48 | the cause's own sequence
STOP_SOURCE = 0xFFFF    # the source of intents from a stop on a price update
CANCEL_BIT = 1 << 47    # the cancel that goes with an exit: the exit's seq with this bit set
QTY_TOL = 1e-9          # relative: held plus working "is" what was asked within this


def volatility_columns(feature_names: list[str]) -> tuple[str | None, str | None]:
    """(vol column, atr column) the size reads: the first ``vol_N``, else the first
    ``atr_N`` (divided by the close); (None, None) sizes everything at the target."""
    vols = [c for c in feature_names if c.startswith("vol_")]
    atrs = [c for c in feature_names if c.startswith("atr_")]
    return (vols[0] if vols else None), (None if vols or not atrs else atrs[0])


def bar_volatility(rows: np.ndarray, vol_column: str | None, atr_column: str | None) -> np.ndarray:
    """Per-bar volatility of feature ``rows`` (NaN where unknown), as `volatility_columns` chose."""
    if vol_column is not None:
        return np.asarray(rows[vol_column], float)
    if atr_column is None:
        return np.full(len(rows), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return rows[atr_column] / rows["close"]


INTENT_FIELDS = ("ts_origin_ns", "ts_ns", "seq", "signal_seq", "symbol_id", "strategy_id", "side", "order_type",
                 "tif", "reason", "flags", "qty", "limit_price", "ref_price", "expire_ns")
assert INTENT_FIELDS == INTENT.names, "signals.py builds intents in INTENT's field order"


def _rows(intents: list[tuple]) -> np.ndarray:
    """INTENT records of intents as `SignalStrategy._intent` makes them (one array for a
    batch: filling records one at a time costs far more)."""
    rows = np.zeros(len(intents), INTENT)
    if intents:
        for name, values in zip(INTENT_FIELDS, zip(*intents)):
            rows[name] = values
    return rows


@dataclass
class ActsAhead:
    """Per symbol, the indexes of signals made ahead that are its (``mine``) and, by the
    direction the symbol is in (-1, 0, 1), those that might act (``acts``); ``unknown``: a
    signal of an unknown symbol (counted as bad input: it acts). See `SignalStrategy.acts_ahead`."""
    mine: list[np.ndarray]
    acts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    unknown: np.ndarray
    n: int                      # how many signals: `next_act` says this where none acts


def _first_from(idx: np.ndarray, lo: int) -> int:
    """The first of ascending ``idx`` at or after ``lo`` (a large number: none)."""
    j = int(idx.searchsorted(lo))
    return int(idx[j]) if j < len(idx) else 1 << 62


class SignalStrategy:
    """Per symbol: the direction it holds (-1, 0, 1), the entry price, the bar it
    entered on and bars held. ``on_signals`` and ``on_price`` return INTENT rows.
    ``params``: the config's [strategy], checked by its validation."""

    def __init__(self, n_symbols: int, params: StrategyConfig, clock: Clock,
                 strategy_id: int = 1, fx: FxRates | None = None):
        self.p = params
        self.fx = fx                                # sizes in the account currency (None: all in it)
        self.clock = clock
        self.strategy_id = strategy_id
        self.n = n_symbols
        self.direction = np.zeros(n_symbols, np.int8)
        self.qty = np.zeros(n_symbols)              # what the strategy asked to hold
        self.entry = np.full(n_symbols, np.nan)
        self.held_bars = np.zeros(n_symbols, np.int64)
        self.last_bar = np.full(n_symbols, -1, np.int64)
        # execution's last word per symbol: filled position and open orders (NaN: not told)
        self.held = np.full(n_symbols, np.nan)
        self.working = np.full(n_symbols, np.nan)
        self.counters = {"signals": 0, "intents": 0, "gated": 0, "held": 0, "no_new_risk": 0,
                         "stops": 0, "bad_input": 0, "reconciled": 0, "no_fx_rate": 0, "cancels": 0}

    # -- sizing ---------------------------------------------------------------------
    def size(self, price: float, vol: float) -> float:
        """Base quantity for a new position at ``price`` (in the account currency: the
        notionals are) with per-bar volatility ``vol``."""
        vol = vol if math.isfinite(vol) and vol >= 0 else self.p.target_vol     # (0: below min_vol)
        notional = min(self.p.max_notional,
                       self.p.notional * self.p.target_vol / max(vol, self.p.min_vol))
        return notional / price

    # -- inputs ---------------------------------------------------------------------
    def on_signals(self, signals: np.ndarray, vol: np.ndarray, source: int = 0,
                   positions: np.ndarray | None = None, working: np.ndarray | None = None) -> np.ndarray:
        """SIGNAL rows (in order) -> INTENT rows. ``vol``: each symbol's per-bar
        volatility by symbol id (NaN: unknown, sized at the target). ``source``: the
        index of the signal ring, part of each intent's seq. ``positions``: what is
        actually held, by symbol id (execution's positions), and ``working`` what its open
        orders may still add (signed; None: nothing rests): where the two together differ
        from what the strategy asked for (an intent refused by risk, an entry that expired
        unfilled), the strategy goes on from them."""
        out: list[tuple] = []
        if self.fx is not None:
            self.fx.update(self.clock.time_ns())
        # the signals' fields as plain values, read once (a record's field costs far more)
        cols = zip(signals["symbol_id"].tolist(), signals["ref_price"].tolist(), signals["ts_bar_ns"].tolist(),
                   signals["seq"].tolist(), signals["probs"].tolist(), signals["flags"].tolist(),
                   signals["ts_origin_ns"].tolist())
        for sid, price, bar, sig_seq, probs, flags, origin in cols:
            self.counters["signals"] += 1
            sig = (origin, sig_seq)                  # the cause: its time, its seq
            if sid >= self.n or not math.isfinite(price) or price <= 0:
                self.counters["bad_input"] += 1
                continue
            if positions is not None:
                self._reconcile(sid, float(positions[sid]), 0.0 if working is None else float(working[sid]),
                                price)
            if bar != self.last_bar[sid]:
                self.last_bar[sid] = bar
                if self.direction[sid]:
                    self.held_bars[sid] += 1
            seq = (source << SOURCE_BITS) | (sig_seq & ((1 << SOURCE_BITS) - 1))
            stop = self._stop(sid, price)
            if stop:
                out += self._close(sid, price, stop, seq, sig)
                continue
            margin = probs[2] - probs[0]
            if not math.isfinite(margin):
                self.counters["bad_input"] += 1
                continue
            d = int(self.direction[sid])
            want = 1 if margin >= self.p.enter_margin else (
                -1 if self.p.allow_short and margin <= -self.p.enter_margin else 0)
            # under the exit gate, or past the other side's entry (an exit gate below it): exit
            if d and (d * margin < self.p.exit_margin or want == -d):
                if self.held_bars[sid] < self.p.min_hold_bars:
                    self.counters["held"] += 1
                    continue
                out += self._close(sid, price, REASON_EXIT, seq, sig)
                continue                     # one exit per signal: a reversal waits a signal
            if want == 0 or want == d:
                if want == 0 and not d:
                    self.counters["gated"] += 1
                continue
            if flags & NO_NEW_RISK:
                self.counters["no_new_risk"] += 1
                continue
            factor = 1.0 if self.fx is None else float(self.fx.factor[sid])
            if not (math.isfinite(factor) and factor > 0):      # no rate yet: nothing sizes it
                self.counters["no_fx_rate"] += 1
                continue
            v = float(vol[sid]) if sid < len(vol) else math.nan
            qty = self.size(price * factor, v)
            self.direction[sid] = want
            self.qty[sid] = want * qty
            self.entry[sid] = price
            self.held_bars[sid] = 0
            out.append(self._entry(sid, want, qty, price, seq, sig))
        rows = _rows(out)
        self.counters["intents"] += len(rows)
        return rows

    def pass_over(self, signals: np.ndarray, positions: np.ndarray, working: np.ndarray,
                  bounds: np.ndarray, quiet_for: int | None = None) -> int:
        """Take the longest run of ``signals`` that certainly makes no intent, ending at one
        of ``bounds`` (ascending signal counts: where a caller's batches end), as `on_signals`
        would, one by one, with the same ``positions`` and ``working``: counted, gated where
        flat, a held symbol's new bars counted. Returns how many it took (0 to stop at once).
        It stops at the first signal that might act or do anything else: a bad one, one past
        the entry gate while flat, one at or past the exit gate or a reversal while held, a
        symbol whose stops are set and which is held, or one whose position differs from what
        was asked (its reconcile is then not a no-op). A backtest passes its quiet bars over
        this way, many at once, and `on_signals` takes the rest: the decisions are its own.
        ``quiet_for``: how many signals make nothing, when `next_act` (same positions and
        working) has just said so: not found out again."""
        if not len(signals) or not len(bounds) or (self.fx is not None and len(self.fx.sources)):
            return 0
        if quiet_for is None:
            s, good, margin = self._sound(signals)
            quiet = good & self._settled(positions, working)[s] & self._quiet_in(self.direction[s], margin)
            k = len(quiet) if quiet.all() else int(quiet.argmin())
        else:
            s, k = np.minimum(signals["symbol_id"].astype(np.intp), self.n - 1), min(quiet_for, len(signals))
        d = self.direction[s]
        k = int(bounds[bounds.searchsorted(k, side="right") - 1]) if k >= bounds[0] else 0
        if not k:
            return 0
        s, bars = s[:k], signals["ts_bar_ns"][:k].astype(np.int64)
        self.counters["signals"] += k
        self.counters["gated"] += int((d[:k] == 0).sum())
        self.held[s], self.working[s] = positions[s], working[s]          # as each reconcile sets them
        order = np.argsort(s, kind="stable")                              # per symbol, in order
        ss, bb = s[order], bars[order]
        change = np.empty(k + 1, bool)                                    # where the symbol changes
        change[0] = change[k] = True
        np.not_equal(ss[1:], ss[:-1], out=change[1:k])
        prev = np.empty(k, np.int64)
        prev[1:] = bb[:-1]
        first = change[:k]
        prev[first] = self.last_bar[ss[first]]
        counted = np.bincount(ss[bb != prev], minlength=self.n)
        self.held_bars += np.where(self.direction != 0, counted, 0)
        last = change[1:]
        self.last_bar[ss[last]] = bb[last]
        return k

    def _sound(self, signals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(symbol ids, 0 for an unknown one; whether each signal is sound: a known symbol,
        a price and a margin; each one's probability margin)."""
        sid = signals["symbol_id"].astype(np.intp)
        ok = sid < self.n
        price, probs = signals["ref_price"], signals["probs"].astype(np.float64)   # as on_signals: float64
        margin = probs[:, 2] - probs[:, 0]
        return np.where(ok, sid, 0), ok & np.isfinite(price) & (price > 0) & np.isfinite(margin), margin

    def _settled(self, positions: np.ndarray, working: np.ndarray) -> np.ndarray:
        """Per symbol: whether held plus working is what was asked (`_reconcile` does nothing)."""
        total, asked = positions[:self.n] + working[:self.n], self.qty
        return (total == asked) | (np.abs(total - asked) <= QTY_TOL * np.maximum(np.abs(total), np.abs(asked)))

    def _quiet_in(self, d: np.ndarray | int, margin: np.ndarray) -> np.ndarray:
        """Whether a sound signal of ``margin`` makes nothing for a symbol in direction ``d``
        (its stops unset): under the entry gate while flat, or at or past the exit gate
        without a reversal while held."""
        p = self.p
        flat = (d == 0) & (margin < p.enter_margin) & ~(p.allow_short & (margin <= -p.enter_margin))
        dm = d * margin
        held = (d != 0) & (dm >= p.exit_margin) & (dm > -p.enter_margin) & (not (p.stop_loss or p.take_profit))
        return flat | held

    def acts_ahead(self, signals: np.ndarray) -> "ActsAhead":
        """For signals made ahead (a backtest's, every close of its data), where each symbol's
        might act, by the direction it would be in: what `next_act` looks up."""
        _, good, margin = self._sound(signals)
        sid = signals["symbol_id"]
        mine = [np.flatnonzero(sid == i) for i in range(self.n)]
        acts = [tuple(idx[~(good[idx] & self._quiet_in(d, margin[idx]))] for d in (-1, 0, 1)) for idx in mine]
        return ActsAhead(mine, acts, np.flatnonzero(sid >= self.n), len(signals))

    def next_act(self, ahead: "ActsAhead", lo: int, positions: np.ndarray, working: np.ndarray) -> int:
        """The first of the signals of `acts_ahead` from ``lo`` on that might act now, with
        ``positions`` and ``working`` as `pass_over` takes them (their count: none): where
        `pass_over` stops at the latest. A symbol whose position is not what was asked stops
        at its next signal."""
        first = _first_from(ahead.unknown, lo)
        for i, (d, settled) in enumerate(zip(self.direction.tolist(), self._settled(positions, working).tolist())):
            first = min(first, _first_from(ahead.acts[i][d + 1] if settled else ahead.mine[i], lo))
        return first if first < ahead.n else ahead.n

    def on_price(self, symbol_id: int, price: float, seq: int, ts_origin_ns: int,
                 source: int = STOP_SOURCE) -> np.ndarray:
        """A price update (a trade): the stop-loss and take-profit of a held position.
        ``seq``: the update's own sequence (its place in the tick ring), so the intent is the
        same if a restart sees the same tick again; ``source``: the ring's (one per feed,
        counting down from STOP_SOURCE, so two feeds' ticks never make one seq)."""
        if symbol_id >= self.n or not math.isfinite(price) or price <= 0:
            self.counters["bad_input"] += 1
            return np.zeros(0, INTENT)
        stop = self._stop(symbol_id, price)
        if not stop:
            return np.zeros(0, INTENT)
        full = (source << SOURCE_BITS) | (int(seq) & ((1 << SOURCE_BITS) - 1))
        rows = _rows(self._close(symbol_id, price, stop, full, (int(ts_origin_ns), 0)))
        self.counters["intents"] += len(rows)
        return rows

    def _reconcile(self, sid: int, held: float, working: float, price: float) -> None:
        """Take what is held plus what rests as the position, if it is not what was asked for."""
        self.held[sid], self.working[sid] = held, working
        total, asked = held + working, float(self.qty[sid])
        if total == asked or abs(total - asked) <= QTY_TOL * max(abs(total), abs(asked)):
            return
        self.counters["reconciled"] += 1
        d = int(np.sign(total))
        if d != self.direction[sid]:
            self.entry[sid] = price if d else np.nan
            self.held_bars[sid] = 0
        self.direction[sid] = d
        self.qty[sid] = total

    # -- rules ------------------------------------------------------------------------
    def _stop(self, sid: int, price: float) -> int:
        """REASON_STOP_LOSS or REASON_TAKE_PROFIT if the held position's stop is hit, else 0."""
        d = int(self.direction[sid])
        if not d:
            return 0
        move = d * (price / self.entry[sid] - 1)
        if self.p.stop_loss and move <= -self.p.stop_loss:
            self.counters["stops"] += 1
            return REASON_STOP_LOSS
        if self.p.take_profit and move >= self.p.take_profit:
            self.counters["stops"] += 1
            return REASON_TAKE_PROFIT
        return 0

    def _close(self, sid: int, price: float, reason: int, seq: int, cause: tuple[int, int]) -> list[tuple]:
        """Flat: the open orders cancelled (an entry still resting), what is held sold or
        bought back. Where execution has not said what is held, what was asked for is."""
        held, working = float(self.held[sid]), float(self.working[sid])
        if not (math.isfinite(held) and math.isfinite(working)):
            held, working = float(self.qty[sid]), 0.0
        self.direction[sid] = 0
        self.qty[sid] = 0.0
        self.entry[sid] = np.nan
        self.held_bars[sid] = 0
        self.held[sid] = self.working[sid] = 0.0        # until execution says otherwise
        out = []
        if working:
            self.counters["cancels"] += 1
            out.append(self._intent(sid, 1 if working > 0 else -1, abs(working), price, reason, seq | CANCEL_BIT,
                                    cause, ORDER_CANCEL, 0))
        if held:
            out.append(self._intent(sid, -1 if held > 0 else 1, abs(held), price, reason, seq, cause))
        return out

    def _entry(self, sid: int, side: int, qty: float, price: float, seq: int, cause: tuple[int, int]) -> tuple:
        """An entry: a market order, or a limit resting ``entry_offset_bps`` better than the
        signal's price until ``entry_ttl_s`` has passed."""
        # until execution says otherwise: a market entry filled, a limit one resting unfilled
        # (a stop before the next word then cancels it rather than sell what may not be held)
        self.held[sid], self.working[sid] = (side * qty, 0.0) if self.p.entry_order != "limit" else (0.0, side * qty)
        if self.p.entry_order != "limit":
            return self._intent(sid, side, qty, price, REASON_ENTRY, seq, cause)
        return self._intent(sid, side, qty, price, REASON_ENTRY, seq, cause, ORDER_LIMIT,
                            TIF_POST_ONLY if self.p.entry_post_only else TIF_GTC,
                            price * (1 - side * self.p.entry_offset_bps / 1e4),
                            self.clock.time_ns() + int(self.p.entry_ttl_s * 1e9))

    def _intent(self, sid: int, side: int, qty: float, price: float, reason: int, seq: int,
                cause: tuple[int, int], order_type: int = ORDER_MARKET, tif: int = TIF_IOC,
                limit: float = math.nan, expire_ns: int = 0) -> tuple:
        """One INTENT's fields as a tuple, in `INTENT_FIELDS` order; ``cause``: (its origin
        time, the signal's seq or 0)."""
        return (cause[0], self.clock.time_ns(), seq, cause[1], sid, self.strategy_id,
                SIDE_BUY if side > 0 else SIDE_SELL, order_type, tif, reason, 0, qty, limit, price, expire_ns)

    # -- persistence --------------------------------------------------------------------
    def state(self) -> dict:
        """What a restart needs, JSON-able (the journal keeps it)."""
        held = np.flatnonzero(self.direction)
        return {"positions": {int(s): {"direction": int(self.direction[s]), "qty": float(self.qty[s]),
                                       "entry": float(self.entry[s]),
                                       "held_bars": int(self.held_bars[s]),
                                       "last_bar": int(self.last_bar[s])} for s in held}}

    def restore(self, state: dict) -> None:
        for key, pos in state.get("positions", {}).items():
            s = int(key)
            if s >= self.n:
                raise ValueError(f"strategy state names symbol {s}, this run has {self.n}")
            self.direction[s] = int(pos["direction"])
            self.qty[s] = float(pos["qty"])
            self.entry[s] = float(pos["entry"])
            self.held_bars[s] = int(pos["held_bars"])
            self.last_bar[s] = int(pos["last_bar"])
