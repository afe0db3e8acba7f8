"""tickpipe orchestrator: CLI, config, supervisor, ZeroMQ bus, tap, report."""
__version__ = "0.1.0"
