"""Fault injection for Baton: fake providers, fault models, suites."""
