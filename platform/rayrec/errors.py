"""Every error meant for the person running rayrec (not for a developer reading a traceback).

The CLI (and so every job under ``jobs/``) turns a :class:`RayrecError` into one line on
stderr and a non-zero exit: 2 for a bad config, 1 for everything else. Anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class RayrecError(Exception):
    """Base: the message says what is wrong and what to do about it."""

    exit_code = 1


class ConfigError(RayrecError, ValueError):
    """A config file or override is invalid; the message names each bad field."""

    exit_code = 2


class DataError(RayrecError, ValueError):
    """Input that cannot be read at all; the message names the file and the problem."""


class UserFacingError(RayrecError, RuntimeError):
    """A job cannot go on as asked (missing artifacts, unsafe settings, ...)."""


class ClusterResourceError(UserFacingError):
    """The Ray cluster lacks a resource the config asks for (and never will)."""
