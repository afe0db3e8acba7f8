"""XGBoost: multi:softprob over 3 classes, trained by XGBoost, served from flat arrays
by one numba kernel.

``Booster.inplace_predict`` costs about 0.6 ms per call even for one row (per-call
overhead), and at 64 rows about 1.5 ms for the 900 trees (300 rounds x 3 classes,
depth 6): it walks each row down each tree, one dependent load after another. At fit
and at load the trees are exported from the booster's JSON to flat arrays (all
trees' nodes end to end, as for the random forest in models/forest.py), and
``predict_proba`` walks them in one compiled call: tree by tree, one level at a
time for the whole batch, so that the rows' walks overlap instead of waiting on
each other. The booster is kept for saving (``model.ubj``, XGBoost's own format);
the arrays are rebuilt from it at load, never saved.

Same answer as ``inplace_predict``, bit for bit in float32 in practice (the tests
check 1e-6 after fit and after load; a self-check at fit and load compares a few
probe rows within 1e-6 and raises if the export no longer matches the booster,
e.g. after an XGBoost upgrade changes the JSON). What XGBoost does, and the kernel
does the same way (checked against ``predict(..., output_margin=True)`` with
XGBoost 3.2): the input is cast to float32; a row goes left when
``x < split_condition``; a leaf's value is its ``split_conditions`` entry (not
``base_weights``, which differs from it at leaves made by pruning); each class's
margin starts from ``base_score`` (3.x stores one raw margin per class, e.g.
"[2.1E-1,-7E-2,-1.5E-1]"; older versions one value such as "5E-1", the raw margin
for softprob) and adds its trees' leaves in float32 in tree order (``tree_info``
gives each tree's class); then XGBoost's softmax (max subtracted, ``expf``, sum in
double, divided in float32). Returned as float64.

Missing values are refused as in the random forest (see models/forest.py): XGBoost
would route NaN down a learned default branch (``default_left``), but a NaN feature
here means warm-up or a broken feed, and the ensemble's models should refuse the same
inputs. So the kernel implements only the threshold test, and needs finite inputs:
a leaf is a node that sends every finite value back to itself (threshold +inf), so
each tree is walked a fixed number of levels, its depth.
"""
from __future__ import annotations

import json
from pathlib import Path

import numba
import numpy as np
import xgboost as xgb

from models.forest import N_CLASSES, check_X, check_y

DEFAULTS = dict(n_estimators=300, max_depth=6, learning_rate=0.1)
BOOSTER = "model.ubj"
PARAMS = "params.json"
CHECK_ATOL = 1e-6       # the self-check's tolerance, at fit and load


@numba.njit(cache=True, nogil=True)
def _boost_proba(X, roots, depth, tree_class, left, feature, threshold, value, base, out):
    """XGBoost's multi:softprob probabilities for each row of float32 ``X``.
    ``left[node]`` is the left child as a global index, the right one next to it; at a
    leaf, ``left`` is the leaf itself and ``threshold`` +inf, so walking ``depth[t]``
    levels ends at the row's leaf whatever its depth. Tree by tree and level by level
    over the whole batch: the rows' walks are independent and overlap. Margins summed
    in float32 in tree order from ``base``, then softmax as XGBoost's."""
    n, n_classes = out.shape
    margin = np.empty((n, n_classes), np.float32)
    for i in range(n):
        margin[i, :] = base
    node = np.empty(n, np.int64)
    for t in range(roots.shape[0]):
        node[:] = roots[t]
        for _ in range(depth[t]):
            for i in range(n):
                j = node[i]
                node[i] = left[j] + np.int64(X[i, feature[j]] >= threshold[j])
        k = tree_class[t]
        for i in range(n):
            margin[i, k] += value[node[i]]
    for i in range(n):
        wmax = margin[i, 0]
        for k in range(1, n_classes):
            wmax = max(wmax, margin[i, k])
        wsum = 0.0                                   # double, as XGBoost's
        for k in range(n_classes):
            margin[i, k] = np.exp(margin[i, k] - wmax)
            wsum += margin[i, k]
        for k in range(n_classes):
            out[i, k] = margin[i, k] / np.float32(wsum)


class XGBoostModel:
    """Gradient-boosted trees, 3 classes (down / flat / up), served by a numba kernel."""

    def __init__(self, **params):
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown XGBoost parameters: {sorted(unknown)}")
        self.params = {**DEFAULTS, **params}
        self.booster: xgb.Booster | None = None     # kept for save and the self-check
        self.n_features: int | None = None
        self._arrays: dict[str, np.ndarray] | None = None

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
        self._export()
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n, 3) float64 probabilities (computed in float32, as XGBoost does)."""
        if self._arrays is None:
            raise RuntimeError("XGBoostModel: fit or load it first")
        X = check_X(X, self.n_features)
        with np.errstate(over="ignore"):                   # refused just below
            X32 = np.ascontiguousarray(X, dtype=np.float32)  # as XGBoost compares
        if not np.isfinite(X32).all():
            raise ValueError("X has values beyond float32's range, which the trees compare in")
        a = self._arrays
        out = np.empty((len(X32), N_CLASSES))
        _boost_proba(X32, a["roots"], a["depth"], a["tree_class"], a["left"], a["feature"],
                     a["threshold"], a["value"], a["base"], out)
        return out

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
        model._export()
        return model

    def _export(self) -> None:
        """The flat arrays from the booster, checked against ``inplace_predict`` on probe
        rows (each feature at its split thresholds: the edge of every comparison)."""
        self._arrays = export(self.booster)
        probe = probe_rows(self._arrays, self.n_features)
        ours = self.predict_proba(probe)
        theirs = self.booster.inplace_predict(probe).reshape(len(probe), N_CLASSES)
        worst = float(np.max(np.abs(ours - theirs)))
        if not worst <= CHECK_ATOL:
            self._arrays = None
            raise ValueError(f"XGBoost {xgb.__version__}: the exported trees differ from the "
                             f"booster's predictions by {worst:.3g} (> {CHECK_ATOL:g}); "
                             "has its JSON model format changed?")


_DTYPES = {"roots": np.int64, "depth": np.int64, "tree_class": np.int64, "left": np.int64,
           "feature": np.int64, "threshold": np.float32, "value": np.float32,
           "base": np.float32}


def export(booster: xgb.Booster) -> dict[str, np.ndarray]:
    """A multi:softprob booster's trees as flat arrays: every tree's nodes end to end,
    renumbered breadth first so that a node's children sit side by side (``left``, and
    the right child at ``left + 1``); a leaf points to itself with threshold +inf and
    holds its value in ``value`` (0 at splits); ``depth`` per tree, its class in
    ``tree_class``, and the per-class base margin ``base``."""
    learner = json.loads(bytes(booster.save_raw("json")))["learner"]
    objective = learner["objective"]["name"]
    if objective != "multi:softprob" or int(learner["learner_model_param"]["num_class"]) != N_CLASSES:
        raise ValueError(f"expected a multi:softprob booster over {N_CLASSES} classes, got {objective}")
    model = learner["gradient_booster"]["model"]
    roots, depth, left, feature, threshold, value = [], [], [], [], [], []
    offset = 0
    for tree in model["trees"]:
        if any(tree["split_type"]):
            raise ValueError("categorical splits are not supported")
        lc, rc = tree["left_children"], tree["right_children"]
        order, level = [0], [0]                     # breadth first: siblings side by side
        for v, d in zip(order, level):              # (the lists grow while read)
            if lc[v] != -1:
                order += (lc[v], rc[v])
                level += (d + 1, d + 1)
        order = np.array(order)
        new = np.zeros(len(lc), np.int64)           # old node id -> position in ``order``
        new[order] = np.arange(len(order))
        split = np.array(lc)[order] != -1
        cond = np.array(tree["split_conditions"], np.float32)[order]
        roots.append(offset)
        depth.append(max(level))
        left.append(offset + np.where(split, new[np.array(lc)[order]], np.arange(len(order))))
        feature.append(np.where(split, np.array(tree["split_indices"])[order], 0))
        threshold.append(np.where(split, cond, np.float32(np.inf)))
        value.append(np.where(split, np.float32(0.0), cond))
        offset += len(order)
    arrays = {"roots": roots, "depth": depth, "tree_class": model["tree_info"],
              "left": np.concatenate(left), "feature": np.concatenate(feature),
              "threshold": np.concatenate(threshold), "value": np.concatenate(value),
              "base": base_margin(learner["learner_model_param"]["base_score"])}
    return {k: np.ascontiguousarray(v, dtype=_DTYPES[k]) for k, v in arrays.items()}


def base_margin(base_score: str | list) -> np.ndarray:
    """(3,) float32 from the JSON's ``base_score``: "[a,b,c]" or a list (one margin per
    class, XGBoost >= 3.0), or one value for every class ("5E-1", older versions)."""
    if isinstance(base_score, str):
        base_score = base_score.strip("[]").split(",")
    elif not isinstance(base_score, list):
        base_score = [base_score]
    base = np.array([float(v) for v in base_score], dtype=np.float32)
    if base.size == 1:
        base = np.repeat(base, N_CLASSES)
    if base.shape != (N_CLASSES,):
        raise ValueError(f"base_score {base_score!r}: expected 1 or {N_CLASSES} values")
    return base


def probe_rows(arrays: dict[str, np.ndarray], n_features: int, rows: int = 16) -> np.ndarray:
    """``rows`` inputs whose feature j runs over the thresholds the trees test j against
    (0 for a feature never split on): rows that land exactly on split conditions."""
    split = np.isfinite(arrays["threshold"])
    out = np.zeros((rows, n_features))
    for j in range(n_features):
        t = np.unique(arrays["threshold"][split & (arrays["feature"] == j)])
        if len(t):
            out[:, j] = t[np.arange(rows) * len(t) // rows]
    return out
