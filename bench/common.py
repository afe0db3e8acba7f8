"""What every benchmark in bench/ shares: its command line (``--json OUT``,
``--quick`` and the defaults that depend on it), the machine a figure was
measured on (`pipeline.metrics.machine_info`, a note when it is already
loaded, the load average at the end), Ctrl-C and SIGTERM, the text tables,
the JSON report, and the candles the model benchmarks read.

The benchmarks are run as scripts, ``python bench/X.py`` from the repository
root: their own directory is then first on ``sys.path``, and this module is
imported as ``common``. Kept light: a spawned worker re-imports the script.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, NoReturn, Sequence

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
CANDLES = SHARED_DATA / "candles" / "binance_BTC-USDT_5m.csv"


# -- command line ----------------------------------------------------------------
def parser(doc: str, quick: str, candles: bool = False) -> argparse.ArgumentParser:
    """The benchmark's parser, described by its docstring's first paragraph, with the
    options every benchmark has: ``--json PATH`` and ``--quick`` (``quick``: its help);
    and with ``candles``, ``--data`` (the candle file, `CANDLES` by default)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write results as JSON here")
    ap.add_argument("--quick", action="store_true", help=quick)
    if candles:
        ap.add_argument("--data", type=Path, default=CANDLES,
                        help="candle CSV (timestamp_ms,o,h,l,c,v)")
    return ap


def defaults(args: argparse.Namespace,
             table: Iterable[tuple[str, Any, Any]]) -> argparse.Namespace:
    """Each option of ``table`` (name, full run's default, --quick's) left at None
    gets the default of the run asked for."""
    for name, full, quick in table:
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


# -- the machine -----------------------------------------------------------------
def machine(*packages: str) -> dict:
    """`pipeline.metrics.machine_info` (and the versions of ``packages``, None when
    absent), with a note on stderr when other work already loads the machine."""
    from importlib.metadata import PackageNotFoundError, version

    from pipeline.metrics import machine_info
    info = machine_info()
    for pkg in packages:
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    load, cpus = info["loadavg_start"][0], os.cpu_count() or 1
    if load >= 0.75 * cpus:
        print(f"  note: load average {load:.1f} on {cpus} CPUs before starting: "
              "other work is running, expect noisy figures", file=sys.stderr)
    return info


def finish(info: dict) -> str:
    """Records the load average at the end in ``info``; returns the line that says it."""
    info["loadavg_end"] = list(os.getloadavg())
    return (f"load average {info['loadavg_start'][0]:.1f} before, "
            f"{info['loadavg_end'][0]:.1f} after, on {info['cpu_count']} CPUs")


# -- interruption ------------------------------------------------------------------
def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(main: Callable[[], int], interrupted: str = "interrupted") -> NoReturn:
    """Runs a benchmark's ``main`` as the script and exits with its status. SIGTERM
    (a kill, a test's timeout) raises KeyboardInterrupt as Ctrl-C does, so that the
    benchmark's ``finally`` blocks stop its processes and remove its segments and
    files either way; then ``interrupted`` goes to stderr and the status is 130."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = main()
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        code = 130
    sys.exit(code)


# -- output ----------------------------------------------------------------------
def table(rows: Sequence[Sequence[str]], justify: str = "l") -> str:
    """Rows of cells (the first is the header) as aligned text, a rule below the header.
    ``justify``: one letter per column, "l" or "r"; the last one goes for the rest."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.rjust(w) if justify[min(i, len(justify) - 1)] == "r" else c.ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def rate(x: float | None, none: str = "-") -> str:
    """A rate per second, in M or k."""
    if x is None:
        return none
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k"


def ms(x: float) -> str:
    """Milliseconds: three decimals below 10, one above."""
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def save(args: argparse.Namespace, info: dict, fields: dict,
         default: Callable[[Any], Any] | None = None) -> None:
    """With ``--json PATH``: the report there, as ``{"machine", "quick", "args"}``
    (paths as strings) followed by ``fields``."""
    if not args.json:
        return
    report = {"machine": info, "quick": args.quick,
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              **fields}
    Path(args.json).write_text(json.dumps(report, indent=2, default=default) + "\n")


# -- data --------------------------------------------------------------------------
def random_walk(n: int, absent: Path) -> tuple[dict, str]:
    """What stands in for a candle file that is ``absent``: n bars of a seeded geometric
    random walk as OHLCV float64 arrays, and the line that says so."""
    import numpy as np
    rng = np.random.default_rng(42)
    close = 50_000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.002, n)))
    open_ = np.concatenate(([close[0]], close[:-1]))
    wick = np.abs(rng.normal(0.0, 0.001, (2, n)))
    bars = {"open": open_, "high": np.maximum(open_, close) * (1 + wick[0]),
            "low": np.minimum(open_, close) * (1 - wick[1]), "close": close,
            "volume": rng.lognormal(3.0, 1.0, n)}
    return bars, f"random walk, {n} bars (seed 42): {absent} is absent"
