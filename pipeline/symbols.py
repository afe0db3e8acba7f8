"""One symbol registry for every process: "BTC/USDT@binance" <-> integer id.

Built deterministically from the config, so each process derives the same ids
without talking to the others.
"""
from __future__ import annotations

from .config import Config, feed_symbols


class SymbolRegistry:
    def __init__(self, keys: list[str]):
        self.keys = list(keys)
        self.ids = {k: i for i, k in enumerate(self.keys)}

    @classmethod
    def from_config(cls, cfg: Config) -> "SymbolRegistry":
        return cls(feed_symbols(cfg))

    def __len__(self) -> int:
        return len(self.keys)

    def id(self, key: str) -> int:
        """Id of "SYM@venue"; a bare "SYM" matches if it is unique across venues."""
        if key in self.ids:
            return self.ids[key]
        matches = [k for k in self.keys if k.split("@")[0] == key]
        if len(matches) == 1:
            return self.ids[matches[0]]
        if matches:
            raise KeyError(f"symbol {key!r} is on several venues: {', '.join(matches)}")
        raise KeyError(f"unknown symbol {key!r} (known: {', '.join(self.keys)})")

    def name(self, symbol_id: int) -> str:
        return self.keys[symbol_id] if 0 <= symbol_id < len(self.keys) else f"#{symbol_id}"
