"""Errors users see. The CLI prints these as one line (`error: ...`), never a traceback."""


class SconesError(Exception):
    """Base of every error meant for the user: the message says what and where."""


class StorageError(SconesError):
    """An object-store URL that is malformed, missing, or escapes the workspace."""


class RegistryError(SconesError):
    """A model-registry operation that cannot be done (unknown version, bad transition)."""


class PipelineExecutionError(SconesError):
    """The local runner cannot run a definition (unsupported step type, bad reference)."""


class ConfigError(SconesError):
    """A configuration file or override is wrong; the message names the key and file."""
