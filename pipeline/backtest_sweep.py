"""`pipeline backtest --sweep / --optimize`: many backtests of one config, each with some
parameters changed, to see which settings the strategy's result depends on.

* ``--sweep section.key=v1,v2,...`` (a bare key is in ``[strategy]``), repeatable: the grid
  of every combination, each point a full backtest (pipeline/backtest.py) of the config
  with those values. ``--sweep key=lo..hi`` is a range, for ``--optimize`` only.
* ``--optimize N``: a Bayesian search (Optuna's TPE sampler, seeded by ``--seed``) over
  the same parameters, lists as categorical choices and ranges as int/float ranges,
  until the study holds N finished trials. The study lives in SQLite (``--study``,
  default ``<out>/study.sqlite``) so a second run resumes it instead of starting over.
* The objective is ``--metric`` (any numeric key of backtest_report.metrics()["overall"];
  default sharpe), of the plain backtest or, with ``--walk-forward``, of the walk-forward
  out-of-sample run (pipeline/backtest_checks.walk_forward).

Every parameter and value is checked against the config schema and its validation
before the data is read, so a typo costs a line, not an hour of sweep. A combination the
validation refuses (exit_margin above enter_margin, say) is skipped in a grid (and
counted) and pruned in a search; a value that no combination accepts is an error.

Where the backtests run (the ``Runner`` classes, all with one ``map``):
in this process (``--jobs 1``), in a pool of ``--jobs`` spawned processes, or as Ray
tasks (``--ray ADDRESS``, ``--ray local`` starting a local instance). The data is read
once and shared: pickled once per pool process, put once in Ray's object store.
A search asks Optuna for a batch of ``--jobs`` trials at a time from this process, runs
the batch on the runner and tells the results back; only this process touches the
SQLite file (no lock contention), and the trials are the same whoever runs them. The
first ten trials are the TPE sampler's seeded random start, so they do not depend on
the batch size; after that a batch of N is sampled without the results of its own
members, so --jobs changes which points later trials try (as in any parallel search).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import difflib
import itertools
import json
import math
import time
import typing
from dataclasses import dataclass
from pathlib import Path

from .config import Config, validate
from .errors import ConfigError, UserError

# metrics where less is better; every other one is maximised
LOWER_IS_BETTER = frozenset({"max_drawdown", "max_drawdown_days", "longest_drawdown_days",
                             "volatility", "fees", "slippage", "turnover", "turnover_per_year"})
STUDY_NAME = "tickpipe-backtest"
SWEEP_JSON, SWEEP_CSV = "sweep.json", "sweep.csv"
SHOWN = ("total_return", "sharpe", "max_drawdown", "trades")     # the table's figures
_TYPES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


# -- parameters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One ``--sweep`` parameter: a list of values, or a range (low, high) for --optimize."""
    name: str                   # "strategy.enter_margin"
    section: str
    key: str
    kind: type                  # int, float, bool or str: the config field's type
    values: tuple = ()
    low: float | int | None = None
    high: float | int | None = None

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def corners(self) -> tuple:
        """The values a grid tries, or a range's two ends (what validation checks)."""
        return (self.low, self.high) if self.is_range else self.values

    def describe(self) -> str:
        return (f"{self.low!r}..{self.high!r}" if self.is_range
                else ",".join(repr(v) for v in self.values))


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)
            if dataclasses.is_dataclass(hints[f.name])}


def _value(raw: str, kind: type, where: str):
    raw = raw.strip()
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false"):
                raise ValueError
            return raw.lower() == "true"
        if kind is int:
            return int(raw)
        if kind is float:
            v = float(raw)
            if not math.isfinite(v):
                raise ValueError
            return v
        return raw
    except ValueError:
        raise UserError(f"--sweep {where}: {raw!r} is not {_TYPES[kind]}") from None


def _suggest(name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(known)})"


def parse_param(spec: str) -> Param:
    """``section.key=v1,v2`` or ``section.key=lo..hi`` (a bare key: [strategy]) against the
    config schema: the section and key must exist and be a number, integer, bool or string."""
    name, eq, raw = spec.partition("=")
    name = name.strip()
    if not eq or not name or not raw.strip():
        raise UserError(f"--sweep {spec!r}: give PARAM=v1,v2,... or PARAM=lo..hi "
                        f"(e.g. strategy.enter_margin=0.05,0.1)")
    section, _, key = name.rpartition(".")
    section = section or "strategy"
    sections = _sections()
    if section not in sections:
        raise UserError(f"--sweep {name}: no config section '{section}'{_suggest(section, list(sections))}")
    hints = typing.get_type_hints(sections[section])
    if key not in hints:
        raise UserError(f"--sweep {name}: no key '{key}' in [{section}]{_suggest(key, list(hints))}")
    kind = hints[key]
    if kind not in _TYPES:
        raise UserError(f"--sweep {section}.{key}: a list or table cannot be swept; give a number, "
                        f"integer, true/false or string key")
    full = f"{section}.{key}"
    if ".." in raw:
        if kind not in (int, float):
            raise UserError(f"--sweep {full}={raw}: a range lo..hi needs a number, "
                            f"and {full} is {_TYPES[kind]}")
        lo, _, hi = raw.partition("..")
        low, high = _value(lo, kind, f"{full}={raw}"), _value(hi, kind, f"{full}={raw}")
        if not low < high:
            raise UserError(f"--sweep {full}={raw}: the range's low end must be below its high end")
        return Param(full, section, key, kind, low=low, high=high)
    values = tuple(_value(v, kind, f"{full}={raw}") for v in raw.split(","))
    if len(set(values)) != len(values):
        raise UserError(f"--sweep {full}={raw}: a value is given twice")
    return Param(full, section, key, kind, values=values)


def configured(cfg: Config, point: dict) -> Config:
    """A copy of ``cfg`` with the point's values set ({"strategy.enter_margin": 0.1}),
    validated as a config file would be: a refused value is a ConfigError."""
    out = copy.deepcopy(cfg)
    for name, value in point.items():
        section, _, key = name.partition(".")
        setattr(getattr(out, section), key, value)
    validate(out)
    return out


def _digest(point: dict) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:12]


def _label(point: dict) -> str:
    return " ".join(f"{k}={v!r}" for k, v in point.items())


def check_params(cfg: Config, params: list[Param]) -> list[dict]:
    """Validate every combination of the values (a range: its two ends) before anything
    runs. A value no combination accepts is a UserError with the validation's reason;
    the combinations that fail are returned (a grid skips them, a search prunes them)."""
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"--sweep {dup} is given twice: give its values in one --sweep")
    refused, works, why = [], set(), {}
    for combo in itertools.product(*(p.corners() for p in params)):
        point = dict(zip(names, combo))
        try:
            configured(cfg, point)
        except ConfigError as e:
            refused.append(point)
            for item in point.items():
                why.setdefault(item, str(e))
            continue
        works.update(point.items())
    for p in params:
        for v in p.corners():
            if (p.name, v) not in works:
                raise UserError(f"--sweep {p.name}={v!r}: {why[(p.name, v)]}")
    return refused


def metric_names() -> list[str]:
    """The numeric figures of backtest_report.metrics()["overall"], read from the function
    itself (on a two-bar flat run) so a new figure is a valid --metric at once."""
    import numpy as np
    from .backtest_report import FILL_ROW, BacktestResult, metrics
    r = BacktestResult(symbols=["X"], bar_seconds=60.0, capital=1.0, ts_ns=np.array([0, 60 * 10**9]),
                       close=np.ones((2, 1)), position=np.zeros((2, 1)), equity=np.ones(2),
                       fills=np.zeros(0, FILL_ROW))
    return [k for k, v in metrics(r)["overall"].items() if not isinstance(v, (dict, list, str))]


def check_metric(name: str) -> None:
    known = metric_names()
    if name not in known:
        raise UserError(f"--metric {name}: not a figure of the backtest report{_suggest(name, known)}")


# -- one point ----------------------------------------------------------------------------------
@dataclass
class Job:
    """What every point shares: the config, the data read once and, for --walk-forward,
    its options (and the windows trained once, when the points can share them)."""
    cfg: Config
    data: object                         # pipeline.backtest.MarketData
    walk: dict | None = None             # train_bars, test_bars, out_dir[, windows]; None: plain backtest


# the sections whose keys do not change what the models learn: a walk-forward sweep of
# these alone trains each window once and serves the same models at every point
NOT_TRAINED_ON = frozenset({"strategy", "execution", "risk"})


def train_windows(job: Job) -> list[tuple]:
    """Train the walk-forward windows once, by running pipeline.backtest_checks.walk_forward
    on the unchanged config (its registries stay in the walk-forward out_dir), and return
    them as (train_from_ns, start_ns, end_ns, registry) for `serve_windows`. walk_forward
    takes no trained windows, so they are read back from its result's periods."""
    from .backtest_checks import walk_forward
    w = job.walk
    base = walk_forward(job.cfg, job.data, w["train_bars"], w["test_bars"], w["out_dir"])
    bar_ns = int(round(job.cfg.indicators.bar_seconds * 1e9))
    return [(p["train_from_ns"], p["from_ns"] - bar_ns, p["to_ns"], p["registry"])
            for p in base.meta["periods"]]


def serve_windows(cfg: Config, data, windows: list[tuple]):
    """walk_forward's run without its training: the backtest served by each window's
    ensemble in its window (backtest_checks.WalkForwardModel), trading from the first
    test bar. The same fills as walk_forward with the same trained windows (a test says so)."""
    from dataclasses import replace
    from models.serving import EnsembleModel
    from .backtest import run_backtest
    from .backtest_checks import WalkForwardModel, Window, model_window
    from .backtest_report import traded_part
    from .config import feature_names
    bar_ns = int(round(cfg.indicators.bar_seconds * 1e9))
    wins = [Window(a, s, e, Path(r)) for a, s, e, r in windows]
    names, n = feature_names(cfg), len(data.symbols)

    def load(registry: Path):
        return EnsembleModel(registry, names, n, bar_seconds=cfg.indicators.bar_seconds, symbols=data.symbols)

    model = WalkForwardModel(wins, load, model_window(cfg) * bar_ns)
    played = replace(data, ticks=data.ticks[data.ticks["ts_exchange_ns"] < wins[-1].end_ns])
    result = run_backtest(cfg, played, model=model, trade_from_ns=wins[0].start_ns + bar_ns)
    return traded_part(result, wins[0].start_ns + bar_ns)


def evaluate(job: Job, point: dict) -> dict:
    """One point's backtest and its report figures (numbers only, JSON-safe)."""
    from .backtest_report import fingerprint, json_safe, metrics
    cfg = configured(job.cfg, point)
    t0 = time.perf_counter()
    if job.walk is not None and job.walk.get("windows"):
        result = serve_windows(cfg, job.data, job.walk["windows"])
    elif job.walk is not None:              # a model or indicator key swept: train for this point
        from .backtest_checks import walk_forward
        w = job.walk
        folder = Path(w["out_dir"]) / ("point_" + _digest(point))
        result = walk_forward(cfg, job.data, w["train_bars"], w["test_bars"], folder)
    else:
        from .backtest import run_backtest
        result = run_backtest(cfg, job.data)
    overall = metrics(result)["overall"]
    return {"params": point, "fingerprint": fingerprint(result.fills), "fills": int(len(result.fills)),
            "seconds": round(time.perf_counter() - t0, 3),
            "metrics": json_safe({k: v for k, v in overall.items() if not isinstance(v, (dict, list))})}


# -- where points run ----------------------------------------------------------------------------
class SerialRunner:
    """In this process, one point after another."""
    workers = 1

    def __init__(self, job: Job):
        self.job = job

    def map(self, points: list[dict]) -> list[dict]:
        return [evaluate(self.job, p) for p in points]

    def close(self) -> None:
        pass


_JOB: Job | None = None


def _init_worker(job: Job) -> None:
    global _JOB
    _JOB = job


def _evaluate_here(point: dict) -> dict:
    return evaluate(_JOB, point)


class PoolRunner:
    """``workers`` spawned processes (spawn, as the rest of tickpipe: no forked copies of
    threads or open files); each gets the job (data included) once, at its start."""

    def __init__(self, job: Job, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        self.workers = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                        initializer=_init_worker, initargs=(job,))

    def map(self, points: list[dict]) -> list[dict]:
        return list(self.pool.map(_evaluate_here, points))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayRunner:
    """Ray tasks on an existing cluster (``address``, as ray.init takes it) or on a local
    instance (``"local"``: 2 CPUs, no dashboard). The job goes into the object store once;
    each task takes it by reference. The cluster's nodes need tickpipe installed, and the
    files the config names (model artifacts) at the same paths. Shut down on close, so a
    local instance leaves no process behind."""

    def __init__(self, job: Job, address: str, workers: int | None):
        try:
            import ray
        except ImportError:
            raise UserError("--ray needs the ray package: pip install 'tickpipe[scale]'") from None
        self.ray = ray
        try:
            if address == "local":
                ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
            else:
                ray.init(address=address, logging_level="warning")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"--ray {address}: cannot connect to a Ray cluster: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.job = ray.put(job)
        self.task = ray.remote(num_cpus=1)(evaluate)

    def map(self, points: list[dict]) -> list[dict]:
        return self.ray.get([self.task.remote(self.job, p) for p in points])

    def close(self) -> None:
        self.ray.shutdown()


def make_runner(job: Job, jobs: int | None, ray: str | None):
    if ray:
        return RayRunner(job, ray, jobs)
    if (jobs or 1) > 1:
        return PoolRunner(job, jobs)
    return SerialRunner(job)


# -- the grid ------------------------------------------------------------------------------------
def _sort(rows: list[dict], metric: str) -> list[dict]:
    """Best first by the metric; a point where it is undefined (None) last."""
    sign = 1 if metric in LOWER_IS_BETTER else -1
    return sorted(rows, key=lambda r: (r["metrics"].get(metric) is None,
                                       sign * (r["metrics"].get(metric) or 0.0)))


def grid(cfg: Config, job: Job, params: list[Param], metric: str, runner) -> dict:
    """Every combination of the lists (that the config accepts), sorted by the metric."""
    if any(p.is_range for p in params):
        p = next(p for p in params if p.is_range)
        raise UserError(f"--sweep {p.name}={p.describe()} is a range: give --optimize N to search it, "
                        f"or list the values for a grid")
    refused = check_params(cfg, params)
    names = [p.name for p in params]
    points = [dict(zip(names, c)) for c in itertools.product(*(p.values for p in params))]
    points = [p for p in points if p not in refused]
    t0 = time.perf_counter()
    rows = runner.map(points)
    seconds = time.perf_counter() - t0
    return {"kind": "grid", "metric": metric, "params": {p.name: p.describe() for p in params},
            "points": _sort(rows, metric), "skipped": [{"params": p, "why": _why(cfg, p)} for p in refused],
            "seconds": round(seconds, 3), "workers": runner.workers}


def _why(cfg: Config, point: dict) -> str:
    try:
        configured(cfg, point)
    except ConfigError as e:
        return str(e)
    return ""


# -- the search ----------------------------------------------------------------------------------
def _suggest_point(trial, params: list[Param]) -> dict:
    point = {}
    for p in params:
        if p.is_range and p.kind is int:
            point[p.name] = trial.suggest_int(p.name, p.low, p.high)
        elif p.is_range:
            point[p.name] = trial.suggest_float(p.name, p.low, p.high)
        else:
            point[p.name] = trial.suggest_categorical(p.name, list(p.values))
    return point


def optimize(cfg: Config, job: Job, params: list[Param], metric: str, trials: int, study_path: Path,
             seed: int, runner, setup: dict) -> dict:
    """Run the study in ``study_path`` up to ``trials`` finished trials (complete or pruned)
    and return all of them. ``setup`` (parameters, metric, data, objective) is stored with
    the study; a rerun with another setup is refused, since its trials would not compare.
    Trials left running by an interrupted run are marked failed and run again."""
    import optuna
    from optuna.trial import TrialState
    check_params(cfg, params)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_path.parent.mkdir(parents=True, exist_ok=True)
    direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    study = optuna.create_study(study_name=STUDY_NAME, storage=f"sqlite:///{study_path.resolve()}",
                                direction=direction, load_if_exists=True)
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", setup)
    elif stored != json.loads(json.dumps(setup)):
        diff = [k for k in setup if stored.get(k) != json.loads(json.dumps(setup[k]))]
        raise UserError(f"--study {study_path} was made with other {', '.join(diff)}; give another "
                        f"--study (or the same settings) to resume it")
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.params:
            study.enqueue_trial(t.params)
        study.tell(t.number, state=TrialState.FAIL)
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    before = len(study.get_trials(deepcopy=False, states=done))
    # seeded by what the study holds: a resumed run draws new points, not the first run's again
    study.sampler = optuna.samplers.TPESampler(seed=seed + before)
    t0, ran = time.perf_counter(), 0
    while (left := trials - len(study.get_trials(deepcopy=False, states=done))) > 0:
        batch, points = [], []
        for _ in range(min(left, runner.workers)):
            trial = study.ask()
            point = _suggest_point(trial, params)
            why = _why(cfg, point)
            if why:                                   # a combination the config refuses
                trial.set_user_attr("why", why)
                study.tell(trial, state=TrialState.PRUNED)
                continue
            batch.append(trial)
            points.append(point)
        try:
            results = runner.map(points) if points else []
        except BaseException:
            for trial in batch:
                study.tell(trial, state=TrialState.FAIL)
            raise
        for trial, row in zip(batch, results):
            for k in ("fingerprint", "fills", "seconds", "metrics"):
                trial.set_user_attr(k, row[k])
            value = row["metrics"].get(metric)
            if value is None:                         # undefined (a flat curve has no Sharpe)
                trial.set_user_attr("why", f"{metric} is undefined")
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, value)
        ran += len(points)
    seconds = time.perf_counter() - t0
    rows = []
    for t in study.get_trials(deepcopy=False, states=done):
        a = t.user_attrs
        rows.append({"trial": t.number, "state": t.state.name.lower(), "params": t.params,
                     "value": t.value, "fingerprint": a.get("fingerprint"), "fills": a.get("fills"),
                     "seconds": a.get("seconds"), "metrics": a.get("metrics") or {}, "why": a.get("why")})
    complete = [r for r in rows if r["state"] == "complete"]
    best = _sort(complete, metric)[0] if complete else None
    return {"kind": "optimize", "metric": metric, "direction": direction, "study": str(study_path),
            "params": {p.name: p.describe() for p in params}, "seed": seed,
            "trials_before": before, "trials_run": ran, "points": _sort(rows, metric), "best": best,
            "seconds": round(seconds, 3), "workers": runner.workers}


# -- output --------------------------------------------------------------------------------------
def _fmt(key: str, v) -> str:
    if v is None:
        return "-"
    if key in ("total_return", "max_drawdown"):
        return f"{100 * v:.2f}%"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(report: dict, limit: int | None = None) -> str:
    """The points best first: parameters, the objective, return, Sharpe, max drawdown,
    trades, fills and the fills' fingerprint (12 hex digits: enough to tell runs apart)."""
    names = list(report["params"])
    metric = report["metric"]
    figures = list(SHOWN) if metric in SHOWN else [metric, *SHOWN]
    head = ["#", *(n.split(".", 1)[1] if n.startswith("strategy.") else n for n in names),
            *figures, "fills", "fingerprint"]
    lines = []
    for i, r in enumerate(report["points"][:limit], 1):
        m = r["metrics"]
        lines.append([str(i), *(_fmt("", r["params"].get(n)) for n in names),
                      *(_fmt(k, m.get(k)) for k in figures), _fmt("", r["fills"]),
                      (r["fingerprint"] or "-")[:12]])
    width = [max(len(x) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(row, width)) for row in [head, *lines])


def write(report: dict, out: str | Path) -> tuple[Path, Path]:
    """sweep.json (the whole report) and sweep.csv (one row a point) in ``out``."""
    from .backtest_report import json_safe
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path_json, path_csv = out / SWEEP_JSON, out / SWEEP_CSV
    path_json.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    names = list(report["params"])
    keys = sorted({k for r in report["points"] for k in r["metrics"]})
    extra = ["trial", "state"] if report["kind"] == "optimize" else []
    with open(path_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", *extra, *names, "fingerprint", "fills", "seconds", *keys])
        for i, r in enumerate(report["points"], 1):
            w.writerow([i, *(r.get(k) for k in extra), *(r["params"].get(n) for n in names),
                        r["fingerprint"], r["fills"], r["seconds"], *(r["metrics"].get(k) for k in keys)])
    return path_json, path_csv


# -- the command ----------------------------------------------------------------------------------
def walk_options(args) -> dict | None:
    """walk_forward's keyword arguments from the command line, or None without --walk-forward."""
    if not getattr(args, "walk_forward", None):
        return None
    return {"train_bars": args.train_bars, "test_bars": args.test_bars,
            "out_dir": str(Path(args.out) / "walk_forward")}


def run_sweep(cfg: Config, args) -> int:
    """`pipeline backtest --sweep ... [--optimize N]`: check everything, read the data once,
    run the points and print and write the table."""
    from .backtest import load_data
    if not args.sweep:
        raise UserError("--optimize needs the parameters to search: give --sweep PARAM=lo..hi "
                        "or PARAM=v1,v2 (e.g. --sweep strategy.enter_margin=0.05..0.3)")
    if args.optimize is not None and args.optimize < 1:
        raise UserError(f"--optimize {args.optimize}: give the number of trials the study should hold (>= 1)")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give 1 or more")
    params = [parse_param(s) for s in args.sweep]
    check_metric(args.metric)
    check_params(cfg, params)
    walk = walk_options(args)
    data = load_data(args.data, args.date_from, args.date_to)
    job = Job(cfg, data, walk)
    if walk is not None and {p.section for p in params} <= NOT_TRAINED_ON:
        print(f"training the walk-forward windows once (every point serves them): {walk['out_dir']}")
        walk["windows"] = train_windows(job)
    runner = make_runner(job, args.jobs, args.ray)
    try:
        if args.optimize:
            study = Path(args.study) if args.study else Path(args.out) / "study.sqlite"
            setup = {"params": {p.name: p.describe() for p in params}, "metric": args.metric,
                     "data": [str(Path(p).resolve()) for p in args.data], "from": args.date_from,
                     "to": args.date_to, "walk_forward": walk and {k: v for k, v in walk.items()
                                                                   if k != "out_dir"}}
            report = optimize(cfg, job, params, args.metric, args.optimize, study, args.seed, runner, setup)
        else:
            report = grid(cfg, job, params, args.metric, runner)
    finally:
        runner.close()
    report["objective"] = "walk-forward out of sample" if walk else "backtest"
    path_json, path_csv = write(report, args.out)
    print(table(report, limit=20))
    n = report.get("trials_run", len(report["points"]))
    rate = n / report["seconds"] if report["seconds"] > 0 else float("nan")
    where = f"ray {args.ray}" if args.ray else f"{report['workers']} process{'es' * (report['workers'] > 1)}"
    print(f"ran {n} backtests in {report['seconds']:.1f} s ({rate:.2f}/s, {where}); "
          f"objective {args.metric} of the {report['objective']}")
    if report.get("skipped"):
        print(f"skipped {len(report['skipped'])} combinations the config refuses "
              f"(first: {_label(report['skipped'][0]['params'])}: {report['skipped'][0]['why']})")
    if report["kind"] == "optimize":
        best = report["best"]
        print(f"study         {report['study']}: {len(report['points'])} trials "
              f"({report['trials_before']} before this run)")
        if best:
            print(f"best          trial {best['trial']}: {_label(best['params'])} -> "
                  f"{args.metric} {_fmt(args.metric, best['value'])}")
    print(f"results       {path_json} (CSV {path_csv})")
    return 0
