"""Reproductions of published experiments, one module per paper."""
