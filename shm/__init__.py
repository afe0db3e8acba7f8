"""Shared-memory primitives: segments, record schemas, rings and latest-value tables."""
