"""Venue rules: rounding to the safe side, denials with reasons, the Binance loader
on a real exchangeInfo and Upbit's dated KRW tick tables at every band boundary."""
from __future__ import annotations

import math
from decimal import Decimal

import pytest

from shm.records import ORDER_LIMIT, SIDE_BUY, SIDE_SELL
from workers.execution import venue_rules as vr
from workers.execution.venue_rules import Denial, RoundedOrder, SymbolRules, round_order

from conftest import data_file

D = Decimal
NAN = float("nan")
EXCHANGE_INFO = data_file("payloads/binance/rest/exchangeInfo_2021-10-12.capture.jsonl")


def btc_usdt() -> SymbolRules:
    """BTCUSDT as Binance listed it on 2021-10-12."""
    return SymbolRules(symbol="BTCUSDT", lot_step=D("0.00001000"), tick_size=D("0.01000000"),
                       min_qty=D("0.00001000"), max_qty=D("9000.00000000"),
                       market_max_qty=D("100.05381873"), min_price=D("0.01000000"),
                       max_price=D("1000000.00000000"), min_notional=D("10.00000000"))


def denied(result, code: str) -> bool:
    return isinstance(result, Denial) and result.code == code and result.reason


# -- rounding ----------------------------------------------------------------------------------
def test_quantity_floors_to_the_lot_step_never_up():
    r = round_order(btc_usdt(), SIDE_BUY, 0.123456789, 50000.0, NAN)
    assert r == RoundedOrder(D("0.12345"), D("50000.00"))
    assert str(r.qty) == "0.12345000"                      # the venue's own digits
    r = round_order(btc_usdt(), SIDE_SELL, 0.0000199999, 1000000.0, NAN)
    assert r.qty == D("0.00001")


def test_float_noise_never_moves_an_order_a_whole_step():
    rules = btc_usdt()
    # 0.1 + 0.2 = 0.30000000000000004: still 0.3, not floored to 0.29999
    assert round_order(rules, SIDE_BUY, 0.1 + 0.2, 50000.0, NAN).qty == D("0.3")
    # 0.7 * 3 = 2.0999999999999996: 2.1, not 2.09999
    assert round_order(rules, SIDE_BUY, 0.7 * 3, 50000.0, NAN).qty == D("2.1")
    # 0.00001 * 3 = 3.0000000000000004e-05 on a 0.00001000 step: three steps
    assert round_order(rules, SIDE_BUY, 0.00001 * 3, 400000.0, NAN).qty == D("0.00003")
    # a sell limit of 0.1 + 0.2 on a 0.1 tick is 0.3, not rounded up to 0.4
    tenth = SymbolRules(symbol="T", lot_step=D("1"), tick_size=D("0.1"))
    assert round_order(tenth, SIDE_SELL, 1, 0.1 + 0.2, NAN).price == D("0.3")
    # 1.1 * 3 = 3.3000000000000003 buy on 0.1: 3.3
    assert round_order(tenth, SIDE_BUY, 1, 1.1 * 3, NAN).price == D("3.3")


def test_buy_limit_rounds_down_sell_limit_up():
    rules = btc_usdt()
    assert round_order(rules, SIDE_BUY, 0.01, 50000.019, NAN).price == D("50000.01")
    assert round_order(rules, SIDE_SELL, 0.01, 50000.011, NAN).price == D("50000.02")
    assert round_order(rules, SIDE_SELL, 0.01, 50000.01, NAN).price == D("50000.01")


def test_market_order_is_checked_at_its_reference_price():
    rules = btc_usdt()
    assert round_order(rules, SIDE_BUY, 0.0003, NAN, 50000.0) == RoundedOrder(D("0.0003"), None)
    assert denied(round_order(rules, SIDE_BUY, 0.0001, NAN, 50000.0), vr.NOTIONAL_BELOW_MIN)
    assert denied(round_order(rules, SIDE_BUY, 0.001, NAN, NAN), vr.BAD_INPUT)
    # MARKET_LOT_SIZE caps market orders only
    assert denied(round_order(rules, SIDE_SELL, 200.0, NAN, 50000.0), vr.QTY_ABOVE_MAX)
    assert isinstance(round_order(rules, SIDE_SELL, 200.0, 50000.0, NAN), RoundedOrder)
    # a minimum that does not apply to market orders (applyToMarket false)
    off = SymbolRules(symbol="X", lot_step=D("0.001"), min_notional=D("10"), min_notional_market=False)
    assert round_order(off, SIDE_BUY, 0.001, NAN, 1.0) == RoundedOrder(D("0.001"), None)


@pytest.mark.parametrize("side, qty, price, ref, code", [
    (SIDE_BUY, 0.000009, 50000.0, NAN, vr.QTY_BELOW_MIN),      # floors to zero lots
    (SIDE_BUY, 9000.1, 50000.0, NAN, vr.QTY_ABOVE_MAX),
    (SIDE_BUY, 0.0001, 50000.0, NAN, vr.NOTIONAL_BELOW_MIN),   # 5 USDT < 10
    (SIDE_BUY, 0.01, 0.0, NAN, vr.PRICE_NOT_POSITIVE),
    (SIDE_BUY, 0.01, -5.0, NAN, vr.PRICE_NOT_POSITIVE),
    (SIDE_BUY, 0.01, 0.009, NAN, vr.PRICE_NOT_POSITIVE),       # a buy rounds down to 0
    (SIDE_SELL, 0.01, 2000000.0, NAN, vr.PRICE_ABOVE_MAX),
    (SIDE_BUY, NAN, 50000.0, NAN, vr.BAD_INPUT),
    (SIDE_BUY, math.inf, 50000.0, NAN, vr.BAD_INPUT),
    (SIDE_BUY, 0.01, math.inf, NAN, vr.BAD_INPUT),
    (SIDE_BUY, 0.0, 50000.0, NAN, vr.QTY_NOT_POSITIVE),
    (SIDE_SELL, -1.0, 50000.0, NAN, vr.QTY_NOT_POSITIVE),
    (0, 0.01, 50000.0, NAN, vr.BAD_INPUT),                     # no side
])
def test_denials_carry_a_code_and_a_reason(side, qty, price, ref, code):
    assert denied(round_order(btc_usdt(), side, qty, price, ref), code)


def test_absurd_magnitudes_are_denied_not_raised():
    assert denied(round_order(btc_usdt(), SIDE_BUY, 1e30, 50000.0, NAN), vr.BAD_INPUT)
    assert denied(round_order(btc_usdt(), SIDE_BUY, 0.01, 1e300, NAN), vr.BAD_INPUT)


def test_a_market_order_meets_the_lower_of_both_quantity_caps():
    rules = SymbolRules(symbol="X", lot_step=D("1"), max_qty=D("50"), market_max_qty=D("900"))
    assert denied(round_order(rules, SIDE_BUY, 60, NAN, 1.0), vr.QTY_ABOVE_MAX)
    assert round_order(rules, SIDE_BUY, 50, NAN, 1.0) == RoundedOrder(D("50"), None)


def test_limit_order_type_needs_a_price_and_market_needs_none():
    assert denied(round_order(btc_usdt(), SIDE_BUY, 0.01, NAN, 50000.0, order_type=ORDER_LIMIT),
                  vr.BAD_INPUT)
    assert denied(round_order(btc_usdt(), SIDE_BUY, 0.01, 50000.0, 50000.0, order_type=1), vr.BAD_INPUT)


def test_a_symbol_not_trading_is_denied():
    rules = SymbolRules(symbol="X", lot_step=D("1"), trading=False)
    assert denied(round_order(rules, SIDE_BUY, 1, NAN, 1.0), vr.NOT_TRADING)


# -- Binance -----------------------------------------------------------------------------------
def test_binance_rules_read_both_filter_generations():
    info = {"symbols": [
        {"symbol": "OLD", "status": "TRADING", "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.00000100", "maxPrice": "1000.00000000",
             "tickSize": "0.00000100"},
            {"filterType": "LOT_SIZE", "minQty": "0.10000000", "maxQty": "900000.00000000",
             "stepSize": "0.10000000"},
            {"filterType": "MIN_NOTIONAL", "minNotional": "0.00010000", "applyToMarket": False,
             "avgPriceMins": 5}]},
        {"symbol": "NEW", "status": "BREAK", "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0", "maxPrice": "0", "tickSize": "0.01"},
            {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "100", "stepSize": "0.001"},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5}]},
    ]}
    rules = vr.binance_rules(info)
    old, new = rules["OLD"], rules["NEW"]
    assert old.tick_size == D("0.000001") and old.lot_step == D("0.1") and old.min_qty == D("0.1")
    assert old.min_notional == D("0.0001") and not old.min_notional_market and old.trading
    assert new.min_notional == D("5") and new.max_notional == D("9000000") and new.min_notional_market
    assert not new.max_notional_market and not new.trading
    assert new.min_price == 0 and new.max_price is None           # zero: no such rule


def test_binance_rules_on_the_real_2021_exchange_info():
    from workers.venues.capture import capture_lines
    info = capture_lines(EXCHANGE_INFO)[0]["msg"]
    rules = vr.binance_rules(info)
    assert len(rules) == len(info["symbols"]) == 1695
    btc = rules["BTCUSDT"]
    assert btc == btc_usdt()
    eth = rules["ETHBTC"]
    assert eth.tick_size == D("0.000001") and eth.lot_step == D("0.0001")
    assert eth.min_notional == D("0.0001") and eth.min_notional_market
    assert sum(not r.trading for r in rules.values()) == 433          # status BREAK
    # every symbol has a tick and a step, and a price on its tick comes back unchanged
    for r in rules.values():
        assert r.tick_size > 0 and r.lot_step > 0
    r = round_order(btc, SIDE_BUY, 0.00123, 54321.09, NAN)
    assert r == RoundedOrder(D("0.00123"), D("54321.09"))


# -- Upbit -------------------------------------------------------------------------------------
OLD = vr._kst_ns(2023, 6, 1)
MID = vr._kst_ns(2024, 6, 1)
NEW = vr._kst_ns(2025, 9, 1)

# (band's lower bound, tick) for each dated table; the next band starts at the previous bound
UPBIT_BANDS = {
    OLD: [(2000000, "1000"), (1000000, "500"), (500000, "100"), (100000, "50"), (50000, "10"),
          (10000, "10"), (5000, "5"), (1000, "5"), (100, "1"), (10, "0.1"), (1, "0.01"),
          ("0.1", "0.001"), (0, "0.0001")],
    MID: [(2000000, "1000"), (1000000, "500"), (500000, "100"), (100000, "50"), (50000, "10"),
          (10000, "10"), (5000, "1"), (1000, "1"), (100, "0.1"), (10, "0.01"), (1, "0.001"),
          ("0.1", "0.0001"), ("0.01", "0.00001"), ("0.001", "0.000001"), ("0.0001", "0.0000001"),
          (0, "0.00000001")],
    NEW: [(2000000, "1000"), (1000000, "1000"), (500000, "500"), (100000, "100"), (50000, "50"),
          (10000, "10"), (5000, "5"), (1000, "1"), (100, "1")],
}


@pytest.mark.parametrize("at_ns", [OLD, MID, NEW])
def test_upbit_krw_tick_at_every_band_boundary(at_ns):
    rules = vr.upbit_rules(["KRW-BTC"], at_ns)["KRW-BTC"]
    bands = UPBIT_BANDS[at_ns]
    for i, (bound, tick) in enumerate(bands):
        bound, tick = D(str(bound)), D(tick)
        if bound > 0:
            assert rules.tick_at(bound) == tick, (at_ns, bound)
        if i > 0:                                  # just under the band above: still this band
            top = D(str(bands[i - 1][0]))
            assert rules.tick_at(top - tick) == tick, (at_ns, top - tick)


def test_upbit_table_dates_switch_at_midnight_kst():
    first = vr.UPBIT_KRW_2025_07_31
    before = vr.upbit_rules(["KRW-XRP"], first - 1)["KRW-XRP"]
    after = vr.upbit_rules(["KRW-XRP"], first)["KRW-XRP"]
    assert before.tick_at(D("600000")) == D("100") and after.tick_at(D("600000")) == D("500")
    assert vr.upbit_rules(["KRW-XRP"], vr.UPBIT_KRW_2024_01_29 - 1)["KRW-XRP"].tick_at(D("7000")) == 5
    assert vr.upbit_rules(["KRW-XRP"], vr.UPBIT_KRW_2024_01_29)["KRW-XRP"].tick_at(D("7000")) == 1


def test_upbit_asset_exceptions():
    ada = vr.upbit_rules(["KRW-ADA", "KRW-XRP"], vr.UPBIT_KRW_2024_10_14)
    assert ada["KRW-ADA"].tick_at(D("500")) == 1 and ada["KRW-XRP"].tick_at(D("500")) == D("0.1")
    assert vr.upbit_rules(["KRW-ADA"], vr.UPBIT_KRW_2024_10_14 - 1)["KRW-ADA"].tick_at(D("500")) == D("0.1")
    usdt = vr.upbit_rules(["KRW-USDT"], vr.UPBIT_KRW_2025_03_21)["KRW-USDT"]
    assert usdt.tick_at(D("1400")) == D("0.5") and usdt.tick_at(D("10000")) == 10
    r = round_order(usdt, SIDE_BUY, 10, 1400.7, NAN)
    assert r.price == D("1400.5")


def test_upbit_rounding_across_a_band_and_the_minimum_total():
    krw = vr.upbit_rules(["KRW-BTC"], NEW)["KRW-BTC"]
    # a sell just under 1,000,000 rounds up to the boundary, which sits on the next band's tick
    assert round_order(krw, SIDE_SELL, 0.01, 999_800.0, NAN).price == D("1000000")
    assert round_order(krw, SIDE_BUY, 0.01, 1_999_999.0, NAN).price == D("1999000")
    assert round_order(krw, SIDE_SELL, 0.01, 2_000_001.0, NAN).price == D("2001000")
    # 5,000 KRW minimum total, 1e9 maximum
    assert denied(round_order(krw, SIDE_BUY, 0.001, 4_000_000.0, NAN), vr.NOTIONAL_BELOW_MIN)
    assert isinstance(round_order(krw, SIDE_BUY, 0.00125, 4_000_000.0, NAN), RoundedOrder)
    assert denied(round_order(krw, SIDE_BUY, 300, NAN, 4_000_000.0), vr.NOTIONAL_ABOVE_MAX)
    # bands under 100 KRW from 2025-07-31 were not captured: denied, not guessed
    assert denied(round_order(krw, SIDE_BUY, 100, 50.0, NAN), vr.NO_TICK_RULE)


def test_upbit_btc_market_and_other_quotes():
    rules = vr.upbit_rules([{"market": "BTC-ETH"}, {"market": "USDT-BTC"}], MID)
    assert set(rules) == {"BTC-ETH"}                   # USDT markets: no rules, no orders
    eth = rules["BTC-ETH"]
    assert eth.tick_size == D("0.00000001") and eth.min_notional == D("0.0005")
    assert vr.upbit_rules(["BTC-ETH"], vr.UPBIT_MIN_2024_08_19)["BTC-ETH"].min_notional == D("0.00005")
    assert denied(round_order(eth, SIDE_BUY, 0.001, 0.06, NAN), vr.NOTIONAL_BELOW_MIN)
    assert round_order(eth, SIDE_BUY, 0.01, 0.060000009, NAN).price == D("0.06")
