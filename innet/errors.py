"""The error a bad scenario or bad command-line input raises (shared by config, claims
and the run-folder code without importing one another)."""


class ScenarioError(ValueError):
    """A scenario is invalid; the message names the key."""
