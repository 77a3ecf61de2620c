"""One exception type for every user-facing failure.

Scripts catch :class:`WorldModelsError` and print its message as a single line
(``error: ...``) with a non-zero exit status; anything else is a bug and keeps its
traceback.
"""


class WorldModelsError(Exception):
    """A problem the user can fix: bad config, missing or corrupt file, full disk, ..."""


class ConfigError(WorldModelsError):
    """An unknown key, a wrong type or an impossible value in a config or an override."""


class DataError(WorldModelsError):
    """A missing, truncated, foreign or inconsistent data file."""
