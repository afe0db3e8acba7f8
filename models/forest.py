"""Random forest: trained with scikit-learn, served from flat arrays by one numba kernel.

scikit-learn's ``predict_proba`` costs about 6 ms per call with ``n_jobs=1``
(25 ms with ``n_jobs=-1``) on a 100-tree forest whatever the batch, nearly all of
it per-call overhead: input validation and one Python call per tree. At fit the
trees are exported to flat arrays (all trees' nodes end to end) and
``predict_proba`` walks every tree for the whole batch in one compiled call.

Same answer as scikit-learn's, bit for bit in practice (the tests check 1e-12):
the input is cast to float32 as scikit-learn does before comparing with the
float64 thresholds (``x <= threshold`` goes left), each tree contributes its
leaf's class fractions (``tree_.value``, already normalised by scikit-learn
>= 1.4.1; divided by its sum for older versions, as their predict_proba did),
summed in tree order and divided by the number of trees.

Missing values are refused (ValueError), in ``fit`` and in ``predict_proba``.
scikit-learn >= 1.4 trees do accept NaN, sending it down a branch chosen at fit
time, but a NaN feature here means an indicator still in warm-up or a broken
feed, and a forest trained without NaN would route it down a branch no training
sample took; a clear error is better than a confident answer to that. The fast
path therefore implements only the threshold test. Infinities are refused too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numba
import numpy as np

N_CLASSES = 3                       # down / flat / up
DEFAULTS = dict(n_estimators=100, max_depth=8, min_samples_leaf=5)
ARRAYS = "forest.npz"
PARAMS = "params.json"


@numba.njit(cache=True, nogil=True)
def _forest_proba(X, roots, children, feature, threshold, proba, out):
    """Average over trees of the leaf class fractions, for each row of float32 ``X``.
    ``children[node]`` = (left, right) as global node indices, (-1, -1) at a leaf.
    Tree by tree (its nodes stay in cache for the whole batch), each row's sum in
    tree order as scikit-learn's; the child is picked by index, without a branch."""
    n_trees = roots.shape[0]
    n_classes = proba.shape[1]
    out[:] = 0.0
    for t in range(n_trees):
        for i in range(X.shape[0]):
            node = roots[t]
            while children[node, 0] != -1:
                node = children[node, np.int64(X[i, feature[node]] > threshold[node])]
            for k in range(n_classes):
                out[i, k] += proba[node, k]
    out /= n_trees


def check_X(X, n_features: int | None = None, who: str = "the tree models") -> np.ndarray:
    """2-D float64 array, all finite, with ``n_features`` columns when given; the
    one input check of every model that takes rows (the error names ``who``)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (rows x features), got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, the model was trained on {n_features}")
    if not np.isfinite(X).all():
        bad = sorted({int(j) for j in np.nonzero(~np.isfinite(X))[1]})
        raise ValueError(f"X contains NaN or infinity (feature columns {bad}): {who} "
                         "cannot use missing values; drop warm-up rows before training or predicting")
    return X


def check_y(y, n_rows: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n_rows,):
        raise ValueError(f"y must have shape ({n_rows},), got {y.shape}")
    if not np.isin(y, (0, 1, 2)).all():
        raise ValueError("y must hold the classes 0, 1, 2 (down, flat, up)")
    return y.astype(np.int64)


class RandomForestModel:
    """scikit-learn random forest, 3 classes, served by a single-threaded numba kernel."""

    def __init__(self, **params):
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown random forest parameters: {sorted(unknown)}")
        self.params = {**DEFAULTS, **params}
        self.estimator = None          # the sklearn forest after fit; None after load
        self.n_features: int | None = None
        self._arrays: dict[str, np.ndarray] | None = None

    def fit(self, X, y, seed: int = 0) -> "RandomForestModel":
        from sklearn.ensemble import RandomForestClassifier   # training only
        X = check_X(X)
        y = check_y(y, len(X))
        forest = RandomForestClassifier(n_jobs=1, random_state=seed, **self.params).fit(X, y)
        self.estimator = forest
        self.n_features = X.shape[1]
        self._arrays = export(forest)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n, 3) float64 probabilities of down / flat / up."""
        if self._arrays is None:
            raise RuntimeError("RandomForestModel: fit or load it first")
        X = check_X(X, self.n_features)
        X32 = np.ascontiguousarray(X, dtype=np.float32)    # as scikit-learn compares
        if not np.isfinite(X32).all():
            raise ValueError("X has values beyond float32's range, which the trees compare in")
        a = self._arrays
        out = np.empty((len(X32), N_CLASSES))
        _forest_proba(X32, a["roots"], a["children"], a["feature"], a["threshold"], a["proba"], out)
        return out

    def save(self, directory: Path) -> None:
        """``forest.npz`` (flat arrays, no pickle) and ``params.json`` into an existing directory."""
        if self._arrays is None:
            raise RuntimeError("RandomForestModel: nothing to save, fit it first")
        directory = Path(directory)
        np.savez(directory / ARRAYS, **self._arrays)
        meta = {"model": "random_forest", "params": self.params, "n_features": self.n_features}
        (directory / PARAMS).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "RandomForestModel":
        directory = Path(directory)
        meta = json.loads((directory / PARAMS).read_text())
        model = cls(**meta["params"])
        model.n_features = int(meta["n_features"])
        with np.load(directory / ARRAYS, allow_pickle=False) as z:
            model._arrays = {k: np.ascontiguousarray(z[k]) for k in _DTYPES}
        for k, dtype in _DTYPES.items():
            if model._arrays[k].dtype != dtype:
                raise ValueError(f"{directory / ARRAYS}: {k} is {model._arrays[k].dtype}, "
                                 f"expected {dtype}")
        return model


_DTYPES = {"roots": np.int64, "children": np.int64, "feature": np.int64,
           "threshold": np.float64, "proba": np.float64}


def export(forest) -> dict[str, np.ndarray]:
    """A fitted RandomForestClassifier as flat arrays: every tree's nodes end to end,
    children (n_nodes, 2) as global indices (-1 at leaves), leaf class fractions in 3 columns
    (a class absent from training gets a column of zeros)."""
    classes = forest.classes_.astype(np.int64)
    roots, children, feature, threshold, proba = [], [], [], [], []
    offset = 0
    for est in forest.estimators_:
        t = est.tree_
        leaf = t.children_left == -1
        roots.append(offset)
        children.append(np.where(leaf[:, None], -1,
                                 np.column_stack([t.children_left, t.children_right]) + offset))
        feature.append(np.where(leaf, 0, t.feature))          # leaves: -2 in sklearn, unused
        threshold.append(t.threshold)
        value = t.value[:, 0, :]
        total = value.sum(axis=1, keepdims=True)
        if not np.allclose(total, 1.0):     # scikit-learn < 1.4.1 stored weighted counts
            value = value / np.where(total == 0.0, 1.0, total)
        p = np.zeros((t.node_count, N_CLASSES))
        p[:, classes] = value
        proba.append(p)
        offset += t.node_count
    arrays = {"roots": np.array(roots), "children": np.concatenate(children),
              "feature": np.concatenate(feature),
              "threshold": np.concatenate(threshold), "proba": np.concatenate(proba)}
    return {k: np.ascontiguousarray(v, dtype=_DTYPES[k]) for k, v in arrays.items()}
