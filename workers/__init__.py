"""One module or package per process kind (floor 4): feed, indicators, model,
model_host, execution, recorder, plus venues/. Adapters drain rings and call pure
cores (bars, strategy/signals, execution/desk and what it wires: risk, orders, broker, portfolio) that take a clock."""
