"""`pipeline`: start, stop and inspect a tickpipe run.

User mistakes (a bad config, no running pipeline, an unknown stream) print
one clear line and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

from . import logs
from .config import Config, load_config
from .errors import ConfigError, ConfigurationError, UserError

DEFAULT_CONFIG = Path("conf/default.toml")
STREAMS = ("ticks", "features", "signals", "intents", "orders", "fills", "alerts", "health",
           "risk")
CONFIRM_TIMEOUT_S = 10.0     # how long halt / resume wait for execution to apply the command


def _load(args) -> Config:
    path = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    cfg = load_config(path)
    if getattr(args, "name", None):
        cfg.pipeline.name = args.name
    return cfg


def _target(args) -> Config:
    """The config of the pipeline a command is about. With neither --config nor --name,
    the one pipeline running here (its own config and name), whatever it is called;
    several running: a UserError listing them; none: the default config (whose command
    then says nothing runs)."""
    if getattr(args, "config", None) is not None or getattr(args, "name", None):
        return _load(args)
    from .supervisor import running_pipelines
    cfg = _load(args)
    alive = running_pipelines(cfg.run_dir())
    if len(alive) > 1:
        listed = ", ".join(f"'{st['name']}' ({st.get('config', '?')})" for st in alive)
        raise UserError(f"{len(alive)} pipelines are running here: {listed}; say which with "
                        f"--name NAME or --config FILE")
    if not alive or alive[0]["name"] == cfg.pipeline.name:
        return cfg
    st = alive[0]
    source = st.get("config")
    if source and source != "<defaults>" and Path(source).is_file():
        cfg = load_config(source)
    cfg.pipeline.name = st["name"]
    return cfg


def _running(cfg: Config) -> dict:
    from .supervisor import read_state
    st = read_state(cfg.run_dir(), cfg.pipeline.name)
    if st is None:
        raise UserError(f"no pipeline named '{cfg.pipeline.name}' is running "
                        f"(no state in {cfg.run_dir()})")
    if not st["alive"]:
        raise UserError(f"pipeline '{cfg.pipeline.name}' is not running: run {st['run_id']} "
                        f"(pid {st['pid']}) died without cleaning up; 'pipeline start' "
                        "removes its leftovers")
    return st


def _request(cfg: Config, cmd: str | dict, timeout: float = 5.0) -> dict:
    """One request to the running supervisor: a command name, or a whole request dict."""
    from . import bus
    st = _running(cfg)
    req = cmd if isinstance(cmd, dict) else {"cmd": cmd}
    try:
        reply = bus.request(st["endpoints"]["control"], req, timeout)
    except TimeoutError as e:
        raise UserError(str(e)) from None
    if not reply.get("ok"):
        raise UserError(reply.get("error", "the supervisor refused the request"))
    return reply


# -- start ----------------------------------------------------------------------------
def cmd_start(args) -> int:
    cfg = _load(args)
    if args.workers is not None:
        cfg.pipeline.workers = args.workers
        from .config import validate
        try:
            validate(cfg)
        except ConfigError as e:
            raise ConfigError(f"--workers {args.workers}: {e}") from None
    if not cfg.model.remote:                   # else the models live on the model host
        _bootstrap_models(cfg)
    from .supervisor import Console, Supervisor, SupervisorError, install_signal_handlers
    logs.configure()
    sup = Supervisor(cfg)
    install_signal_handlers(sup)
    try:
        sup.start()
    except SupervisorError as e:
        raise UserError(str(e)) from None
    n = len(sup.workers)
    what = (f"{n} processes ({_count(cfg.n_shards, 'indicator shard')}, "
            f"{_count(cfg.n_model_workers, 'model worker')}, {_count(len(cfg.feeds), 'feed')}, "
            f"1 strategy, 1 execution), config {cfg.source}")
    print(f"starting tickpipe '{cfg.pipeline.name}' run {sup.run_id}: {what}; waiting for the "
          "first ticks", flush=True)
    # the banner, once ticks flow (Console); --duration counts from then
    banner = [f"tickpipe '{cfg.pipeline.name}' run {sup.run_id} started: {what}",
              "stop with Ctrl-C or 'pipeline stop'; inspect with 'pipeline status', "
              "'pipeline report', 'pipeline tap STREAM'" + ("" if args.quiet else
                                                            "; --quiet hides the status lines")]
    try:
        code = sup.run(args.duration, Console(sup, banner, quiet=args.quiet))
    finally:
        sup.cleanup()
    rep = getattr(sup, "final_report", None)
    print(f"stopped: {sup.stop_reason}")
    if rep:
        print(format_summary(sup.status(), rep))
    return code


def _bootstrap_models(cfg: Config) -> None:
    """The default config serves the ensemble: train it on synthetic history at first start."""
    if cfg.model.kind != "ensemble" or not cfg.model.bootstrap:
        return                         # not even the import: models.train loads xgboost and sklearn
    from models.synthetic import bootstrap
    from models.train import TrainError
    try:
        bootstrap(cfg)
    except TrainError as e:
        raise UserError(f"training the synthetic ensemble failed: {e}") from None
    except KeyboardInterrupt:
        raise UserError("interrupted while training the synthetic ensemble; nothing was started, "
                        "and the next start trains it again") from None


def cmd_serve_model(args) -> int:
    """The remote model host (workers/model_host.py)."""
    cfg = _load(args)
    if cfg.model.kind != "ensemble":
        raise UserError(f"{cfg.source}: serve-model serves the trained ensemble; set [model] kind = "
                        "\"ensemble\"")
    keys = args.keys or cfg.model.remote_keys
    logs.configure()
    _bootstrap_models(cfg)
    from workers.model_host import KeysError, ModelHost
    try:
        host = ModelHost(cfg, args.bind, keys)
    except (KeysError, ConfigurationError) as e:
        raise UserError(str(e)) from None
    info = host.ready_info()
    print(f"model host serving the ensemble {info['versions']} on {info['device']} at {args.bind} "
          f"(CURVE keys from {keys}); stop with Ctrl-C", flush=True)
    try:
        host.serve(args.duration)
    finally:
        host.close()
    c = host.counters
    print(f"stopped: {c['batches']} batches, {c['rows']} rows, {c['clients']} clients, "
          f"{c['errors']} refused", flush=True)
    return 0


def cmd_keys(args) -> int:
    from workers.model_host import CLIENTS, SERVER_KEY, SERVER_SECRET, KeysError, make_keys
    try:
        made = make_keys(args.dir)
    except KeysError as e:
        raise UserError(str(e)) from None
    d = Path(args.dir)
    print("\n".join(str(p) for p in made))
    print(f"model host: needs {d / SERVER_SECRET} and {d / CLIENTS}/*.key (the clients it accepts)\n"
          f"main host:  needs {d / SERVER_KEY} and {d / CLIENTS}/client.key_secret; set "
          f"[model] remote_keys = \"{d.absolute()}\"")
    return 0


def cmd_features(args) -> int:
    from models.features import FeaturesError
    from .features import run
    cfg = _load(args)
    try:
        summary = run(args.data, args.out, cfg)
    except FeaturesError as e:
        raise UserError(str(e)) from None
    from .storage import rows_note
    note = rows_note(summary["dropped"], summary.get("reordered", 0))
    bad = f"; {note}" if note else ""
    print(f"{summary['rows']} bars, {len(summary['columns'])} indicator columns "
          f"({', '.join(summary['columns'])}) in {summary['seconds'] * 1e3:.1f} ms; "
          f"the first {summary['warmup_rows']} rows are warm-up (NaN where an indicator has "
          f"too little history){bad}; written to {summary['out']}")
    return 0


def cmd_train(args) -> int:
    cfg = _load(args)
    from models.train import REPORT, TrainError, format_report, model_names, train
    try:
        model_names(cfg)                       # an unknown model fails before the data is read
        report = train(args.data, cfg, args.out, progress=not args.no_progress)
    except TrainError as e:
        raise UserError(str(e)) from None
    print(format_report(report))
    saved = ", ".join(f"{name} v{v}" for name, v in report["artifacts"].items())
    print(f"saved in {args.out}: {saved}; report {Path(args.out) / REPORT}")
    return 0


def cmd_backtest(args) -> int:
    cfg = _load(args)
    if args.sweep or args.optimize is not None:
        from .backtest_sweep import run_sweep
        return run_sweep(cfg, args)
    if cfg.routes:
        return _backtest_arbitrage(cfg, args)
    from .backtest import run_backtest
    from .backtest_report import fingerprint, metrics, summary_lines, write_report
    if args.check:
        return _backtest_check(cfg, args)
    if (args.train_bars or args.test_bars) and not args.walk_forward:
        raise UserError("--train-bars and --test-bars go with --walk-forward")
    if args.walk_forward:
        if not (args.train_bars and args.test_bars):
            raise UserError("--walk-forward needs --train-bars N and --test-bars N")
        from .backtest_checks import walk_forward
        result = walk_forward(cfg, args.data, args.train_bars, args.test_bars, args.out, args.date_from,
                              args.date_to, args.journal, progress=not args.no_progress)
    else:
        result = run_backtest(cfg, args.data, args.date_from, args.date_to, args.journal,
                              progress=not args.no_progress)
    figures = metrics(result)
    written = write_report(result, figures, args.out)
    print("\n".join(summary_lines(figures, fingerprint(result.fills))))
    counts = result.counts
    bad = sum(sum(f["bad_rows"].values()) for f in counts["files"])
    gaps = sum(f["gaps"] for f in counts["files"])
    print(f"data          {counts['bars']} bars of {len(result.symbols)} symbols "
          f"({', '.join(result.symbols)}); bad rows skipped {bad}, gaps {gaps} "
          f"(bars across a gap open nothing: {counts['gap_bars']}); "
          f"{result.meta['bars_per_s']:,.0f} bars/s")
    for symbol, paid in counts.get("funding_paid", {}).items():
        print(f"funding       {symbol}: {paid:+.2f} (quote; + received, - paid)")
    for p in result.meta["periods"] if args.walk_forward else []:
        versions = ", ".join(f"{k} v{v}" for k, v in p["model_versions"].items())
        print(f"traded        {p['from']} to {p['to']} by {p['registry']} ({versions}), trained on "
              f"{p['train_rows']} bars to {_iso_ns(p['train_to_ns'])[:16]}")
    print(f"report        {written['report.html']} (JSON {written['report.json']}, PNG plots beside it)")
    return 0


def _backtest_arbitrage(cfg, args) -> int:
    """`pipeline backtest` of a config with [[routes]]: the route trader and the desk on the
    candle files' closes (pipeline/backtest_arb.py); summary.json and path.csv in --out."""
    from .backtest_arb import run_arb_backtest, write_result
    if args.walk_forward or args.check:
        raise UserError("--walk-forward and --check are for the signals strategy, not [[routes]]")
    res = run_arb_backtest(cfg, args.data, args.journal, args.half_spread_bps, args.date_from, args.date_to)
    s = res.summary()
    folder = write_result(res, args.out)
    print(f"arbitrage     {s['bars']} bar closes; pairs sent {s['pairs_sent']}, both legs filled "
          f"{s['pairs_filled']}, one leg only {s['one_leg_only']}")
    print(f"P&L           {s['pnl_after_fees']:+.2f} {s['currency']} after fees of {s['fees']:.2f} "
          f"(holding the inventory instead: {s['hold_inventory_change']:+.2f})")
    if s["premium_captured_bps_mean"] is not None:
        print(f"premium       {s['premium_captured_bps_mean']:+.2f} bps a filled pair, sell over buy in "
              f"{s['currency']}, at a {res.counts['half_spread_bps']:g} bps half spread")
    bad = {k: sum(v.values()) for k, v in s["bad_rows"].items()}
    if bad:
        print(f"data          bad rows skipped: {', '.join(f'{k} {n}' for k, n in bad.items())}")
    print(f"report        {folder / 'summary.json'} (path.csv beside it)")
    return 0


def _backtest_check(cfg, args) -> int:
    """`pipeline backtest --check lookahead|warmup`: a verdict line, the JSON in --out;
    exit 0 when the check passes, 1 when it finds a look-ahead or a too short warm-up."""
    from .backtest_checks import check_lookahead, check_warmup
    from .storage import output_file
    if args.walk_forward or args.journal:
        raise UserError("--check runs backtests of its own: give it without --walk-forward and --journal")
    if args.samples < 1:
        raise UserError(f"--samples {args.samples}: give at least 1")
    if args.check == "lookahead":
        report = check_lookahead(cfg, args.data, args.samples, start=args.date_from, end=args.date_to)
        ok = report["clean"]
        if ok:
            print(f"look-ahead    none: {report['decisions_checked']} decisions (every signal and intent) "
                  f"at or before {len(report['times'])} sampled times unchanged when the data after "
                  "each was perturbed")
        else:
            first = report["lookaheads"][0]
            print(f"look-ahead    FOUND: {len(report['lookaheads'])} decisions changed with data after "
                  f"them; the first a {first['what']} of {first['symbol']} at {first['time']}")
    else:
        report = check_warmup(cfg, args.data, n_starts=args.samples, start=args.date_from, end=args.date_to)
        ok = report["converged"]
        needed = report["needed_bars"]
        agree = (f"agree with the full run's after {needed} bars" if needed is not None
                 else "still differ from the full run's at the end of the data")
        print(f"warm-up       {'ok' if ok else 'TOO SHORT'}: started {len(report['runs'])} times later, "
              f"decisions and model inputs {agree}; configured warm-up {report['warmup_bars']} bars "
              f"(indicator lookback {report['indicator_lookback']} + model window "
              f"{report['model_window']}), tolerance {report['tolerance']:g}")
    path = output_file(Path(args.out) / f"{args.check}.json")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report        {path}")
    return 0 if ok else 1


def format_summary(status: dict, rep: dict) -> str:
    stats = {w["id"]: w.get("stats", {}) for w in status["workers"]}
    ticks = sum(s.get("emitted", 0) for w, s in stats.items() if w.startswith("feed."))
    bars = sum(s.get("bars", 0) for w, s in stats.items() if w.startswith("indicators."))
    sigs = sum(s.get("signals", 0) for w, s in stats.items() if w.startswith("model."))
    intents = stats.get("strategy.0", {}).get("intents", 0)
    ex = stats.get("execution.0", {})
    drops = sum(r["dropped"] for ring in rep["rings"] for r in ring["readers"])
    restarts = sum(w["restarts"] for w in status["workers"])
    lat = rep["latency"].get("tick_to_fill", {})
    lines = [f"ticks {ticks}, bars {bars}, signals {sigs}, intents {intents}, "
             f"orders {ex.get('orders', 0)}, "
             f"fills {ex.get('fills', 0)}, dropped {drops}, restarts {restarts}",
             f"realized pnl {ex.get('realized_pnl', 0.0):.2f}, fees {ex.get('fees', 0.0):.2f}"
             f"{' ' + ex['currency'] if ex.get('currency') else ''}, "
             f"open positions {ex.get('open_positions', 0)}"]
    if lat.get("count"):
        lines.append(f"tick-to-fill latency: p50 {lat['p50_us']} us, p99 {lat['p99_us']} us, "
                     f"p99.9 {lat['p999_us']} us over {lat['count']} fills")
    return "\n".join(lines)


# -- status / stop / report ---------------------------------------------------------------
def cmd_status(args) -> int:
    cfg = _target(args)
    try:
        st = _request(cfg, "status")
    except UserError as e:
        if args.json:
            print(json.dumps({"running": False, "reason": str(e)}))
        else:
            print(f"not running: {e}")
        return 1
    if args.json:
        print(json.dumps({"running": True, **st}, indent=1))
        return 0
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st["started"]))
    print(f"pipeline '{st['name']}' running since {since} (up {st['uptime_s']:.0f} s), "
          f"run {st['run_id']}, supervisor pid {st['pid']}, config {st['config']}")
    # a venue feed's process runs while its venue is out of reach: say how it is connected
    conns = {w["id"]: _feed_connection(w) for w in st["workers"]}
    print(f"{'worker':<16}{'state':<12}{'pid':>8}{'restarts':>10}{'heartbeat':>11}"
          + ("  connection" if any(conns.values()) else ""))
    for w in st["workers"]:
        age = "-" if w["heartbeat_age_s"] is None else f"{w['heartbeat_age_s']:.1f}s ago"
        line = f"{w['id']:<16}{w['state']:<12}{w['pid'] or '-':>8}{w['restarts']:>10}{age:>11}"
        print(f"{line}  {conns[w['id']]}" if conns[w["id"]] else line)
    venue_feeds = [w for w in st["workers"] if conns[w["id"]]]
    if venue_feeds and not any(_feed_health(w).get("state") in CONNECTED for w in venue_feeds):
        print("no feed is connected to its venue: check the network (or the feeds' ws_url "
              "and rest_url)")
    states = risk_states(st)
    if states:
        print("risk: " + "; ".join(format_risk_state(s) for s in states))
    return 0


CONNECTED = ("connected", "polling")      # a venue feed's health states that get data


def _feed_health(w: dict) -> dict:
    health = (w.get("stats") or {}).get("health") if w.get("role") == "feed" else None
    return health if isinstance(health, dict) else {}


def _feed_connection(w: dict) -> str:
    """A venue feed worker's connection as its last heartbeat told it ("" for any other
    worker, and for a synthetic or replay feed): its state, and while its connects or
    polls fail, how many tries in a row and the last reason."""
    h = _feed_health(w)
    if not h.get("state"):
        return ""
    text = str(h["state"])
    if h.get("failing"):
        why = str(h.get("last_error") or "")
        why = why if len(why) <= 80 else why[:77] + "..."
        text += f", {h['failing']} failed tries in a row" + (f" ({why})" if why else "")
    elif h.get("last_message_age_s") is not None and h["state"] in CONNECTED:
        text += f", last message {h['last_message_age_s']:.1f}s ago"
    return text


def cmd_stop(args) -> int:
    cfg = _target(args)
    st = _running(cfg)
    _request(cfg, "stop")
    if not _wait_gone(st["pid"], args.timeout):
        raise UserError(f"pipeline '{cfg.pipeline.name}' (pid {st['pid']}) is still stopping "
                        f"after {args.timeout:g} s")
    print(f"pipeline '{cfg.pipeline.name}' stopped")
    return 0


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit (a zombie counts as gone)."""
    import psutil
    deadline = time.monotonic() + timeout
    try:
        proc = psutil.Process(pid)
        while time.monotonic() < deadline:
            try:
                proc.wait(0.2)
                return True
            except psutil.TimeoutExpired:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return True
    except psutil.NoSuchProcess:
        return True
    return False


def cmd_report(args) -> int:
    cfg = _target(args)
    rep = _request(cfg, "report")
    rep.pop("ok", None)
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    print(format_report(rep))
    return 0


def _fmt(v, spec=""):
    return "-" if v is None else format(v, spec)


def format_report(rep: dict) -> str:
    out = [f"pipeline '{rep['name']}' run {rep['run_id']}, up {rep['uptime_s']:.0f} s", "",
           "processes",
           f"  {'id':<16}{'pid':>8}{'cpu %':>8}{'rss MB':>9}{'threads':>9}{'fds':>6}"]
    for p in rep["processes"]:
        out.append(f"  {p['id']:<16}{_fmt(p.get('pid')):>8}{_fmt(p.get('cpu_percent'), '.1f'):>8}"
                   f"{_fmt(p.get('rss_mb'), '.1f'):>9}{_fmt(p.get('threads')):>9}"
                   f"{_fmt(p.get('fds')):>6}")
    from shm.ring import FAST_PATH, FAST_PATH_WHY   # this install's per-record path
    out += ["", f"rings (per-record path: {FAST_PATH}, {FAST_PATH_WHY})",
            f"  {'ring':<18}{'policy':<10}{'written':>10}{'rate/s':>10}{'backpressure':>14}  readers (lag / dropped)"]
    for r in rep["rings"]:
        readers = ", ".join(f"{x['name']} {x['lag']}/{x['dropped']}" for x in r["readers"]) or "-"
        bp = f"{r['backpressure_waits']} ({r['backpressure_s']:.2f}s)"
        out.append(f"  {r['name']:<18}{r['policy']:<10}{r['write_seq']:>10}"
                   f"{r['write_rate_per_s']:>10.0f}{bp:>14}  {readers}")
    out += ["", "feeds",
            f"  {'feed':<12}{'venue':<12}{'state':<14}{'msgs':>9}{'last msg':>10}{'reconn':>8}"
            f"{'errors':>8}{'malformed':>10}{'rest ms':>9}"]
    for f in rep.get("feeds", []):
        h = f["health"]
        age = h.get("last_message_age_s")
        out.append(f"  {f['name']:<12}{f['venue']:<12}{h.get('state', '-'):<14}"
                   f"{_fmt(h.get('messages', f['emitted'])):>9}"
                   f"{'-' if age is None else f'{age:.1f}s':>10}{_fmt(h.get('reconnects')):>8}"
                   f"{_fmt(h.get('errors')):>8}{_fmt(h.get('malformed')):>10}"
                   f"{_fmt(h.get('rest_latency_ms')):>9}")
    out += ["", "models",
            f"  {'worker':<10}{'model':<10}{'state':<10}{'where':<26}{'p50 ms':>8}{'p99 ms':>8}{'stale':>7}"]
    for m in rep.get("models", []):
        where = m["remote"] or (f"local, {m['device']}" if m.get("device") else "local")
        out.append(f"  {m['id']:<10}{m['model']:<10}{m['state']:<10}{where:<26}"
                   f"{_fmt(m['infer_ms_p50']):>8}{_fmt(m['infer_ms_p99']):>8}{m['stale_signals']:>7}")
        if m["reason"]:
            out.append(f"    {m['reason']}")
    out += ["", "latency from tick receipt (us)",
            f"  {'stage':<18}{'count':>10}{'p50':>10}{'p99':>10}{'p99.9':>10}"]
    for stage, s in rep["latency"].items():
        out.append(f"  {stage:<18}{s['count']:>10}{_fmt(s['p50_us']):>10}{_fmt(s['p99_us']):>10}"
                   f"{_fmt(s['p999_us']):>10}")
    out += format_routes(rep.get("routes") or {})
    out += format_risk_report(rep.get("risk"), rep.get("trade_latency"))
    return "\n".join(out)


def format_routes(routes: dict) -> list[str]:
    """The route trader's routes (a [[routes]] pipeline): selected or parked and why, the
    position, the premium against its mean, legs in flight, pairs sent and legs filled."""
    if not routes:
        return []
    w = max(len(name) for name in routes) + 2
    out = ["", "routes",
           f"  {'route':<{w}}{'state':<9}{'position':>12}{'premium bps':>13}{'mean bps':>10}{'legs':>6}"
           f"{'pairs':>7}{'fills':>7}  selection"]
    for name, r in routes.items():
        if "problem" in r:
            out.append(f"  {name:<{w}}{'-':<9}  {r['problem']}")
            continue
        state = "active" if r.get("active", True) else "parked"
        out.append(f"  {name:<{w}}{state:<9}{r.get('position', 0.0):>12.6g}{_fmt(r.get('last_mid_bps'), '.1f'):>13}"
                   f"{_fmt(r.get('premium_mean_bps'), '.1f'):>10}{r.get('legs_in_flight', 0):>6}"
                   f"{r.get('pairs', 0):>7}{r.get('fills', 0):>7}  {r.get('selection') or '-'}")
    return out


def format_risk_report(risk: dict | None, trade_latency: dict | None) -> list[str]:
    """The report's risk lines (states, passed, denials per non-zero code) and
    execution's trade latency per venue and stage."""
    from .metrics import TRADE_STAGES
    out = ["", "risk"]
    if not risk or not risk.get("reported"):
        out.append("  not reported by execution yet")
    else:
        denied = {c: n for c, n in (risk.get("denials") or {}).items() if n}
        detail = ", ".join(f"{c} {n}" for c, n in sorted(denied.items(), key=lambda x: -x[1]))
        out.append(f"  passed {risk.get('passed', 0)}, denied {sum(denied.values())}"
                   + (f" ({detail})" if detail else ""))
        states = risk.get("states") or []
        out += [f"  {format_risk_state(s)}" for s in states] or ["  every tier ACTIVE"]
        for route, h in sorted((risk.get("routes") or {}).items(), key=lambda x: int(x[0])):
            factors = ", ".join(f"{k} {v:.2f}" for k, v in h.items() if k != "score")
            out.append(f"  route {route} health {h['score']:.2f} ({factors})")
        for route, qty in sorted((risk.get("hedges_open") or {}).items(), key=lambda x: int(x[0])):
            out.append(f"  route {route} hedge obligation open: {qty:+.10g} to trade on its hedge leg")
    if trade_latency:
        order = {st: i for i, st in enumerate(TRADE_STAGES)}
        out += ["", "trade latency by venue (us)",
                f"  {'venue':<12}{'stage':<18}{'count':>10}{'p50':>10}{'p99':>10}{'p99.9':>10}"]
        for venue, stages in sorted(trade_latency.items()):
            for stage, s in sorted(stages.items(), key=lambda x: (order.get(x[0], 99), x[0])):
                out.append(f"  {venue:<12}{stage:<18}{s['count']:>10}{_fmt(s['p50_us']):>10}"
                           f"{_fmt(s['p99_us']):>10}{_fmt(s['p999_us']):>10}")
    return out


# -- halt / resume --------------------------------------------------------------------
def risk_target(cfg: Config, venue: str | None, symbol: str | None) -> tuple[str, str | None]:
    """(tier, key) of a halt or resume: global without --venue / --symbol; a venue the
    config trades; a symbol key "BTC/USDT@binance", or a bare "BTC/USDT" that exactly
    one configured venue has. Anything else is a UserError."""
    from .supervisor import risk_venues
    from .symbols import SymbolRegistry
    if venue is not None and symbol is not None:
        raise UserError("give --venue or --symbol, not both")
    if venue is not None:
        venues = risk_venues(cfg)
        if venue not in venues:
            raise UserError(f"venue {venue!r} is not traded by this pipeline "
                            f"(venues: {', '.join(venues)}; config {cfg.source})")
        return "venue", venue
    if symbol is not None:
        reg = SymbolRegistry.from_config(cfg)
        try:
            return "symbol", reg.name(reg.id(symbol))
        except KeyError as e:
            raise UserError(f"{e.args[0]}; config {cfg.source}") from None
    return "global", None


def risk_payload(cfg: Config, action: str, venue: str | None = None, symbol: str | None = None,
                 reducing: bool = False, reason: str = "") -> dict:
    """The command sent to the supervisor (or journaled when nothing runs), checked as
    the supervisor checks it."""
    from .supervisor import check_risk_command
    tier, key = risk_target(cfg, venue, symbol)
    payload = {"cmd": "risk", "action": action, "tier": tier, "key": key,
               "reducing": bool(reducing), "reason": reason, "id": uuid.uuid4().hex}
    why = check_risk_command(cfg, payload)
    if why:
        raise UserError(why)
    return payload


def execution_stats(status: dict) -> list[dict]:
    """The stats of the execution workers in a `status` reply."""
    return [w.get("stats") or {} for w in status.get("workers", []) if w.get("role") == "execution"
            or str(w.get("id", "")).startswith("execution.")]


def risk_states(status: dict) -> list[dict]:
    """Every non-ACTIVE risk cause the execution workers report in a `status` reply."""
    return [s for st in execution_stats(status) for s in st.get("risk_states") or []
            if isinstance(s, dict)]


def risk_confirmed(status: dict, cmd_id: str) -> bool:
    """True once every execution worker of a `status` reply lists ``cmd_id`` among the
    risk commands it applied."""
    stats = execution_stats(status)
    return bool(stats) and all(cmd_id in (st.get("risk_commands") or []) for st in stats)


def format_risk_state(s: dict) -> str:
    """"global HALTED (manual: fat finger)", "venue binance REDUCING (DAILY_LOSS: ...)"."""
    where = s.get("tier", "?") if s.get("key") is None else f"{s.get('tier', '?')} {s['key']}"
    why = "manual" if s.get("manual") else str(s.get("code") or "?")
    if s.get("reason"):
        why += f": {s['reason']}"
    until = s.get("until_ns")
    if isinstance(until, int) and 0 < until < 2**62:      # a latch that ends by itself
        why += f", until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(until / 1e9))}"
    return f"{where} {s.get('state', '?')} ({why})"


def wait_risk_applied(get_status, cmd_id: str, timeout: float, poll_s: float = 0.1) -> dict | None:
    """Poll ``get_status()`` (a `status` reply) until execution lists ``cmd_id``; the
    confirming status, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        st = get_status()
        if risk_confirmed(st, cmd_id):
            return st
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)          # pacing between status requests


def cmd_risk(args) -> int:
    from .supervisor import read_state
    cfg = _target(args)
    action = args.command
    reason = args.reason if args.reason is not None else ""
    payload = risk_payload(cfg, action, args.venue, args.symbol,
                           getattr(args, "reducing", False), reason)
    st = read_state(cfg.run_dir(), cfg.pipeline.name)
    if st is None or not st["alive"]:
        _journal_risk(cfg.journal_path(), payload)
        print(f"not running: the {action} is journaled and applies when `pipeline start` runs")
        return 0
    reply = _request(cfg, payload)
    confirmed = wait_risk_applied(lambda: _request(cfg, "status"), payload["id"], args.timeout)
    if confirmed is None:
        states = reply.get("execution") or {}
        down = [f"{wid} is {state}" for wid, state in states.items() if state != "running"]
        note = f" ({', '.join(down)})" if down else ""
        print(f"pipeline: the execution process did not confirm the {action} within "
              f"{args.timeout:g} s{note}; check `pipeline status`", file=sys.stderr)
        return 1
    what = payload["tier"] if payload["key"] is None else f"{payload['tier']} {payload['key']}"
    mode = " (reducing only)" if payload["reducing"] else ""
    print(f"{action} of {what}{mode} applied by execution (id {payload['id']})")
    states = risk_states(confirmed)
    print("risk: " + ("; ".join(format_risk_state(s) for s in states) if states
                      else "every tier ACTIVE"))
    return 0


def _journal_risk(path: Path, payload: dict) -> None:
    """Nothing runs: append the command to the journal, where execution finds it at start."""
    from .journal import Journal, JournalError
    try:
        j = Journal(path)
    except JournalError as e:
        if "already open by another writer" in str(e):
            raise UserError(f"{e}: a pipeline is running on this journal (under another "
                            f"--name?); the {payload['action']} was not journaled") from None
        raise
    try:
        j.append("command", time.time_ns(), payload)
        j.commit()
    finally:
        j.close()


# -- tap --------------------------------------------------------------------------------
def cmd_tap(args) -> int:
    import zmq
    from . import bus
    stream = args.stream
    if stream not in STREAMS:
        raise UserError(f"unknown stream {stream!r}; choose one of {', '.join(STREAMS)}")
    if args.connect:
        endpoint = args.connect
    else:
        cfg = _target(args)
        endpoint = _running(cfg)["endpoints"]["tap"]
    ctx = zmq.Context.instance()
    sub = bus.socket(ctx, zmq.SUB)
    sub.connect(endpoint)
    topic = f"{stream}|{args.symbol or ''}"
    sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    if not args.symbol:
        pass  # the topic "<stream>|" also carries the skipped notices
    shown = 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    try:
        while args.limit is None or shown < args.limit:
            wait_ms = 500
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UserError(f"no more records on '{stream}' within {args.timeout:g} s "
                                    f"(from {endpoint})")
                wait_ms = int(min(left, 0.5) * 1000) + 1
            if not sub.poll(wait_ms):
                continue
            t, payload = sub.recv_multipart()
            rec = json.loads(payload)
            if "skipped" in rec:
                if not args.json:
                    print(f"# {rec['skipped']} records of {rec.get('ring', stream)} not shown (tap "
                          "rate limit or lapped)", file=sys.stderr)
                continue
            sym = rec.get("symbol", "")
            if args.symbol and not (sym == args.symbol or sym.startswith(args.symbol + "@")):
                continue
            print(json.dumps(rec) if args.json else format_record(stream, rec), flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
    return 0


def _count(n: int, thing: str) -> str:
    """"1 feed", "2 feeds"."""
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _words() -> dict[str, dict[int, str]]:
    """Field -> code -> word, for the tap's text lines (shm/records.py's constants)."""
    from shm import records as r
    return {"side": {r.SIDE_BUY: "buy", r.SIDE_SELL: "sell", 0: "-"},
            "action": {r.ACTION_BUY: "buy", r.ACTION_HOLD: "hold", r.ACTION_SELL: "sell"},
            "kind": {r.TICK_TRADE: "trade", r.TICK_QUOTE: "quote", r.TICK_GAP: "gap"},
            "order_type": {r.ORDER_MARKET: "market", r.ORDER_LIMIT: "limit", r.ORDER_CANCEL: "cancel"},
            "tif": {r.TIF_GTC: "gtc", r.TIF_IOC: "ioc", r.TIF_FOK: "fok", r.TIF_POST_ONLY: "post_only", 0: "-"},
            "liquidity": {r.LIQUIDITY_TAKER: "taker", r.LIQUIDITY_MAKER: "maker"},
            "reason": {r.REASON_ENTRY: "entry", r.REASON_EXIT: "exit", r.REASON_STOP_LOSS: "stop_loss",
                       r.REASON_TAKE_PROFIT: "take_profit", r.REASON_REBALANCE: "rebalance",
                       r.REASON_FLATTEN: "flatten"}}


def _iso_ns(ns: int) -> str:
    """A time in ns as ISO 8601 UTC with microseconds."""
    import datetime as dt
    t = dt.datetime.fromtimestamp(ns // 1000 / 1e6, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_record(stream: str, rec: dict) -> str:
    """One tap record as a line: times (``*_ns``) in ISO 8601 UTC, codes (side, action,
    kind, order type, time in force, liquidity, reason) as words; ``--json`` keeps them raw."""
    skip = {"symbol", "symbol_id", "ring"}
    words = _words()
    # a risk event's own text fields (kind "state" / "denial", a reason's words) stay as they are
    coded = {} if stream == "risk" else words
    fields = []
    for k, v in rec.items():
        if k in skip:
            continue
        if k in coded and isinstance(v, int) and not isinstance(v, bool):
            v = coded[k].get(v, v)
        elif k.endswith("_ns") and isinstance(v, int) and v > 10**17:     # a wall-clock time
            v = _iso_ns(v)
        fields.append(f"{k}={_short(v)}")
    return f"{stream:<9}{rec.get('symbol', ''):<22}{' '.join(fields)}"


def _short(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ",".join(_short(x) for x in v) + "]"
    return str(v)


# -- download ---------------------------------------------------------------------------
def cmd_download(args) -> int:
    from .download import download, parse_time
    since = parse_time(args.since, "--since")
    until = parse_time(args.until, "--until") if args.until else None
    try:
        res = download(args.venue, args.symbol, args.timeframe, since, until, out=args.out,
                       rest_url=args.rest_url, rate_per_s=args.rate, limit=args.limit,
                       progress=not args.no_progress, trades=args.trades)
    except KeyboardInterrupt:
        print("pipeline: download interrupted; what was fetched is stored, and the same "
              "command resumes after it", file=sys.stderr)
        return 130
    print(res.summary(args.venue, args.symbol))
    return 0


def _journal_path(args) -> Path:
    if args.journal:
        return Path(args.journal).expanduser()
    return _target(args).journal_path()


def cmd_pnl(args) -> int:
    from .pnl import format_pnl, pnl_report
    path = _journal_path(args)
    rep = pnl_report(path)
    print(json.dumps(rep, indent=1) if args.json else format_pnl(rep))
    if rep["mismatches"]:
        _halt_on_mismatch(args, path, rep["mismatches"])
        return 1
    return 0


def _halt_on_mismatch(args, path: Path, mismatches: list[dict]) -> None:
    """Positions the fills do not explain: the global tier goes HALTED (on the running
    pipeline of this journal, or journaled for its next start) until a person resumes."""
    from .journal import JournalError
    from .supervisor import read_state
    reason = "pnl check failed: " + "; ".join(f"{m['symbol']} {m['field']} journaled {m['journaled']:.10g}, "
                                             f"from fills {m['from_fills']:.10g}" for m in mismatches[:3])
    payload = {"cmd": "risk", "action": "halt", "tier": "global", "key": None, "reducing": False,
               "reason": reason[:500], "id": uuid.uuid4().hex}
    cfg = _target(args)
    st = read_state(cfg.run_dir(), cfg.pipeline.name)
    if st is not None and st["alive"] and path.resolve() == cfg.journal_path().resolve():
        _request(cfg, payload)
        where = f"pipeline '{cfg.pipeline.name}': global tier HALTED"
    else:
        if not path.exists():
            return
        try:
            _journal_risk(path, payload)
        except (UserError, JournalError) as e:
            print(f"ALERT: could not journal the halt: {e}", file=sys.stderr)
            return
        where = "a global halt is journaled for the next start"
    print(f"ALERT: {where} until `pipeline resume` ({reason})", file=sys.stderr)


def cmd_journal(args) -> int:
    from . import journal
    path = _journal_path(args)
    if args.action == "verify":
        result = journal.verify(path)
        print(result)
        return 0 if result.ok else 1
    if args.action == "export":
        if not args.out:
            raise UserError("journal export needs --out FILE.parquet")
        n = journal.export(path, args.out)
        print(f"{n} rows of {path} written to {args.out}")
        return 0
    from .download import parse_time
    from .pnl import format_row
    since = parse_time(args.since, "--since") * 1_000_000 if args.since else None
    exact = args.symbol if args.symbol and "@" in args.symbol else None
    shown = 0
    for row in journal.rows(path, since_ns=since, symbol=exact, kinds=args.kind or None):
        if args.symbol and not exact and (row["symbol"] or "").partition("@")[0] != args.symbol:
            continue
        print(json.dumps(row) if args.json else format_row(row))
        shown += 1
        if args.limit and shown >= args.limit:
            break
    return 0


# -- entry point --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pipeline",
        description="tickpipe: a multiprocess shared-memory crypto trading pipeline.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp):
        sp.add_argument("--config", metavar="PATH",
                        help="TOML config (default: conf/default.toml if present, else built-in defaults)")
        sp.add_argument("--name", help="pipeline name (default: pipeline.name from the config)")

    sp = sub.add_parser("start", help="start the pipeline in the foreground",
                        description="Start the supervisor and its workers; Ctrl-C or SIGTERM stops cleanly.")
    common(sp)
    sp.add_argument("--workers", type=int, metavar="N",
                    help="CPU-bound worker processes: indicator shards + model workers")
    sp.add_argument("--duration", type=float, metavar="SECONDS",
                    help="stop cleanly this long after the first ticks flow")
    sp.add_argument("--quiet", action="store_true",
                    help="no status line every few seconds and no warm-up note "
                         "(warnings and the exit summary still print)")
    sp.set_defaults(func=cmd_start)

    sp = sub.add_parser("serve-model", help="serve the model ensemble to pipelines on other hosts",
                        description="Run the remote model host: the ensemble from [model] artifacts "
                                    "answers the model workers of pipelines whose [model] remote "
                                    "points here, over ZeroMQ with CURVE keys (pipeline keys). "
                                    "Run it with the pipeline's own config: the host refuses a "
                                    "pipeline with other features or symbols.")
    common(sp)
    sp.add_argument("--bind", required=True, metavar="ENDPOINT",
                    help="where to listen, e.g. tcp://0.0.0.0:5560")
    sp.add_argument("--keys", metavar="DIR", help="CURVE keys (default: [model] remote_keys)")
    sp.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    sp.set_defaults(func=cmd_serve_model)

    sp = sub.add_parser("keys", help="make CURVE keys for a remote model host and its pipelines",
                        description="Write a key pair for the model host (DIR/server.key, "
                                    "server.key_secret) and one for the pipeline's model workers "
                                    "(DIR/clients/client.key, client.key_secret). Existing keys "
                                    "are never overwritten.")
    sp.add_argument("dir", metavar="DIR", nargs="?", default="keys", help="default: keys")
    sp.set_defaults(func=cmd_keys)

    sp = sub.add_parser("features", help="compute every configured indicator over a candle file",
                        description="Compute the configured indicators over a candle file (CSV or "
                                    "Parquet: timestamp_ms,open,high,low,close,volume) with the "
                                    "same code the indicator shards run live, into Parquet.")
    common(sp)
    sp.add_argument("--data", required=True, metavar="FILE", help="candles, CSV or Parquet")
    sp.add_argument("--out", required=True, metavar="OUT.parquet")
    sp.set_defaults(func=cmd_features)

    sp = sub.add_parser("train", help="train the models and the ensemble on a candle file",
                        description="Walk-forward training of the models in [model] models on a candle "
                                    "file (CSV or Parquet), the ensemble on their out-of-fold "
                                    "predictions, a report (table here, JSON in OUT/report.json) and "
                                    "versioned artifacts in OUT.")
    sp.add_argument("--config", metavar="PATH",
                    help="TOML config (default: conf/default.toml if present, else built-in defaults)")
    sp.add_argument("--data", required=True, metavar="FILE", help="candles, CSV or Parquet")
    sp.add_argument("--out", default="artifacts", metavar="DIR",
                    help="model registry directory (default: artifacts)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("backtest", help="run the live strategy over candle or trade files, on a simulated clock",
                        description="Play candle or trade files (CSV or Parquet, one symbol each; a quotes "
                                    "file beside one, a perpetual's funding-rate file) through "
                                    "the live chain in one process on a simulated clock: bars, "
                                    "indicators, the model ([model] kind), the strategy, the risk "
                                    "guard, the paper broker (latency, slippage, impact, fees), the "
                                    "portfolio and the journal. The same data and config give the same "
                                    "fills (the fingerprint printed). Writes report.json, report.html, "
                                    "trades.csv and PNG plots to --out; or walks forward, checks for "
                                    "look-ahead and warm-up, or sweeps parameters. A config with "
                                    "[[routes]] runs the arbitrage backtest instead: the route trader and "
                                    "the desk on the files' bar closes (summary.json and path.csv in --out).")
    sp.add_argument("--config", metavar="PATH",
                    help="TOML config (default: conf/default.toml if present, else built-in defaults); "
                         "[indicators] bar_seconds must be the candles' step")
    sp.add_argument("--data", required=True, nargs="+", metavar="FILE|DIR",
                    help="one file (or folder of Parquet files) per symbol; the symbol and venue come "
                         "from the name, as pipeline download writes it (binance_BTC-USDT_5m.csv)")
    sp.add_argument("--from", dest="date_from", metavar="DATE", help="first time to play (UTC, YYYY-MM-DD)")
    sp.add_argument("--to", dest="date_to", metavar="DATE", help="play up to this time (UTC, excluded)")
    sp.add_argument("--out", default="backtest", metavar="DIR", help="report folder (default: backtest)")
    sp.add_argument("--half-spread-bps", type=float, default=1.0, metavar="BPS",
                    help="with [[routes]] (the arbitrage backtest): each venue's book at a bar close is "
                         "one level this far either side of the close, on the venue's tick (default 1)")
    sp.add_argument("--journal", metavar="FILE",
                    help="keep the run's journal in this SQLite file (default: a temporary one)")
    sp.add_argument("--walk-forward", action="store_true",
                    help="retrain the ensemble on each --train-bars window of the first file's candles "
                         "and trade only the --test-bars after it (models in OUT/models/window_N)")
    sp.add_argument("--train-bars", type=int, metavar="N", help="bars each walk-forward model learns from")
    sp.add_argument("--test-bars", type=int, metavar="N", help="bars each walk-forward model trades")
    sp.add_argument("--check", choices=["lookahead", "warmup"],
                    help="lookahead: perturb the data after sampled times, no decision before may change; "
                         "warmup: later starts must decide as the full run after the configured warm-up. "
                         "Writes OUT/CHECK.json; exit 1 when the check fails")
    sp.add_argument("--samples", type=int, default=5, metavar="N",
                    help="times sampled (lookahead) or later starts (warmup) (default 5)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    # many backtests: a grid or a Bayesian search over config keys (pipeline/backtest_sweep.py)
    sp.add_argument("--sweep", action="append", metavar="PARAM=VALUES",
                    help="run a backtest for each value (v1,v2,...) of a config key section.key (a bare "
                         "key is in [strategy]); repeat for a grid; lo..hi is a range for --optimize. "
                         "Writes sweep.json and sweep.csv to --out")
    sp.add_argument("--optimize", type=int, metavar="N",
                    help="Bayesian search (Optuna) over the --sweep values and ranges until the study "
                         "holds N trials; resumes the study in --study")
    sp.add_argument("--metric", default="sharpe", metavar="NAME",
                    help="what --sweep sorts by and --optimize optimises: a figure of the report "
                         "(sharpe, total_return, calmar, sortino, profit_factor, max_drawdown, ...; "
                         "default sharpe)")
    sp.add_argument("--study", metavar="FILE", help="the Optuna study's SQLite file (default: OUT/study.sqlite)")
    sp.add_argument("--jobs", type=int, metavar="N",
                    help="backtests at once, in separate processes (default 1; with --ray: the cluster's CPUs)")
    sp.add_argument("--seed", type=int, default=0, help="the search's sampler seed (default 0)")
    sp.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="run the backtests as Ray tasks on the cluster at ADDRESS, or on a local "
                         "instance ('local', the default)")
    sp.set_defaults(func=cmd_backtest)

    sp = sub.add_parser("status", help="is it running, since when, per-worker state and restarts")
    common(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("stop", help="stop a running pipeline cleanly")
    common(sp)
    sp.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS")
    sp.set_defaults(func=cmd_stop)

    sp = sub.add_parser("report", help="per-process resources, ring lag and drops, stage latency")
    common(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_report)

    for action in ("halt", "resume"):
        if action == "halt":
            sp = sub.add_parser("halt", help="halt trading (or let only reducing orders through)",
                                description="Halt trading: globally, on one venue (--venue) or "
                                            "one symbol (--symbol). HALTED lets only cancels "
                                            "through; --reducing lets through only intents that "
                                            "move a position toward zero. Sent to execution "
                                            "when the pipeline runs (and confirmed), else "
                                            "journaled to apply at the next start. Lasts until "
                                            "'pipeline resume' of the same tier.")
            sp.add_argument("--reducing", action="store_true",
                            help="REDUCING instead of HALTED: exposure-reducing intents pass")
        else:
            sp = sub.add_parser("resume", help="lift a halt made by 'pipeline halt'",
                                description="Lift the manual halt of a tier (global, --venue "
                                            "or --symbol): the same way as 'pipeline halt'.")
        common(sp)
        sp.add_argument("--venue", metavar="V", help="only this venue (e.g. binance)")
        sp.add_argument("--symbol", metavar="S",
                        help="only this symbol: BTC/USDT@binance, or BTC/USDT if one venue has it")
        sp.add_argument("--reason", metavar="TEXT", help="why, for the journal and status")
        sp.add_argument("--timeout", type=float, default=CONFIRM_TIMEOUT_S, metavar="SECONDS",
                        help=f"how long to wait for execution to confirm "
                             f"(default {CONFIRM_TIMEOUT_S:g})")
        sp.set_defaults(func=cmd_risk)

    sp = sub.add_parser("tap", help="print records flowing through a stream",
                        description="Attach read-only to a running pipeline and print decoded "
                                    "records of STREAM, one per line (rate-limited).")
    common(sp)
    sp.add_argument("stream", metavar="STREAM", help=f"one of: {', '.join(STREAMS)}")
    sp.add_argument("--symbol", metavar="S", help="only this symbol (BTC/USDT or BTC/USDT@venue)")
    sp.add_argument("--limit", type=int, metavar="N", help="exit after N records")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.add_argument("--connect", metavar="ENDPOINT",
                    help="tap endpoint of a pipeline elsewhere, e.g. tcp://HOST:PORT")
    sp.add_argument("--timeout", type=float, metavar="SECONDS",
                    help="give up if no record arrives for this long")
    sp.set_defaults(func=cmd_tap)

    sp = sub.add_parser("pnl", help="positions and P&L from the journal, running or not",
                        description="Recompute positions, realised and unrealised P&L (marked at "
                                    "the last fill) and fees per symbol and venue from the "
                                    "journal's fills, and check them against the positions "
                                    "execution journaled; exit status 1 if they disagree.")
    common(sp)
    sp.add_argument("--journal", metavar="PATH", help="the journal (default: the config's)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_pnl)

    sp = sub.add_parser("journal", help="verify, show or export the execution journal",
                        description="verify: walk the hash chain and name the first row edited, "
                                    "deleted or reordered (exit status 1), and print the head (the "
                                    "last row's id and hash: keep it elsewhere to catch rows cut off "
                                    "with a rewritten head). show: print rows. export: every row to a "
                                    "Parquet file (a step's batch as its rows, each with its part); "
                                    "never over an SQLite file.")
    common(sp)
    sp.add_argument("action", choices=("verify", "show", "export"))
    sp.add_argument("--journal", metavar="PATH", help="the journal (default: the config's)")
    sp.add_argument("--since", metavar="DATE", help="show: rows from this UTC time on")
    sp.add_argument("--symbol", metavar="S", help="show: rows of this symbol (BTC/USDT[@venue])")
    sp.add_argument("--kind", action="append", metavar="KIND",
                    help="show: rows of this kind (order, fill, position, ...); repeatable")
    sp.add_argument("--limit", type=int, metavar="N", help="show: at most N rows")
    sp.add_argument("--json", action="store_true", help="show: one JSON object per line")
    sp.add_argument("--out", metavar="FILE.parquet", help="export: where to write")
    sp.set_defaults(func=cmd_journal)

    sp = sub.add_parser("download", help="download OHLCV or trade history from a venue into Parquet",
                        description="Download closed OHLCV bars (--timeframe) through ccxt into "
                                    "OUT/ohlcv/venue=V/symbol=BASE-QUOTE/timeframe=TF/YYYY-MM.parquet, "
                                    "or trades (--trades; Binance's aggregate trades) into "
                                    "OUT/trades/venue=V/symbol=BASE-QUOTE/YYYY-MM-DD.parquet; "
                                    "a second run resumes after the last stored bar or trade.")
    sp.add_argument("--venue", required=True, help="a ccxt exchange id, e.g. binance")
    sp.add_argument("--symbol", required=True, help="unified symbol, e.g. BTC/USDT")
    sp.add_argument("--timeframe", help="bar length of the OHLCV bars, e.g. 1m, 5m, 1h")
    sp.add_argument("--trades", action="store_true",
                    help="download trades (time, trade id, price, amount, side) instead of bars: "
                         "give it instead of --timeframe")
    sp.add_argument("--since", required=True, metavar="DATE",
                    help="first bar or trade, UTC: YYYY-MM-DD[THH:MM[:SS]]")
    sp.add_argument("--until", metavar="DATE", help="end (exclusive), UTC; default: now")
    sp.add_argument("--out", default="data", metavar="DIR", help="dataset root (default: data)")
    sp.add_argument("--rest-url", default="", metavar="URL",
                    help="send the venue's REST calls to this origin (a testnet, a local server)")
    sp.add_argument("--rate", type=float, metavar="PER_S",
                    help="requests per second (default: the venue's ccxt rate limit)")
    sp.add_argument("--limit", type=int, default=1000, metavar="N",
                    help="bars or trades per request (default 1000)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_download)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UserError) as e:
        print(f"pipeline: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:                   # Ctrl-C in a command that has no stop of its own
        print(f"pipeline: {args.command} interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
