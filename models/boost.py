"""XGBoost: multi:softprob over 3 classes, served by ``Booster.inplace_predict``.

``inplace_predict`` reads the numpy array directly: no DMatrix built per call,
which is most of the naive ``predict(DMatrix(X))`` cost at small batches. One
thread for training and prediction (deterministic, and the worker has a core
to itself at best).

Missing values are refused as in the random forest (see models/forest.py): XGBoost
would route NaN down a learned default branch, but a NaN feature here means warm-up
or a broken feed, and the ensemble's models should refuse the same inputs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xgboost as xgb

from models.forest import N_CLASSES, check_X, check_y

DEFAULTS = dict(n_estimators=300, max_depth=6, learning_rate=0.1)
BOOSTER = "model.ubj"
PARAMS = "params.json"


class XGBoostModel:
    """Gradient-boosted trees, 3 classes (down / flat / up)."""

    def __init__(self, **params):
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown XGBoost parameters: {sorted(unknown)}")
        self.params = {**DEFAULTS, **params}
        self.booster: xgb.Booster | None = None
        self.n_features: int | None = None

    def fit(self, X, y, seed: int = 0) -> "XGBoostModel":
        X = check_X(X)
        y = check_y(y, len(X))
        train_params = {"objective": "multi:softprob", "num_class": N_CLASSES,
                        "tree_method": "hist", "nthread": 1, "seed": seed,
                        "max_depth": self.params["max_depth"], "eta": self.params["learning_rate"]}
        # the native API: XGBClassifier refuses labels that are not 0..k-1 without gaps,
        # and a training slice may lack a class
        self.booster = xgb.train(train_params, xgb.DMatrix(X, label=y, nthread=1),
                                 num_boost_round=self.params["n_estimators"])
        self.n_features = X.shape[1]
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n, 3) float64 probabilities (computed in float32 by XGBoost)."""
        if self.booster is None:
            raise RuntimeError("XGBoostModel: fit or load it first")
        X = check_X(X, self.n_features)
        p = self.booster.inplace_predict(X)
        return np.asarray(p, dtype=np.float64).reshape(len(X), N_CLASSES)

    def save(self, directory: Path) -> None:
        """``model.ubj`` (XGBoost's own binary format) and ``params.json``."""
        if self.booster is None:
            raise RuntimeError("XGBoostModel: nothing to save, fit it first")
        directory = Path(directory)
        self.booster.save_model(directory / BOOSTER)
        meta = {"model": "xgboost", "params": self.params, "n_features": self.n_features}
        (directory / PARAMS).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "XGBoostModel":
        directory = Path(directory)
        meta = json.loads((directory / PARAMS).read_text())
        model = cls(**meta["params"])
        model.n_features = int(meta["n_features"])
        model.booster = xgb.Booster(model_file=directory / BOOSTER)
        model.booster.set_param({"nthread": 1})
        return model
