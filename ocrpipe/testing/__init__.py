"""Helpers for tests and benchmarks: generated PDFs with known text."""
