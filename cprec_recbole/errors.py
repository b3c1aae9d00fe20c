"""Errors for bad input: each message names the file, line or key and says what to do."""


class DataError(ValueError):
    """A data file is missing or malformed."""


class ConfigError(ValueError):
    """A configuration file or key is invalid."""
