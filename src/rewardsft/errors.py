"""The one exception type for bad input (configuration or data): the CLI prints it and exits with code 2."""


class ConfigError(ValueError):
    """A bad configuration or bad data: the message names the file, row and field (or the config key)."""
