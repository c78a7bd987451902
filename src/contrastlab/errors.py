"""Errors that the command line prints as one line (no traceback)."""


class ConfigError(ValueError):
    """A bad config key or value. The message is one line that names the problem."""


class UserError(RuntimeError):
    """Bad input from the user (data, paths, sizes): printed as one line by the CLI."""
