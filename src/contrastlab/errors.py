"""Errors that the command line prints as one line (no traceback)."""


class ConfigError(ValueError):
    """A bad config key or value. The message is one line that names the problem."""


class UserError(RuntimeError):
    """Bad input from the user (data, paths, sizes): printed as one line by the CLI."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT / SIGTERM): the command exits with 128 + ``signum``."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by signal {signum}")
        self.signum = signum
