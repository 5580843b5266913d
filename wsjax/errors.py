"""Errors that wsjax reports to users as one line, with what to do about it."""


class WsjaxError(Exception):
    """Base of every error whose message is meant for the user (the CLIs print it, exit 2)."""


class DataError(WsjaxError, ValueError):
    """A dataset or data file is missing or malformed."""


class ConfigError(WsjaxError, ValueError):
    """An argument or configuration value is invalid."""


class RunDirError(WsjaxError):
    """A run directory is missing, incomplete, or belongs to a different configuration."""
