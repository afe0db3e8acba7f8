"""The ensemble: one (n, 3) down / flat / up answer from the members' probabilities.

Two methods (``[model] ensemble`` in the config):

* ``soft_vote``: a weighted mean of the members' probabilities, the weights
  non-negative and summing to 1, chosen to minimise the log loss on the
  out-of-fold (walk-forward validation) predictions. The log loss of a mixture
  is convex in the weights, so SLSQP over the simplex finds the optimum; the
  result is then compared with every single member (a corner of the simplex)
  and the best is kept, so on the rows it was fitted on the ensemble's log loss
  is never above the best member's.
* ``stacking``: a multinomial logistic regression on the members' probabilities
  side by side (scikit-learn, lbfgs, L2 with C = 1). Its coefficients are saved
  and applied here with numpy (softmax of ``X @ coef.T + intercept``, which is
  what scikit-learn's predict_proba computes), so serving needs no pickle.

The members' names and their order are recorded; `predict_proba` takes a dict
name -> (n, 3) and refuses a different set of members. A row where any member
has NaN (a sequence model's first window-1 rows) gives NaN.

Saved as one JSON file, ``ensemble.json``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

METHODS = ("soft_vote", "stacking")
N_CLASSES = 3
FILE = "ensemble.json"


def log_loss(y, p) -> float:
    """scikit-learn's log loss over the classes 0, 1, 2, each row first divided by its sum:
    XGBoost's probabilities are float32, off 1 by more than scikit-learn's tolerance."""
    from sklearn.metrics import log_loss as sk_log_loss
    p = np.asarray(p, dtype=np.float64)
    return float(sk_log_loss(y, p / p.sum(axis=1, keepdims=True), labels=list(range(N_CLASSES))))


class Ensemble:
    """Combines member models' (n, 3) probabilities; see the module docstring."""

    def __init__(self, method: str = "soft_vote", seed: int = 0):
        if method not in METHODS:
            raise ValueError(f"ensemble method must be one of {', '.join(METHODS)}, got {method!r}")
        self.method = method
        self.seed = int(seed)
        self.members: list[str] = []
        self.weights: np.ndarray | None = None      # soft_vote: (m,)
        self.coef: np.ndarray | None = None         # stacking: (3, 3m)
        self.intercept: np.ndarray | None = None    # stacking: (3,)

    # -- fitting ----------------------------------------------------------------------
    def fit(self, member_probs: Mapping[str, np.ndarray], y) -> "Ensemble":
        """Learn the combination from the members' out-of-fold probabilities and the true classes."""
        if not member_probs:
            raise ValueError("the ensemble needs at least one member")
        self.members = list(member_probs)
        P = self._stack(member_probs)                       # (m, n, 3)
        y = np.asarray(y, dtype=np.int64)
        if y.shape != (P.shape[1],):
            raise ValueError(f"y has shape {y.shape}, the probabilities {P.shape[1]} rows")
        if not np.isfinite(P).all():
            raise ValueError("the ensemble is fitted on rows where every member has a prediction; "
                             "drop rows with NaN first")
        if self.method == "soft_vote":
            self.weights = _soft_vote_weights(P, y)
        else:
            self.coef, self.intercept = _stacking(P, y, self.seed)
        return self

    # -- prediction -------------------------------------------------------------------
    def predict_proba(self, member_probs: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n, 3) combined probabilities from the members' (n, 3) probabilities."""
        if not self.members:
            raise RuntimeError("Ensemble: fit or load it first")
        P = self._stack(member_probs)
        if self.method == "soft_vote":
            return np.einsum("m,mnk->nk", self.weights, P)
        X = np.concatenate(list(P), axis=1)                 # (n, 3m), members in recorded order
        z = X @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def outputs(self, member_probs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every member's own (n, 3) output next to the combined one (key ``"ensemble"``)."""
        out = {name: np.asarray(member_probs[name], dtype=np.float64) for name in self.members}
        out["ensemble"] = self.predict_proba(member_probs)
        return out

    def describe(self) -> dict:
        """Weights (soft vote) or coefficients (stacking), JSON-ready, for the report."""
        if self.method == "soft_vote":
            return {"method": self.method, "members": list(self.members),
                    "weights": {m: float(w) for m, w in zip(self.members, self.weights)}}
        return {"method": self.method, "members": list(self.members),
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
                "inputs": [f"{m}:{c}" for m in self.members for c in ("down", "flat", "up")]}

    # -- persistence ------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """``ensemble.json`` into an existing directory."""
        if not self.members:
            raise RuntimeError("Ensemble: nothing to save, fit it first")
        doc = {"model": "ensemble", "method": self.method, "seed": self.seed,
               "members": self.members, "classes": ["down", "flat", "up"]}
        if self.method == "soft_vote":
            doc["weights"] = self.weights.tolist()
        else:
            doc["coef"] = self.coef.tolist()
            doc["intercept"] = self.intercept.tolist()
        # repr of floats round-trips exactly, so a reloaded ensemble predicts bit for bit the same
        (Path(directory) / FILE).write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "Ensemble":
        path = Path(directory) / FILE
        doc = json.loads(path.read_text())
        ens = cls(doc["method"], doc.get("seed", 0))
        ens.members = list(doc["members"])
        m = len(ens.members)
        if ens.method == "soft_vote":
            ens.weights = np.asarray(doc["weights"], dtype=np.float64)
            if ens.weights.shape != (m,):
                raise ValueError(f"{path}: {len(ens.weights)} weights for {m} members")
        else:
            ens.coef = np.asarray(doc["coef"], dtype=np.float64)
            ens.intercept = np.asarray(doc["intercept"], dtype=np.float64)
            if ens.coef.shape != (N_CLASSES, N_CLASSES * m) or ens.intercept.shape != (N_CLASSES,):
                raise ValueError(f"{path}: stacking coefficients of shape {ens.coef.shape} "
                                 f"do not fit {m} members")
        return ens

    # -- helpers ----------------------------------------------------------------------
    def _stack(self, member_probs: Mapping[str, np.ndarray]) -> np.ndarray:
        if set(member_probs) != set(self.members):
            raise ValueError(f"the ensemble combines {', '.join(self.members)}; "
                             f"got {', '.join(member_probs) or 'none'}")
        arrays = [np.asarray(member_probs[name], dtype=np.float64) for name in self.members]
        n = len(arrays[0])
        for name, a in zip(self.members, arrays):
            if a.shape != (n, N_CLASSES):
                raise ValueError(f"member {name!r}: probabilities must have shape ({n}, 3), "
                                 f"got {a.shape}")
        return np.stack(arrays)


def _soft_vote_weights(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the log loss of sum_m w_m P_m."""
    m = P.shape[0]
    if m == 1:
        return np.ones(1)
    from scipy.optimize import minimize
    eps = np.finfo(np.float64).eps                    # scikit-learn's log_loss clips there too
    true = P[:, np.arange(P.shape[1]), y].T           # (n, m): each member's probability of the truth

    def loss(w):
        q = np.maximum(true @ w, eps)
        return -np.mean(np.log(q)), -(true / q[:, None]).mean(axis=0)

    res = minimize(loss, np.full(m, 1.0 / m), jac=True, method="SLSQP",
                   bounds=[(0.0, 1.0)] * m,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                 "jac": lambda w: np.ones_like(w)}],
                   options={"ftol": 1e-12, "maxiter": 500})
    w = np.clip(res.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)
    # keep the best of the optimum and every single member (scored as the report scores them)
    candidates = [w] + list(np.eye(m))
    scores = [log_loss(y, np.einsum("m,mnk->nk", c, P)) for c in candidates]
    return candidates[int(np.argmin(scores))]


def _stacking(P: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    missing = sorted(set(range(N_CLASSES)) - set(np.unique(y).tolist()))
    if missing:
        names = ", ".join(("down", "flat", "up")[k] for k in missing)
        raise ValueError(f"stacking needs every class in the validation folds; {names} never occurs "
                         "there (use ensemble = \"soft_vote\", more data or another label_threshold)")
    X = np.concatenate(list(P), axis=1)
    lr = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(X, y)
    return np.asarray(lr.coef_, dtype=np.float64), np.asarray(lr.intercept_, dtype=np.float64)
