"""What can go wrong because of what a user asked for, as opposed to a bug.

Every error that a user can fix (a bad config value, a missing or corrupt file, a run folder in use)
is a :class:`SemAIMError`: the command line prints its message and exits with status 2, and anything
else shows its traceback. Each kind also derives from the built-in exception it refines
(``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so Python callers may catch either.
"""

from __future__ import annotations


class SemAIMError(Exception):
    """Base of every error that names a user's input: the CLI turns it into exit 2 with its message."""


class ConfigError(SemAIMError, ValueError):
    """An impossible configuration value; the message names the field, what it got and what it needs."""


class DataError(SemAIMError, ValueError):
    """Data that cannot be used: a corrupt file, labels out of range, splits that do not match."""


class BadImageError(DataError):
    """A corrupt or unreadable image file."""


class MissingFileError(SemAIMError, FileNotFoundError):
    """A file or folder that was named (data, checkpoint, image) does not exist."""


class CheckpointError(SemAIMError, ValueError):
    """A checkpoint or weights file that cannot be read or does not fit the model."""


class RunDirError(SemAIMError, ValueError):
    """The run folder cannot be used as asked: in use, not empty, nothing to resume, not writable."""


class DeviceMemoryError(SemAIMError, RuntimeError):
    """A step did not fit in the device's memory; the message names the setting that makes it fit."""


class NonFiniteLossError(SemAIMError, RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


class SemAIMWarning(UserWarning):
    """Something a user asked for that works but is probably not what they want; the CLI prints it as
    ``semaim: warning: ...`` on one line."""


class SlowPrecisionWarning(SemAIMWarning):
    """A precision the device only emulates (bf16 on a CPU without AVX512-BF16 or AMX)."""
