"""Where a run's facts go: the observers (alerts, metrics, sd_notify) and the event log.

``observers.py`` builds the observers from a table and isolates their exceptions; ``events.py``
is the ``events.jsonl`` writer (the catalogue of names is :mod:`soakd.events`).
"""
