"""The supervisor and its parts: one soak from start to verdict (see ``coordinator.py``).

``state`` the run's clock and course · ``targets`` the watched processes · ``stats`` where heap
statistics come from · ``sampling`` the samplers · ``schedule`` their cadences · ``analysis``
the detector's feed and verdict events · ``tracing`` when attribution runs · ``thresholds``
the rules · ``workload`` the worker's reports · ``recorder`` samples.db, events and observers.
"""

from soakd.supervisor.coordinator import Supervisor

__all__ = ["Supervisor"]
