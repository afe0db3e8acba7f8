"""One module or package per process kind (floor 4): feed, indicators, model,
model_host, execution, recorder, plus venues/. Adapters drain rings and call pure
cores (bars, execution/paper, execution/portfolio) that take a clock."""
