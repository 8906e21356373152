"""Shared pytest configuration: one hypothesis profile for the whole suite.

``deadline=None``: the shared CI machine has noisy timings, and a per-example deadline would turn load into
flaky failures. ``max_examples=50`` keeps property tests fast; ``HYPOTHESIS_PROFILE=thorough`` runs 500.
"""

from __future__ import annotations

import os

try:
    from hypothesis import settings
except ImportError:  # hypothesis is a dev extra; tests that need it import it themselves
    settings = None

if settings is not None:
    settings.register_profile("softgate", deadline=None, max_examples=50)
    settings.register_profile("thorough", deadline=None, max_examples=500)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "softgate"))
