"""Record schemas exchanged between processes.

Every record is a numpy structured dtype padded to a multiple of 64 bytes (one
cache line) so that rings can copy records through raw uint64 views. Every
record carries ``ts_origin_ns``: the receive time of the tick that caused it,
so any stage can measure tick-to-here latency.
"""
from __future__ import annotations

import numpy as np

CACHE_LINE = 64

# flags shared by all records
FLAG_GAP = 1 << 0        # data was lost before this record (lapped reader, reconnect)
FLAG_TIMER_CLOSE = 1 << 1  # a bar closed on the clock, not on a tick of the next bar
FLAG_RECOVERED = 1 << 2  # re-emitted by a restarted worker
FLAG_ALERT = 1 << 3      # a features row that raised the desk alert (volatility with a volume surge)
# set by the model stage on signals (one bit space with the flags above)
FLAG_PARTIAL = 1 << 4    # some ensemble members had no input yet (LSTM window filling)
FLAG_WARMUP = 1 << 5     # features still in warm-up (NaN inputs): HOLD, no model ran
FLAG_STALE = 1 << 6      # the (remote) model stage did not answer: HOLD, no model ran

# tick kinds
TICK_TRADE = 1
TICK_QUOTE = 2
TICK_GAP = 3  # a marker record: the feed lost data (no price fields)

# sides and actions
SIDE_BUY = 1
SIDE_SELL = -1
ACTION_SELL = -1
ACTION_HOLD = 0
ACTION_BUY = 1


def _padded(name: str, fields: list[tuple]) -> np.dtype:
    """Build a dtype and pad its itemsize up to a multiple of 64 bytes."""
    base = np.dtype(fields)
    size = -(-base.itemsize // CACHE_LINE) * CACHE_LINE
    dt = np.dtype({"names": base.names, "formats": [base.fields[n][0] for n in base.names],
                   "offsets": [base.fields[n][1] for n in base.names], "itemsize": size})
    return dt


TICK = _padded("tick", [
    ("ts_origin_ns", "<i8"),    # local receive time
    ("ts_exchange_ns", "<i8"),  # venue's event time
    ("seq", "<u8"),             # feed's own sequence number (trade id or counter)
    ("symbol_id", "<u4"),
    ("kind", "u1"),
    ("side", "i1"),
    ("flags", "<u2"),
    ("price", "<f8"),
    ("size", "<f8"),
    ("bid", "<f8"),
    ("ask", "<f8"),
])

BAR = _padded("bar", [
    ("ts_origin_ns", "<i8"),
    ("ts_open_ns", "<i8"),
    ("symbol_id", "<u4"),
    ("flags", "<u2"),
    ("n_ticks", "<u2"),
    ("open", "<f8"),
    ("high", "<f8"),
    ("low", "<f8"),
    ("close", "<f8"),
    ("volume", "<f8"),
])

MODEL_MOMENTUM, MODEL_ENSEMBLE = 0, 1   # SIGNAL model_id: which model stage made it
SIGNAL_CLASSES = 3  # down / flat / up
SIGNAL_MEMBERS = 4  # ensemble members whose own outputs a signal carries

SIGNAL = _padded("signal", [
    ("ts_origin_ns", "<i8"),
    ("ts_bar_ns", "<i8"),       # open time of the bar the signal was computed on
    ("seq", "<u8"),             # writer's sequence, used by execution to be idempotent
    ("symbol_id", "<u4"),
    ("action", "i1"),
    ("model_id", "u1"),
    ("flags", "<u2"),
    ("confidence", "<f4"),
    ("probs", "<f4", (SIGNAL_CLASSES,)),
    ("ref_price", "<f8"),
    # each ensemble member's own probabilities, in the ensemble's member order
    # (the model worker's stats list the names); zeros where a member did not run
    ("member_probs", "<f4", (SIGNAL_MEMBERS, SIGNAL_CLASSES)),
    ("model_versions", "<u2", (SIGNAL_MEMBERS,)),  # registry version per member; 0 = did not run
])

# order types, times in force and the reasons a strategy gives (INTENT, ORDER)
ORDER_MARKET = 1
ORDER_LIMIT = 2
ORDER_CANCEL = 3         # an INTENT only: cancel the strategy's open orders of the symbol
TIF_GTC = 1              # good till cancelled
TIF_IOC = 2              # immediate or cancel: what does not fill at once is cancelled
TIF_FOK = 3              # fill or kill: all at once or nothing
TIF_POST_ONLY = 4        # a maker order: rejected if it would take liquidity
LIQUIDITY_TAKER = 1      # FILL.liquidity: the fill took resting liquidity ...
LIQUIDITY_MAKER = 2      # ... or was resting liquidity taken by another
REASON_ENTRY = 1
REASON_EXIT = 2
REASON_STOP_LOSS = 3
REASON_TAKE_PROFIT = 4
REASON_REBALANCE = 5     # a change in size (volatility target) of a held position
REASON_FLATTEN = 6       # closing everything (a halt, a manual command)

INTENT = _padded("intent", [
    ("ts_origin_ns", "<i8"),
    ("ts_ns", "<i8"),           # when the strategy emitted it (its clock)
    ("seq", "<u8"),             # the strategy's intent sequence: the client order id's root
    ("signal_seq", "<u8"),      # the signal that caused it (0: a tick, a timer, a command)
    ("symbol_id", "<u4"),
    ("strategy_id", "<u2"),
    ("side", "i1"),             # SIDE_BUY / SIDE_SELL
    ("order_type", "u1"),       # ORDER_MARKET / ORDER_LIMIT
    ("tif", "u1"),              # TIF_*
    ("reason", "u1"),           # REASON_*
    ("flags", "<u2"),
    ("qty", "<f8"),             # base-asset quantity, > 0
    ("limit_price", "<f8"),     # NaN for a market order
    ("ref_price", "<f8"),       # the price the strategy saw (last trade or mid)
    ("expire_ns", "<i8"),       # a resting limit's end: execution cancels what is left (0: none)
])

ORDER = _padded("order", [
    ("ts_origin_ns", "<i8"),
    ("ts_ns", "<i8"),
    ("order_id", "<u8"),
    ("intent_seq", "<u8"),      # the intent this order acts on (restart dedup)
    ("symbol_id", "<u4"),
    ("side", "i1"),
    ("order_type", "u1"),       # 1 = market
    ("flags", "<u2"),
    ("price", "<f8"),           # reference price when placed
    ("qty", "<f8"),
])

FILL = _padded("fill", [
    ("ts_origin_ns", "<i8"),
    ("ts_ns", "<i8"),
    ("order_id", "<u8"),
    ("symbol_id", "<u4"),
    ("side", "i1"),
    ("liquidity", "u1"),        # LIQUIDITY_TAKER / LIQUIDITY_MAKER
    ("flags", "<u2"),
    ("price", "<f8"),
    ("qty", "<f8"),
    ("fee", "<f8"),
    ("position", "<f8"),        # position after this fill
])


BAR_FIELDS = ("open", "high", "low", "close", "volume")


def features_dtype(names: list[str]) -> np.dtype:
    """Feature row: the closed bar, then one float64 per named feature, so one
    row is all a model or a recorder needs about that bar."""
    fields = [
        ("ts_origin_ns", "<i8"),
        ("ts_bar_ns", "<i8"),
        ("symbol_id", "<u4"),
        ("flags", "<u2"),
        ("n_ticks", "<u2"),
    ] + [(n, "<f8") for n in BAR_FIELDS] + [(n, "<f8") for n in names]
    return _padded("features", fields)


SCHEMAS: dict[str, np.dtype] = {"ticks": TICK, "bars": BAR, "signals": SIGNAL,
                                "intents": INTENT, "orders": ORDER, "fills": FILL}


def schema_id(dtype: np.dtype) -> int:
    """A stable 64-bit fingerprint of a dtype, stored in segment headers to
    refuse attaching with a different schema."""
    import zlib
    text = repr([(n, dtype.fields[n][0].str, dtype.fields[n][0].shape, dtype.fields[n][1])
                 for n in dtype.names]) + str(dtype.itemsize)
    return zlib.crc32(text.encode()) | (dtype.itemsize << 32)


def to_dicts(records: np.ndarray, symbol_name=None) -> list[dict]:
    """Decode records into plain dicts (for the tap and tests)."""
    out = []
    for rec in records:
        d = {}
        for name in records.dtype.names:
            v = rec[name]
            if isinstance(v, np.ndarray):
                v = v.tolist()          # nested lists of Python floats / ints (any shape)
            elif isinstance(v, np.floating):
                v = float(v)
            elif isinstance(v, np.integer):
                v = int(v)
            d[name] = v
        if symbol_name is not None and "symbol_id" in d:
            d["symbol"] = symbol_name(d["symbol_id"])
        out.append(d)
    return out

POSITION = _padded("position", [
    ("ts_ns", "<i8"),
    ("last_order_id", "<u8"),   # the newest fill applied to this row (restart replays later ones)
    ("symbol_id", "<u4"),
    ("flags", "<u2"),
    ("n_fills", "<u2"),
    ("qty", "<f8"),
    ("avg_price", "<f8"),
    ("realized_pnl", "<f8"),
    ("fees", "<f8"),
    ("working", "<f8"),         # signed quantity of the symbol's open orders not yet filled
])
SCHEMAS["positions"] = POSITION

# the latest order book of a symbol (the ``books`` table, one row per symbol id): written by
# a feed whose channel carries depth (Binance ``depth``, Upbit ``orderbook``), read by the
# route trader. Levels best first; ``n_bids``/``n_asks`` are how many are filled (the rest NaN).
BOOK_LEVELS = 10
BOOK = _padded("book", [
    ("ts_origin_ns", "<i8"),    # local receive time of the message that made this book
    ("ts_exchange_ns", "<i8"),  # the venue's time of the book
    ("seq", "<u8"),             # the venue's update id (Binance), else 0
    ("symbol_id", "<u4"),
    ("n_bids", "<u2"),
    ("n_asks", "<u2"),
    ("bid_px", "<f8", (BOOK_LEVELS,)),
    ("bid_sz", "<f8", (BOOK_LEVELS,)),
    ("ask_px", "<f8", (BOOK_LEVELS,)),
    ("ask_sz", "<f8", (BOOK_LEVELS,)),
])
SCHEMAS["books"] = BOOK
