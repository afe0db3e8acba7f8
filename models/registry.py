"""Versioned model artifacts on disk.

Layout: ``<root>/<model name>/<version>/`` holds the model's files and
``metadata.json``. Versions are integers 1, 2, 3, ... per model: they sort as
they were saved and read well in a signal record; the creation time is in the
metadata. A version is written into a hidden temporary directory and renamed
into place, so a reader never sees half an artifact, and a saved version is
never overwritten (a rename onto an existing, non-empty version fails; the
writer then takes the next number).

metadata.json holds what the caller gives (feature names in their order,
the bar length in seconds, the market, parameters, data range, metrics, ...)
plus what the registry adds: name, version, creation time, library versions
and the sha256 of every artifact file. `load` checks those checksums, so a
truncated or edited artifact is an `ArtifactError` naming the file, not a model
that silently predicts garbage.

What a model may be served on is checked against the running config here, in
one line each: `check_features` (the same indicator columns in the same order)
and `check_bars` (the same bar length: an RSI over 14 bars, a volatility of
log returns per bar, a label over ``horizon`` bars are other quantities at
another bar length, so a mismatch is refused). `market_notes` compares the
venue and quote currency and only warns (see there why).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Union

from models.boost import XGBoostModel
from models.forest import RandomForestModel
from models.lstm import LSTMModel
from models.rl import RLAgent

# model name in the config -> class with fit(X, y, seed) / predict_proba(X) / save(dir) / load(dir):
# what training makes and serving loads (serving never imports training)
MODELS: dict[str, type] = {"forest": RandomForestModel, "xgboost": XGBoostModel, "lstm": LSTMModel,
                           "rl": RLAgent}
ENSEMBLE = "ensemble"                  # the ensemble's name in the registry

METADATA = "metadata.json"
REQUIRED = ("feature_names", "parameters", "data_range", "metrics")
# what a new version must record besides (older artifacts may lack it: `check_bars` refuses them)
SAVE_REQUIRED = (*REQUIRED, "bar_seconds")
# a library and the distribution names it may be installed under
LIBRARIES = {"numpy": ("numpy",), "scikit-learn": ("scikit-learn",),
             "xgboost": ("xgboost", "xgboost-cpu"), "tensorflow": ("tensorflow", "tensorflow-cpu"),
             "gymnasium": ("gymnasium",), "pyarrow": ("pyarrow",), "tickpipe": ("tickpipe",)}

# what `save` accepts: a function that writes the files into the directory it is
# given, a mapping {relative name: bytes or a file to copy}, or files to copy
Files = Union[Callable[[Path], None], Mapping[str, Union[bytes, str, Path]], Iterable[Union[str, Path]]]


class ArtifactError(Exception):
    """A missing, corrupt or mismatching artifact; the message says which and what to do."""


def library_versions() -> dict[str, str]:
    """Versions of python and of the installed libraries a model may depend on
    (read from package metadata: nothing is imported)."""
    out = {"python": platform.python_version()}
    for name, dists in LIBRARIES.items():
        for dist in dists:
            try:
                out[name] = importlib_metadata.version(dist)
                break
            except importlib_metadata.PackageNotFoundError:
                pass
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _artifact_files(directory: Path) -> list[str]:
    """Relative names of the artifact's files (metadata.json excluded), sorted."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.relative_to(directory).as_posix() != METADATA)


def _checksums(directory: Path) -> dict:
    files = {name: _sha256(directory / name) for name in _artifact_files(directory)}
    total = hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in files.items()).encode()).hexdigest()
    return {"algorithm": "sha256", "files": files, "total": total}


def _write_files(files: Files, directory: Path) -> None:
    if callable(files):
        files(directory)
        return
    items = files.items() if isinstance(files, Mapping) else ((Path(p).name, p) for p in files)
    for name, content in items:
        dest = directory / name
        if directory.resolve() not in dest.resolve().parents:
            raise ValueError(f"artifact file {name!r} lies outside the artifact directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            dest.write_bytes(content)
        else:
            shutil.copyfile(content, dest)


class Registry:
    """Artifacts of every model under one root directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def versions(self, model_name: str) -> list[int]:
        """Saved versions of a model, oldest first (temporary directories skipped)."""
        d = self.root / model_name
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())

    def save(self, model_name: str, files: Files, metadata: dict) -> int:
        """Store a new version of ``model_name`` and return its number.

        ``metadata`` must hold feature_names (the configured feature columns in
        order), bar_seconds (the length of the bars trained on, > 0), parameters,
        data_range and metrics; anything else is kept too (``market``: {venue,
        symbol, quote, synthetic}, see `market_notes`)."""
        if not model_name or not model_name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"model name must be letters, digits, '-' and '_', got {model_name!r}")
        missing = [k for k in SAVE_REQUIRED if k not in metadata]
        if missing:
            raise ValueError(f"metadata lacks {', '.join(missing)} (needed: {', '.join(SAVE_REQUIRED)})")
        bar = metadata["bar_seconds"]
        if isinstance(bar, bool) or not isinstance(bar, (int, float)) or not math.isfinite(bar) or bar <= 0:
            raise ValueError(f"metadata bar_seconds must be a number of seconds > 0, got {bar!r}")
        names = metadata["feature_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("metadata feature_names must be a list of column names")
        model_dir = self.root / model_name
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            _write_files(files, tmp)
            if (tmp / METADATA).exists():
                raise ValueError(f"an artifact file may not be named {METADATA}: the registry writes it")
            meta = dict(metadata)
            meta.update(name=model_name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        libraries={**library_versions(), **metadata.get("libraries", {})},
                        checksum=_checksums(tmp))
            version = max(self.versions(model_name), default=0) + 1
            while True:
                meta["version"] = version
                (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
                try:
                    os.rename(tmp, model_dir / str(version))   # fails onto a saved (non-empty) version
                    return version
                except OSError:
                    if not (model_dir / str(version)).exists():
                        raise
                    version += 1                               # another writer took this number
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def load(self, model_name: str, version: int | None = None, verify: bool = True) -> tuple[Path, dict]:
        """(artifact directory, metadata) of a version, the latest by default,
        after checking every file against its checksum."""
        have = self.versions(model_name)
        if not have:
            raise ArtifactError(f"no model '{model_name}' in {self.root}: run pipeline train "
                                f"--data FILE --out {self.root} to make one")
        if version is None:
            version = have[-1]
        elif version not in have:
            raise ArtifactError(f"no version {version} of model '{model_name}' in {self.root} "
                                f"(saved: {', '.join(map(str, have))})")
        path = self.root / model_name / str(version)
        meta_path = path / METADATA
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
            expected = meta["checksum"]["files"]
            missing = [k for k in REQUIRED if k not in meta]
            if missing:
                raise ValueError(f"lacks {', '.join(missing)}")
        except FileNotFoundError:
            raise ArtifactError(f"corrupt artifact: {meta_path} is missing") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"corrupt artifact: {meta_path} is unreadable ({e!r})") from None
        if verify:
            for name, digest in expected.items():
                f = path / name
                if not f.is_file():
                    raise ArtifactError(f"corrupt artifact: {f} is missing")
                if _sha256(f) != digest:
                    raise ArtifactError(f"corrupt artifact: {f} does not match its checksum in {meta_path}")
            extra = sorted(set(_artifact_files(path)) - set(expected))
            if extra:
                raise ArtifactError(f"corrupt artifact: {path / extra[0]} is not listed in {meta_path}")
        return path, meta


def check_features(metadata: dict, running_feature_names: list[str]) -> None:
    """Refuse a model whose features differ from the running config's: the same
    columns in the same order, or an ArtifactError saying what differs."""
    trained = list(metadata.get("feature_names", []))
    running = list(running_feature_names)
    if trained == running:
        return
    who = f"model '{metadata.get('name', '?')}' version {metadata.get('version', '?')}"
    problems = []
    missing = [n for n in trained if n not in running]
    extra = [n for n in running if n not in trained]
    if missing:
        problems.append(f"missing from the running config: {', '.join(missing)}")
    if extra:
        problems.append(f"not known to the model (extra in the config): {', '.join(extra)}")
    if not missing and not extra:
        moved = next((n for a, n in zip(trained, running) if a != n), running[-1] if running else "?")
        problems.append(f"same features in another order (first misplaced: {moved}); "
                        f"model order: {', '.join(trained)}; config order: {', '.join(running)}")
    raise ArtifactError(f"{who} was trained on other features than the running config: "
                        + "; ".join(problems)
                        + ". Retrain it with pipeline train on this config, or run the config it was trained with.")


# -- the bars and the market a model was trained on ---------------------------------------
def bar_text(seconds: float) -> str:
    """A bar length as a trader writes it: 0.2 s, 1 s, 1 min, 5 min, 1 h, 1 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and math.isclose(seconds / size, round(seconds / size), abs_tol=1e-9):
            return f"{round(seconds / size)} {unit}"
    return f"{seconds:.6g} s"


def same_bars(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)


def _mean_step(metadata: dict) -> float | None:
    """Seconds per bar of an artifact's data range (first to last kept row): a hint for
    artifacts that do not record their bar length; gaps make it longer than the bars."""
    r = metadata.get("data_range") or {}
    try:
        first, last, rows = int(r["first_ms"]), int(r["last_ms"]), int(r["rows"])
    except (KeyError, TypeError, ValueError):
        return None
    return (last - first) / 1e3 / (rows - 1) if rows > 1 and last > first else None


_USUAL_BARS = (0.1, 0.2, 0.5, 1, 5, 10, 15, 30, 60, 180, 300, 900, 1800, 3600, 7200, 14400, 21600, 43200,
               86400)


def _about(seconds: float) -> str:
    """An estimated bar length: the usual length within 10 % of it, else 3 digits."""
    near = min(_USUAL_BARS, key=lambda b: abs(math.log(seconds / b)))
    return bar_text(near) if abs(seconds / near - 1) <= 0.1 else f"{seconds:.3g} s"


def check_bars(metadata: dict, running_bar_seconds: float) -> None:
    """Refuse a model trained on bars of another length than the running config's
    ``[indicators] bar_seconds``, or one that does not record its bar length (saved
    before artifacts did): an ArtifactError in one line saying what to do.

    Why refuse: every input is counted in bars (RSI-14 is 14 bars, vol_20 is the
    spread of per-bar log returns, which grows with the square root of the bar
    length), and so is the label horizon; the same columns at another bar length are
    other numbers, and the model's probabilities mean nothing. An artifact without
    the field is refused rather than served with a warning: serving it is how a
    5-minute model ended up on 1 s bars unnoticed, and retraining is one command."""
    who = f"model '{metadata.get('name', '?')}' version {metadata.get('version', '?')}"
    running = float(running_bar_seconds)
    trained = metadata.get("bar_seconds")
    if trained is None:
        step = _mean_step(metadata)
        hint = f"; its data averages about {_about(step)} per bar" if step else ""
        raise ArtifactError(f"{who} does not record the bar length it was trained on (saved by an older "
                            f"tickpipe{hint}); retrain it with pipeline train on {bar_text(running)} bars, "
                            f"this config's [indicators] bar_seconds = {running:g}")
    try:
        trained = float(trained)
    except (TypeError, ValueError):
        raise ArtifactError(f"corrupt artifact: {who}: bar_seconds {trained!r} is not a number") from None
    if not same_bars(trained, running):
        raise ArtifactError(f"{who} was trained on {bar_text(trained)} bars but this config closes "
                            f"{bar_text(running)} bars ([indicators] bar_seconds = {running:g}); its inputs "
                            f"and labels are counted in bars, so retrain it with pipeline train on "
                            f"{bar_text(running)} bars, or run it with bar_seconds = {trained:g}")


def split_symbol(key: str) -> tuple[str, str, str]:
    """``BTC/USDT@binance`` -> (BTC, USDT, binance); a part not given is ""."""
    symbol, _, venue = key.partition("@")
    base, _, quote = symbol.partition("/")
    quote = quote.split(":")[0].split("-")[0]          # BTC/USDT:USDT (ccxt swaps), BTC/USDT-PERP
    return base.upper(), quote.upper(), venue.lower()


def market_notes(metadata: dict, symbol_keys: list[str]) -> list[str]:
    """Warnings (never refusals) when the symbols served (``BASE/QUOTE@venue``) are
    on another venue or in another quote currency than the model's training data
    (``metadata["market"]``: venue, symbol, quote, synthetic; unknown parts are None).

    Not refused, because the inputs are scale-free (models/dataset.py: price levels
    enter as ratios to the close, volume as z-scores; tests/test_dataset checks
    that ten times the prices give the same inputs): a model trained on BTC/KRW
    prices computes the same inputs for the same relative moves on BTC/USDT, and
    serving one model to every symbol of the pipeline, not just the one it was
    trained on, is how the ensemble is meant to run. What can differ is the
    market's behaviour (a synthetic market, another venue's flow), which a trader
    should know but may choose: so one warning line each, logged at load."""
    market = metadata.get("market") or {}
    who = f"model '{metadata.get('name', '?')}' version {metadata.get('version', '?')}"
    served = [split_symbol(k) for k in symbol_keys]
    venues = sorted({v for _, _, v in served if v})
    quotes = sorted({q for _, q, _ in served if q})
    trained_on = market.get("symbol") or "?"
    notes = []
    if market.get("synthetic"):
        real = [v for v in venues if v != "synthetic"]
        if real:
            notes.append(f"{who} was trained on the synthetic market and serves {', '.join(real)}: "
                         "what it learned there says nothing about these markets; train it on their "
                         "candles with pipeline train")
        return notes
    venue, quote = (market.get("venue") or "").lower(), (market.get("quote") or "").upper()
    if quote and quotes and quote not in quotes:
        notes.append(f"{who} was trained on {trained_on} (quoted in {quote}) and serves symbols quoted "
                     f"in {', '.join(quotes)}: its inputs are scale-free, so the price level does not "
                     "matter, but that market's behaviour may differ")
    if venue and venues and venue not in venues:
        notes.append(f"{who} was trained on {venue} data ({trained_on}) and serves {', '.join(venues)}")
    return notes
