"""`pipeline features`: the indicators of a candle file (models/features.py), written
to Parquet whole (a reader never sees half a file)."""
from __future__ import annotations

from models.features import compute

from .config import Config
from .storage import output_file, write_parquet_whole


def run(data: str, out: str, cfg: Config) -> dict:
    output_file(out)                   # a bad --out fails before the work, not after
    table, summary = compute(data, cfg)
    summary["out"] = str(write_parquet_whole(table, out))
    return summary
