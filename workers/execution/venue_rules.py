"""Venue rules checked before an order is sent: tick size, lot step, minimum and
maximum quantity and notional. Pure: rules in, a rounded order or a denial out.

An intent the venue would refuse is denied here, with a reason, rather than sent
and rejected: a reject costs a request, a rate-limit slot and a journal entry.
Rounding only ever moves an order to the safe side of what was asked: a quantity
floors to the lot step (never more than asked), a buy limit price rounds down and
a sell limit price up (never a worse price than asked).

Arithmetic is decimal: a float is read through its shortest text (``repr``) and
divided into whole steps; a value within ``REL_TOL`` of a step multiple *is* that
multiple, so float noise (0.1 + 0.2 = 0.30000000000000004) never moves an order a
whole step. Results are ``Decimal`` quantized to the step, so ``str`` is the text
the venue wants and ``float`` what a record holds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Iterable, NamedTuple

from shm.records import ORDER_LIMIT, ORDER_MARKET, SIDE_BUY, SIDE_SELL

# a value this close (relative) to a step multiple is that multiple: far above the
# error of a few float operations (~1e-16 each), far below any price or size that
# means something (one part in a trillion)
REL_TOL = Decimal("1e-12")

# denial codes
BAD_INPUT = "BAD_INPUT"                    # NaN, infinity, unknown side or type
NOT_TRADING = "NOT_TRADING"                # the venue lists the symbol but does not trade it now
QTY_NOT_POSITIVE = "QTY_NOT_POSITIVE"
QTY_BELOW_MIN = "QTY_BELOW_MIN"            # includes a quantity that floors to zero lots
QTY_ABOVE_MAX = "QTY_ABOVE_MAX"
PRICE_NOT_POSITIVE = "PRICE_NOT_POSITIVE"
PRICE_BELOW_MIN = "PRICE_BELOW_MIN"
PRICE_ABOVE_MAX = "PRICE_ABOVE_MAX"
NO_TICK_RULE = "NO_TICK_RULE"              # no known tick for this price (an uncaptured band)
NOTIONAL_BELOW_MIN = "NOTIONAL_BELOW_MIN"
NOTIONAL_ABOVE_MAX = "NOTIONAL_ABOVE_MAX"


@dataclass(frozen=True)
class SymbolRules:
    """One symbol's order rules. ``None`` (or zero minimums) means no such rule.
    A price-dependent tick (Upbit KRW) is ``tick_table``: (lower bound, tick) pairs,
    highest bound first; a price uses the first band whose bound it reaches, and a
    band with tick ``None`` is one whose tick is not known (orders there are denied)."""
    symbol: str
    lot_step: Decimal | None
    tick_size: Decimal | None = None
    tick_table: tuple[tuple[Decimal, Decimal | None], ...] = ()
    min_qty: Decimal = Decimal(0)
    max_qty: Decimal | None = None
    market_max_qty: Decimal | None = None      # Binance MARKET_LOT_SIZE maxQty
    min_price: Decimal = Decimal(0)
    max_price: Decimal | None = None
    min_notional: Decimal = Decimal(0)
    max_notional: Decimal | None = None
    min_notional_market: bool = True           # the minimum applies to market orders too
    max_notional_market: bool = True
    trading: bool = True

    def tick_at(self, price: Decimal) -> Decimal | None:
        """The tick a limit price must be a multiple of (None: unknown)."""
        if self.tick_table:
            for bound, tick in self.tick_table:
                if price >= bound:
                    return tick
            return None
        return self.tick_size


@dataclass(frozen=True)
class Denial:
    """Why an intent cannot become a valid order (code: one of the constants above)."""
    code: str
    reason: str


class RoundedOrder(NamedTuple):
    """A valid order: quantity and limit price (None for a market order)."""
    qty: Decimal
    price: Decimal | None


def to_decimal(x) -> Decimal | None:
    """A float/str/int as a finite Decimal through its shortest text; None if not finite."""
    try:
        d = x if isinstance(x, Decimal) else Decimal(repr(float(x)) if not isinstance(x, str) else x)
    except (InvalidOperation, TypeError, ValueError):
        return None
    return d if d.is_finite() else None


def snap(value: Decimal, step: Decimal | None, rounding: str) -> Decimal:
    """``value`` as a whole number of ``step``s, rounded ``ROUND_FLOOR`` or ``ROUND_CEILING``
    unless it is within REL_TOL of a multiple; quantized to the step's digits."""
    if step is None or step <= 0:
        return value
    n = value / step
    nearest = n.to_integral_value(ROUND_HALF_EVEN)
    if abs(n - nearest) <= REL_TOL * max(abs(nearest), Decimal(1)):
        n = nearest
    else:
        n = n.to_integral_value(rounding)
    return (n * step).quantize(step) if step.as_tuple().exponent < 0 else n * step


def _is_nan(x) -> bool:
    """None or a float NaN: the INTENT's way of saying 'no limit price'."""
    if x is None:
        return True
    if isinstance(x, (str, Decimal)):
        return False
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def _on_tick(price: Decimal, rules: SymbolRules) -> bool:
    tick = rules.tick_at(price)
    return tick is not None and snap(price, tick, ROUND_FLOOR) == price


def round_order(rules: SymbolRules, side: int, qty, limit_price, ref_price,
                order_type: int | None = None) -> RoundedOrder | Denial:
    """The order the venue will take for this intent, or why there is none. A NaN
    ``limit_price`` is a market order unless ``order_type`` says otherwise; a market
    order's notional is checked at ``ref_price`` (the price the strategy saw)."""
    try:
        return _round_order(rules, side, qty, limit_price, ref_price, order_type)
    except InvalidOperation:                   # a value past 28 digits of steps: absurd
        return Denial(BAD_INPUT, f"quantity {qty!r} or price {limit_price!r} is out of any range")


def _round_order(rules: SymbolRules, side: int, qty, limit_price, ref_price,
                 order_type: int | None) -> RoundedOrder | Denial:
    if side not in (SIDE_BUY, SIDE_SELL):
        return Denial(BAD_INPUT, f"side {side!r} is neither buy nor sell")
    q = to_decimal(qty)
    if q is None:
        return Denial(BAD_INPUT, f"quantity {qty!r} is not a finite number")
    lim_is_nan = _is_nan(limit_price)
    if order_type is None:
        order_type = ORDER_MARKET if lim_is_nan else ORDER_LIMIT
    if order_type not in (ORDER_MARKET, ORDER_LIMIT):
        return Denial(BAD_INPUT, f"order type {order_type!r} is unknown")
    if order_type == ORDER_MARKET and not lim_is_nan:
        return Denial(BAD_INPUT, f"a market order carries a limit price {limit_price!r}")
    if not rules.trading:
        return Denial(NOT_TRADING, f"{rules.symbol} is not trading")
    if q <= 0:
        return Denial(QTY_NOT_POSITIVE, f"quantity {q} is not positive")

    rq = snap(q, rules.lot_step, ROUND_FLOOR)
    if rq <= 0 or rq < rules.min_qty:
        return Denial(QTY_BELOW_MIN, f"quantity {q} floors to {rq} lots of {rules.lot_step}, "
                                     f"below the minimum {rules.min_qty}")
    max_qty = rules.max_qty                     # a market order meets both caps: the lower wins
    if order_type == ORDER_MARKET and rules.market_max_qty is not None:
        max_qty = rules.market_max_qty if max_qty is None else min(max_qty, rules.market_max_qty)
    if max_qty is not None and rq > max_qty:
        return Denial(QTY_ABOVE_MAX, f"quantity {rq} is above the maximum {max_qty}")

    if order_type == ORDER_MARKET:
        ref = to_decimal(ref_price)
        if ref is None or ref <= 0:
            return Denial(BAD_INPUT, f"a market order needs a positive reference price, got {ref_price!r}")
        notional = rq * ref
        if rules.min_notional_market and notional < rules.min_notional:
            return Denial(NOTIONAL_BELOW_MIN, f"notional {notional} at reference price {ref} is below "
                                              f"the minimum {rules.min_notional}")
        if rules.max_notional_market and rules.max_notional is not None and notional > rules.max_notional:
            return Denial(NOTIONAL_ABOVE_MAX, f"notional {notional} at reference price {ref} is above "
                                              f"the maximum {rules.max_notional}")
        return RoundedOrder(rq, None)

    p = None if lim_is_nan else to_decimal(limit_price)
    if p is None:
        return Denial(BAD_INPUT, f"limit price {limit_price!r} is not a finite number")
    if p <= 0:
        return Denial(PRICE_NOT_POSITIVE, f"limit price {p} is not positive")
    tick = rules.tick_at(p)
    if tick is None and (rules.tick_table or rules.tick_size is not None):
        return Denial(NO_TICK_RULE, f"no known tick for price {p} on {rules.symbol}")
    rounding = ROUND_FLOOR if side == SIDE_BUY else ROUND_CEILING
    rp = snap(p, tick, rounding)
    # a buy rounded down into a finer band, or a sell rounded up into a coarser one,
    # must still sit on the tick of the band it landed in
    if rules.tick_table and rp > 0 and not _on_tick(rp, rules):
        tick2 = rules.tick_at(rp)
        rp = snap(rp, tick2, rounding) if tick2 is not None else rp
        if not _on_tick(rp, rules):
            return Denial(NO_TICK_RULE, f"price {p} has no valid tick near it on {rules.symbol}")
    if rp <= 0:
        return Denial(PRICE_NOT_POSITIVE, f"limit price {p} rounds down to {rp}")
    if rp < rules.min_price:
        return Denial(PRICE_BELOW_MIN, f"limit price {rp} is below the minimum {rules.min_price}")
    if rules.max_price is not None and rp > rules.max_price:
        return Denial(PRICE_ABOVE_MAX, f"limit price {rp} is above the maximum {rules.max_price}")
    notional = rq * rp
    if notional < rules.min_notional:
        return Denial(NOTIONAL_BELOW_MIN, f"notional {notional} is below the minimum {rules.min_notional}")
    if rules.max_notional is not None and notional > rules.max_notional:
        return Denial(NOTIONAL_ABOVE_MAX, f"notional {notional} is above the maximum {rules.max_notional}")
    return RoundedOrder(rq, rp)


# -- Binance ---------------------------------------------------------------------------------
def _positive(text) -> Decimal | None:
    """A Binance filter number; zero means 'no such rule'."""
    d = to_decimal(str(text)) if text is not None else None
    return d if d is not None and d > 0 else None


def binance_rules(exchange_info: dict) -> dict[str, SymbolRules]:
    """Native symbol -> rules from GET /api/v3/exchangeInfo. Reads both filter
    generations: MIN_NOTIONAL {minNotional, applyToMarket} and its successor NOTIONAL
    {minNotional, applyMinToMarket, maxNotional, applyMaxToMarket}. A symbol whose
    status is not TRADING is kept, marked not trading."""
    out = {}
    for sym in exchange_info.get("symbols", []):
        f = {flt["filterType"]: flt for flt in sym.get("filters", [])}
        price = f.get("PRICE_FILTER", {})
        lot = f.get("LOT_SIZE", {})
        mlot = f.get("MARKET_LOT_SIZE", {})
        kw = {}
        if "NOTIONAL" in f:
            n = f["NOTIONAL"]
            kw.update(min_notional=_positive(n.get("minNotional")) or Decimal(0),
                      max_notional=_positive(n.get("maxNotional")),
                      min_notional_market=bool(n.get("applyMinToMarket", True)),
                      max_notional_market=bool(n.get("applyMaxToMarket", True)))
        elif "MIN_NOTIONAL" in f:
            n = f["MIN_NOTIONAL"]
            kw.update(min_notional=_positive(n.get("minNotional")) or Decimal(0),
                      min_notional_market=bool(n.get("applyToMarket", True)))
        out[sym["symbol"]] = SymbolRules(
            symbol=sym["symbol"],
            lot_step=_positive(lot.get("stepSize")),
            tick_size=_positive(price.get("tickSize")),
            min_qty=_positive(lot.get("minQty")) or Decimal(0),
            max_qty=_positive(lot.get("maxQty")),
            market_max_qty=_positive(mlot.get("maxQty")),
            min_price=_positive(price.get("minPrice")) or Decimal(0),
            max_price=_positive(price.get("maxPrice")),
            trading=sym.get("status", "TRADING") == "TRADING",
            **kw)
    return out


# -- Upbit -----------------------------------------------------------------------------------
# Source: shared/data/facts/venue_rules.md, "Upbit KRW market price unit", quoting docs.upbit.com
# (krw-market-info, market-info-trade-price-detail v1.4.1/v1.4.5, changelogs krw_tick_unit_change,
# usdtkrw_tick_unit_change, krw_tick_unit_change_250731). Each change takes effect at 00:00 KST
# of its date (Upbit announces Korean dates; the hour of the maintenance is not recorded).
KST = timezone(timedelta(hours=9))


def _kst_ns(y: int, m: int, d: int) -> int:
    return int(datetime(y, m, d, tzinfo=KST).timestamp()) * 1_000_000_000


def _table(rows) -> tuple[tuple[Decimal, Decimal | None], ...]:
    return tuple((Decimal(b), None if t is None else Decimal(t)) for b, t in rows)


UPBIT_KRW_2024_01_29 = _kst_ns(2024, 1, 29)
UPBIT_KRW_2024_10_14 = _kst_ns(2024, 10, 14)
UPBIT_KRW_2025_03_21 = _kst_ns(2025, 3, 21)
UPBIT_KRW_2025_07_31 = _kst_ns(2025, 7, 31)
UPBIT_MIN_2024_08_19 = _kst_ns(2024, 8, 19)
UPBIT_BTC_MAX_2025_05_19 = _kst_ns(2025, 5, 19)

# (lower bound KRW, tick KRW), highest first; until 2024-01-28
UPBIT_KRW_TICKS_UNTIL_2024_01_28 = _table([
    ("2000000", "1000"), ("1000000", "500"), ("500000", "100"), ("100000", "50"),
    ("50000", "10"), ("10000", "10"), ("5000", "5"), ("1000", "5"), ("100", "1"),
    ("10", "0.1"), ("1", "0.01"), ("0.1", "0.001"), ("0", "0.0001")])
# 2024-01-29 .. 2025-07-30
UPBIT_KRW_TICKS_FROM_2024_01_29 = _table([
    ("2000000", "1000"), ("1000000", "500"), ("500000", "100"), ("100000", "50"),
    ("50000", "10"), ("10000", "10"), ("5000", "1"), ("1000", "1"), ("100", "0.1"),
    ("10", "0.01"), ("1", "0.001"), ("0.1", "0.0001"), ("0.01", "0.00001"),
    ("0.001", "0.000001"), ("0.0001", "0.0000001"), ("0", "0.00000001")])
# from 2025-07-31; bands under 100 KRW were not captured (page cut off): unknown, denied
UPBIT_KRW_TICKS_FROM_2025_07_31 = _table([
    ("2000000", "1000"), ("1000000", "1000"), ("500000", "500"), ("100000", "100"),
    ("50000", "50"), ("10000", "10"), ("5000", "5"), ("1000", "1"), ("100", "1"),
    ("0", None)])
# from 2024-10-14 these KRW markets use 1 KRW (not 0.1) in the 100-1,000 band
UPBIT_TICK1_ASSETS_2024_10_14 = frozenset(
    "ADA ALGO BLUR CELO ELF EOS GRS GRT ICX MANA MINA POL SAND SEI STG TRX".split())
# from 2025-03-21 USDT/KRW and USDC/KRW use 0.5 KRW in the 1,000-10,000 band (kept after
# 2025-07-31: the facts record no change to this stablecoin rule)
UPBIT_HALF_TICK_ASSETS_2025_03_21 = frozenset({"USDT", "USDC"})

UPBIT_KRW_MIN_TOTAL = Decimal("5000")           # orders/chance 2021: bid.min_total
UPBIT_KRW_MAX_TOTAL = Decimal("1000000000")     # orders/chance 2021: max_total
UPBIT_BTC_TICK = Decimal("0.00000001")
# Upbit volumes carry 8 decimals (not in the facts file: the precision of its order payloads)
UPBIT_LOT_STEP = Decimal("0.00000001")


def upbit_krw_tick_table(asset: str, at_ns: int) -> tuple[tuple[Decimal, Decimal | None], ...]:
    """The KRW price bands of ``asset`` (e.g. 'BTC') valid at ``at_ns``."""
    if at_ns < UPBIT_KRW_2024_01_29:
        return UPBIT_KRW_TICKS_UNTIL_2024_01_28
    table = list(UPBIT_KRW_TICKS_FROM_2025_07_31 if at_ns >= UPBIT_KRW_2025_07_31
                 else UPBIT_KRW_TICKS_FROM_2024_01_29)
    if at_ns >= UPBIT_KRW_2024_10_14 and asset in UPBIT_TICK1_ASSETS_2024_10_14:
        table = [(b, Decimal(1) if b == 100 else t) for b, t in table]
    if at_ns >= UPBIT_KRW_2025_03_21 and asset in UPBIT_HALF_TICK_ASSETS_2025_03_21:
        table = [(b, Decimal("0.5") if b in (5000, 1000) else t) for b, t in table]
    return tuple(table)


def upbit_rules(markets: Iterable[str | dict], at_ns: int) -> dict[str, SymbolRules]:
    """Native market ('KRW-BTC', 'BTC-ETH') -> rules valid at ``at_ns``, for KRW and
    BTC markets. ``markets`` are names or GET /v1/market/all entries. Other quote
    markets (USDT) are left out: no rules, so no order."""
    out = {}
    for m in markets:
        name = m["market"] if isinstance(m, dict) else m
        quote, _, asset = name.partition("-")
        if quote == "KRW":
            out[name] = SymbolRules(symbol=name, lot_step=UPBIT_LOT_STEP,
                                    tick_table=upbit_krw_tick_table(asset, at_ns),
                                    min_notional=UPBIT_KRW_MIN_TOTAL,
                                    max_notional=UPBIT_KRW_MAX_TOTAL)
        elif quote == "BTC":
            out[name] = SymbolRules(
                symbol=name, lot_step=UPBIT_LOT_STEP, tick_size=UPBIT_BTC_TICK,
                min_notional=Decimal("0.00005") if at_ns >= UPBIT_MIN_2024_08_19 else Decimal("0.0005"),
                max_notional=Decimal("10") if at_ns >= UPBIT_BTC_MAX_2025_05_19 else Decimal("20"))
    return out
