"""Recorded exchange sessions (``*.capture.jsonl``), read back byte for byte.

Each line is ``{"recv_ts": ..., "dir": "connect"|"send"|"recv"|"http", "url":
..., "msg": <payload>}`` with the payload's JSON text copied into the line
unchanged, always as the last key. ``raw`` is that text as it came off the
wire, so replaying it (tests' local servers, the feeds benchmark) feeds the
parsers exactly what the venue sent.
"""
from __future__ import annotations

import json
from pathlib import Path


def capture_lines(path: str | Path) -> list[dict]:
    """Every line as a dict, with ``raw``: the payload text exactly as captured."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            rec = json.loads(line)
            i = line.find('"msg":')
            rec["raw"] = line[i + 6:-1] if i >= 0 else None
            out.append(rec)
    return out


def recv_messages(path: str | Path) -> list[str]:
    """The payloads the venue sent, in order."""
    return [r["raw"] for r in capture_lines(path) if r["dir"] == "recv"]
