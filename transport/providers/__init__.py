"""Upstream provider adapters over httpx."""
