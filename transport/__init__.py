"""Baton's network and process edges."""
