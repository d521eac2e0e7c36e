"""Benchmarks: printed tables that compare side by side in one run (not tests; `make bench`)."""
