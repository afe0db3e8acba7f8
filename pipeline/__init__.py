"""tickpipe's plan (floor 2: config, topology, symbols, bus, metrics, errors,
storage, clock, logs) and its commands (floor 5: CLI, supervisor, tap, download,
features)."""
__version__ = "0.1.0"
