"""Credentials in a venue URL never reach a log line, and a URL with a query
string is extended with a URL library, not by pasting text after it."""
from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from pipeline.config import FeedConfig
from pipeline.logs import redact, redact_url
from workers.venues.binance import BinanceFeed

ROOT = Path(__file__).resolve().parent.parent


def test_user_info_and_query_values_are_hidden():
    assert redact_url("ws://trader:PASSWORD@10.0.0.1:9443/stream?streams=a@x/b&token=T0K") == \
        "ws://***@10.0.0.1:9443/stream?streams=***&token=***"
    assert redact_url("https://api.binance.com/api/v3/depth") == "https://api.binance.com/api/v3/depth"
    text = ("connect to wss://u:p@h/x?key=abc failed: [Errno 111]; "
            "'https://api.x.com/v1?signature=deadbeef&apiKey=K'")
    out = redact(text)
    for secret in ("u:p", "abc", "deadbeef", "=K'"):
        assert secret not in out
    assert "wss://***@h/x?key=***" in out and "[Errno 111]" in out


def test_binance_stream_url_keeps_the_query_it_was_given():
    cfg = FeedConfig(name="b", kind="binance", symbols=["NKN/USDT"], channels=["trades"],
                     ws_url="ws://127.0.0.1:9/ws?token=abc")
    assert BinanceFeed(cfg, {"NKN/USDT": 1}).url() == \
        "ws://127.0.0.1:9/stream?token=abc&streams=nknusdt@aggTrade"


def test_a_feed_with_credentials_in_its_url_logs_none_of_them():
    """The real connection code, failing against a closed port, logs its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]            # closed once the block ends
    script = textwrap.dedent(f"""
        from pipeline import logs
        logs.configure("feed.0")
        from workers.venues.base import Health
        from workers.venues.ws import WsConnection
        c = WsConnection("ws://trader:PASSWORD@127.0.0.1:{port}/ws?token=SECRETTOKEN", [], Health(),
                         connect_timeout_s=5)
        assert not c.connect()
        import logging
        logging.getLogger("feed").warning("retrying %s", c.url)
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"ws://***@127.0.0.1:{port}/ws?token=***" in r.stderr
    assert "PASSWORD" not in r.stderr and "SECRETTOKEN" not in r.stderr and "trader" not in r.stderr


def test_a_value_after_a_key_that_names_a_credential_is_hidden():
    line = ("request failed: headers {'X-MBX-APIKEY': 'KEY123', 'Authorization': 'Bearer eyJSECRET'} "
            'body {"api_secret": "s3cr3t", "price": 1.5} query signature=deadbeef&qty=2')
    out = redact(line)
    for secret in ("KEY123", "eyJSECRET", "s3cr3t", "deadbeef"):
        assert secret not in out
    assert "'X-MBX-APIKEY': '***'" in out and '"price": 1.5' in out and "qty=2" in out
    assert redact("filled 2 at price=5.0 qty=1") == "filled 2 at price=5.0 qty=1"
