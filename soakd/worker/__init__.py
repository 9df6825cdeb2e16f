"""The worker process: builds the target, drives it, answers the supervisor's questions."""
