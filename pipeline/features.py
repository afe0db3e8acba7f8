"""`pipeline features`: the indicators of a candle file (models/features.py), written
to Parquet whole (a reader never sees half a file)."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from models.features import compute

from .config import Config


def run(data: str, out: str, cfg: Config) -> dict:
    table, summary = compute(data, cfg)
    out_path = Path(out).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(out_path)          # a reader never sees half a file
    summary["out"] = str(out_path)
    return summary
