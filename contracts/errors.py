"""The errors trackside raises to its callers, in one place both the SDK and its tools import."""


class Error(Exception):
    """Base of trackside's errors."""


class UsageError(Error, ValueError):
    """A call trackside cannot honour as made (the message says what to change)."""


class RunNotFoundError(Error, KeyError):
    """No run matches the id (or the prefix matches several)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class ArtifactNotFoundError(Error, KeyError):
    """No artifact with that name, or no version with that alias."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class TransportError(Error, RuntimeError):
    """The daemon refused this writer's data, or could not be reached in time; raised by the
    next ``log()``, ``flush()`` or ``finish()`` once retrying cannot help."""
