"""Baton's actor core: pure trio, no network I/O."""
