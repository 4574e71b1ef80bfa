"""Naive float64-capable implementations, written for clarity; the tests check every
backend against these."""
