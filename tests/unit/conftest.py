"""Hypothesis profiles for the fuzz tests (tests/unit/test_fuzz_*.py).

``make test`` runs the ``ci`` profile: few examples, derandomized, so every run tries the same
inputs and a failure reproduces.  ``make fuzz`` sets ``HARPY_FUZZ=1`` for the ``fuzz`` profile:
many random examples per property.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("HARPY_FUZZ_EXAMPLES", "20000")),
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("fuzz" if os.environ.get("HARPY_FUZZ") == "1" else "ci")
