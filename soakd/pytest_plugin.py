"""pytest plugin (entry point ``pytest11``): soak a target from a test."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "soak(target, duration, users, max_rss_growth, max_error_rate): soak a target with soakd",
    )
