"""Workload engine (runs in the worker): virtual users or an arrival rate driving the target."""

from soakd.workload.corpus import Corpus, CorpusEntry, parse_queries
from soakd.workload.engine import Engine, IterationFn, Level, level_at, think_delay
from soakd.workload.histogram import LatencyHistogram
from soakd.workload.matchers import EventMatcher, MatcherSet

__all__ = [
    "Corpus",
    "CorpusEntry",
    "Engine",
    "EventMatcher",
    "IterationFn",
    "LatencyHistogram",
    "Level",
    "MatcherSet",
    "level_at",
    "parse_queries",
    "think_delay",
]
