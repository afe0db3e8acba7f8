"""Config mistakes are one clear line naming the file and key, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import Config, ConfigError, load_config, resolve_paths

ROOT = Path(__file__).resolve().parent.parent


def test_default_toml_equals_builtin_defaults():
    """conf/default.toml means what the built-in defaults mean run from the repository
    root: its paths ("../artifacts") are relative to conf/."""
    cfg = load_config(ROOT / "conf" / "default.toml")
    builtin = Config(source=cfg.source)
    resolve_paths(builtin, ROOT)
    assert cfg == builtin


@pytest.mark.parametrize("path", sorted((ROOT / "conf").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    assert load_config(path).source == str(path)


@pytest.mark.parametrize("text, message", [
    ("[pipeline]\nwrokers = 3\n", "unknown key 'pipeline.wrokers' (did you mean 'workers'?)"),
    ("[pipeline]\nworkers = 'many'\n", "pipeline.workers must be an integer, got str 'many'"),
    ("[pipeline]\nworkers = 1\n", "pipeline.workers must be at least 2"),
    ("[pipeline]\nworkers = true\n", "pipeline.workers must be an integer, got bool True"),
    ("[feeds]\nname = 'x'\n", "feeds is a list of tables: write [[feeds]], not [feeds]"),
    ("[[feeds]]\nsymbols = [1]\n", "feeds[0].symbols[0] must be a string, got int 1"),
    ("[[feeds]]\nticks_per_s = -5\n", "feeds[0].ticks_per_s must be > 0"),
    ("[[feeds]]\nkind = 'binance'\nsymbols = ['BTC/USDT']\nchannels = ['trade']\n",
     "feeds[0].channels must be some of trades, quotes, depth, got ['trade']"),
    ("[[feeds]]\nkind = 'upbit'\nsymbols = ['BTC/KRW']\nchannels = []\n",
     "feeds[0].channels must be some of trades, quotes, got []"),
    ("[[feeds]]\nkind = 'ccxt'\nvenue = 'krakn'\nsymbols = ['BTC/USD']\n",
     "feeds[0].venue 'krakn' is not an exchange ccxt knows"),
    ("[rings]\nticks_capacity = 1000\n", "rings.ticks_capacity must be a power of two >= 16, got 1000"),
    ("[execution]\nmode = 'live'\n", "execution.mode must be 'paper'"),
    ("[bus]\ntap_bind = 'tcp://0.0.0.0:5557'\n", "set bus.allow_remote = true"),
    ("[pipeline\nworkers = 2\n", "not valid TOML"),
    ("[bus]\nmetrics_bind = '0.0.0.0:9464'\n", "set bus.allow_remote = true"),
    ("[bus]\nmetrics_bind = '9464'\n", "bus.metrics_bind must be HOST:PORT, got '9464'"),
    ("surprise = 1\n", "unknown key 'surprise'"),
    # indicator parameters outside TA-Lib's ranges, and columns that would collide
    ("[indicators]\nvolatility = [1]\n", "indicators.volatility[0]: volatility: period must be an integer >= 2, got 1"),
    ("[indicators]\nbbands = [[20, 0]]\n", "indicators.bbands[0]: bbands: nbdev must be > 0"),
    ("[indicators]\nmacd = [[12, 26]]\n", "indicators.macd[0]: macd needs 3 parameters (fast, slow, signal)"),
    ("[indicators]\nrsi = [1]\n", "rsi: period must be an integer >= 2"),
    ("[indicators]\nema = [12, 12]\n", "indicators: columns configured twice: ema_12"),
    ("[indicators]\nstoch = [[14, 3, 3], [14, 3, 5]]\n", "columns configured twice: stoch_k_14_3"),
])
def test_bad_config_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: ")
    assert message in str(e.value)


def test_numbers_widen_to_float(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("[execution]\nfee_bps = 5\n")
    assert load_config(path).execution.fee_bps == 5.0


# -- paths: relative to the config file's folder ---------------------------------------
def test_relative_paths_are_relative_to_the_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "bars.csv").write_text("timestamp_ms,open,high,low,close,volume\n"
                                  "1700000000000,1,1,1,1,1\n1700000060000,1,1,1,1,1\n")
    path = sub / "c.toml"
    path.write_text('[model]\nartifacts = "reg"\nremote_keys = "../keys"\n'
                    '[execution]\njournal = "j/x.sqlite"\n[recorder]\ndir = "rec"\n'
                    '[pipeline]\nrun_dir = "run"\n'
                    '[[feeds]]\nkind = "replay"\nsymbols = ["BTC/USDT"]\npath = "bars.csv"\n')
    for cwd in (tmp_path, sub, ROOT):
        monkeypatch.chdir(cwd)
        for given in (path, os.path.relpath(path, cwd)):
            cfg = load_config(given)
            assert Path(cfg.model.artifacts) == sub / "reg"
            assert Path(cfg.model.remote_keys) == tmp_path / "keys"
            assert cfg.journal_path() == sub / "j" / "x.sqlite"
            assert Path(cfg.recorder.dir) == sub / "rec"
            assert cfg.run_dir() == sub / "run"
            assert Path(cfg.feeds[0].path) == sub / "bars.csv"


def test_defaults_a_file_leaves_out_are_relative_to_its_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("TICKPIPE_JOURNAL_DIR")
    monkeypatch.delenv("TICKPIPE_RUN_DIR", raising=False)
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.toml"
    path.write_text('[pipeline]\nname = "alpha"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    assert Path(cfg.model.artifacts) == tmp_path / "sub" / "artifacts"
    assert cfg.journal_path() == tmp_path / "sub" / "journal" / "alpha.sqlite"
    assert Path(cfg.recorder.dir) == tmp_path / "sub" / "data"
    assert cfg.pipeline.run_dir == ""                  # unset: $XDG_RUNTIME_DIR or /tmp, as before
    monkeypatch.setenv("TICKPIPE_JOURNAL_DIR", str(tmp_path / "js"))
    assert load_config(path).journal_path() == tmp_path / "js" / "alpha.sqlite"
    # no file: the built-in defaults, relative to the working directory
    assert load_config(None).model.artifacts == "artifacts"


def test_absolute_and_home_paths_stay(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f'[model]\nartifacts = "{tmp_path / "elsewhere" / ".." / "reg"}"\n'
                    '[recorder]\ndir = "~/tickdata"\n')
    cfg = load_config(path)
    assert cfg.model.artifacts == str(tmp_path / "elsewhere" / ".." / "reg")
    assert cfg.recorder.dir == "~/tickdata"


def test_default_config_paths_are_the_repositorys_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("TICKPIPE_JOURNAL_DIR")
    monkeypatch.chdir(tmp_path)
    for name in ("default.toml", "venues.toml"):
        cfg = load_config(ROOT / "conf" / name)
        assert Path(cfg.model.artifacts) == ROOT / "artifacts"
        assert Path(cfg.model.remote_keys) == ROOT / "keys"
        assert Path(cfg.recorder.dir) == ROOT / "data"
        assert cfg.journal_path() == ROOT / "journal" / f"{cfg.pipeline.name}.sqlite"
    monkeypatch.chdir(ROOT)
    assert load_config("conf/default.toml").model.artifacts == str(ROOT / "artifacts")


def run_cli(*args, env_extra=None):
    env = {**os.environ, "TICKPIPE_RUN_DIR": env_extra or "/nonexistent-tickpipe-test"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_start_with_bad_config_is_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[indicators]\nbar_secnds = 1\n")
    r = run_cli("start", "--config", str(path), env_extra=str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"pipeline: {path}: unknown key 'indicators.bar_secnds' "
                                "(did you mean 'bar_seconds'?)")


def test_missing_config_file(tmp_path):
    r = run_cli("start", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "config file not found" in r.stderr and "Traceback" not in r.stderr


def test_workers_flag_is_validated(tmp_path):
    r = run_cli("start", "--workers", "1", "--duration", "1", env_extra=str(tmp_path))
    assert r.returncode == 2
    assert "--workers 1: pipeline.workers must be at least 2" in r.stderr


@pytest.mark.parametrize("cmd", [["stop"], ["report"], ["tap", "fills", "--limit", "1"]])
def test_commands_without_a_running_pipeline(tmp_path, cmd):
    r = run_cli(*cmd, env_extra=str(tmp_path))
    assert r.returncode == 2
    assert "no pipeline named 'default' is running" in r.stderr and "Traceback" not in r.stderr


def test_status_without_a_running_pipeline(tmp_path):
    r = run_cli("status", env_extra=str(tmp_path))
    assert r.returncode == 1 and r.stdout.startswith("not running: no pipeline named 'default'")


def test_tap_unknown_stream(tmp_path):
    r = run_cli("tap", "candles", env_extra=str(tmp_path))
    assert r.returncode == 2 and "unknown stream 'candles'" in r.stderr


def test_help_lists_commands():
    r = run_cli("--help")
    for cmd in ("start", "status", "stop", "report", "tap"):
        assert cmd in r.stdout


def test_source_is_absolute_so_commands_elsewhere_reload_it(tmp_path, monkeypatch):
    """`pipeline start --config conf/x.toml` records its config in the state file; `status`,
    `pnl` and `halt` run from another folder must reload that same file."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "x.toml").write_text('[pipeline]\nname = "x"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config("conf/x.toml").source == str(tmp_path / "conf" / "x.toml")


def test_the_channels_validation_checks_are_the_feeds_own():
    from pipeline.config import FEED_CHANNELS
    from workers.venues.binance import CHANNEL_STREAMS
    assert tuple(CHANNEL_STREAMS) == FEED_CHANNELS["binance"]
