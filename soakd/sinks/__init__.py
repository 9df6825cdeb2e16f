"""Where a run's facts go: events, the sample store, metrics, webhooks, sd_notify."""
