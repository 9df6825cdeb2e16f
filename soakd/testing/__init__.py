"""Soak tests from pytest: the library behind the ``soak`` marker and fixture.

:mod:`soakd.pytest_plugin` holds only pytest's hooks and fixtures; the parts live here, one
module per stage of a soak test:

- :mod:`~soakd.testing.spec`: the arguments (:class:`SoakArgs`, :func:`soak_spec`);
- :mod:`~soakd.testing.profile`: the config soakd runs with (cadence presets, TOML);
- :mod:`~soakd.testing.runner`: running ``soakd run`` in a subprocess and judging it;
- :mod:`~soakd.testing.outcome`: growth per round, the checks, the failure message.
"""

from __future__ import annotations

from soakd.testing.outcome import Growth, RoundStats, SiteGrowth, SoakResult
from soakd.testing.runner import run_soak
from soakd.testing.spec import SoakArgs, SoakSpec, SoakUsageError, soak_spec

__all__ = [
    "Growth",
    "RoundStats",
    "SiteGrowth",
    "SoakArgs",
    "SoakResult",
    "SoakSpec",
    "SoakUsageError",
    "run_soak",
    "soak_spec",
]
