"""Helpers for tests and benchmarks: generated PDFs and inputs with known text, in-memory
fakes of the adapters (:mod:`~ocrpipe.testing.memory`), and forwarding store wrappers."""
