"""Registered torch custom ops, one module per op family."""
