"""The exception types the CLI reports without a traceback: bad input (exit 2) and a run that stopped itself (exit 1)."""


class ConfigError(ValueError):
    """A bad configuration or bad data: the message names the file, row and field (or the config key)."""


class NonFiniteError(RuntimeError):
    """Training met a NaN or infinite gradient norm and ``train.on_nonfinite=stop``: nothing of that step was
    applied, and the newest checkpoint is from before it."""
