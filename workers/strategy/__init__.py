"""Strategies: signals (and prices) in, intents out. Pure cores the strategy
process and a backtest both drive."""
