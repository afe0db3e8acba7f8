"""One module per process kind: feed, indicators, model, execution."""
