"""Versioned model artifacts on disk.

Layout: ``<root>/<model name>/<version>/`` holds the model's files and
``metadata.json``. Versions are integers 1, 2, 3, ... per model: they sort as
they were saved and read well in a signal record; the creation time is in the
metadata. A version is written into a hidden temporary directory and renamed
into place, so a reader never sees half an artifact, and a saved version is
never overwritten (a rename onto an existing, non-empty version fails; the
writer then takes the next number).

metadata.json holds what the caller gives (feature names in their order,
parameters, data range, metrics, ...) plus what the registry adds: name,
version, creation time, library versions and the sha256 of every artifact
file. `load` checks those checksums, so a truncated or edited artifact is an
`ArtifactError` naming the file, not a model that silently predicts garbage.
"""
from __future__ import annotations

import hashlib
import json
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
        order), parameters, data_range and metrics; anything else is kept too."""
        if not model_name or not model_name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"model name must be letters, digits, '-' and '_', got {model_name!r}")
        missing = [k for k in REQUIRED if k not in metadata]
        if missing:
            raise ValueError(f"metadata lacks {', '.join(missing)} (needed: {', '.join(REQUIRED)})")
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
