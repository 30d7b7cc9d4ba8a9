"""Fixtures for the daemon tests: the tiny preset model (``tiny_model``) is in tests/conftest.py, shared
with the other tests that need a model directory."""
