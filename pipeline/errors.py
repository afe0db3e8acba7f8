"""The errors a user can cause, each printed as one line without a traceback.

Every floor raises these; the commands (pipeline/cli.py) print them and exit
with status 2. A module may keep its own subclass for what only it knows
(ConfigError for config files, FeaturesError for candle files, ...).
"""
from __future__ import annotations

USER_EXIT = 2          # exit status of a user mistake
CONFIG_EXIT = 2        # a worker's exit status for a configuration error: the supervisor
                       # stops the pipeline with its message instead of restarting it


class UserError(Exception):
    """Printed as 'pipeline: <message>' with exit status 2."""


class ConfigError(ValueError):
    """A user mistake in a config file; printed as is, without a traceback."""


class ConfigurationError(Exception):
    """Something only a change of config or artifacts fixes (a missing or mismatching
    model artifact, a model host that refuses this pipeline); printed in one line."""
