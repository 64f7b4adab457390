"""Hypothesis profiles: the default keeps CI fast; ``--hypothesis-profile=thorough`` digs deeper."""

from hypothesis import settings

settings.register_profile("thorough", max_examples=2000, deadline=None)
