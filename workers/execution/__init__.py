"""Execution: the adapter process (worker.py) beside its pure cores (portfolio.py,
paper.py), which take numpy records and a clock and never touch rings or zmq, so a
backtest runs the very arithmetic a live run does."""
