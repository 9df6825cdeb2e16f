"""The run's rules applied as samples arrive: breaches become events, ``abort`` ends the run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from soakd.config import Config
from soakd.rules import RuleEngine, rules_from_config
from soakd.supervisor.state import Emit, RunState


class Thresholds:
    """Feeds the pure :class:`RuleEngine` and acts on its breaches.

    Collaborators: the rule engine (built from the config, grace = the warm-up floor), the
    run's state (an ``abort`` breach stops the run) and ``emit`` (``threshold.breached``).
    """

    def __init__(self, config: Config, state: RunState, emit: Emit) -> None:
        self.engine = RuleEngine(rules_from_config(config), grace_s=config.detection.warmup)
        self._state = state
        self._emit = emit

    def observe(self, t: float, values: Mapping[str, float]) -> None:
        self.engine.observe(t, values)

    def exclude(self, start: float, end: float, metrics: Iterable[str]) -> None:
        """A perturbed span with no judged samples of ``metrics``: paused, not reset."""
        self.engine.exclude(start, end, metrics)

    def observe_leak(self, t: float, kind: str, *, confirmed: bool) -> None:
        self.engine.observe_leak(t, kind, confirmed=confirmed)

    def evaluate(self, now: float | None = None) -> None:
        """Judge every rule at ``now`` (default: the run's clock); emit each breach, stop the
        run on an ``abort`` action."""
        for breach in self.engine.evaluate(self._state.now() if now is None else now):
            self._emit("threshold.breached", "warning", **breach.event_fields())
            if breach.action == "abort":
                self._state.aborted = True
                self._state.request_stop(f"aborted: {breach.rule}")
