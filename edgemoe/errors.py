"""The EdgeMoEError hierarchy: every user-facing failure is one of these, and says the fix."""
from __future__ import annotations


class EdgeMoEError(Exception):
    """Base of every error edgemoe raises on purpose."""


class ConfigError(EdgeMoEError, ValueError):
    """An option or configuration value is invalid."""


class UnsupportedArchitectureError(EdgeMoEError):
    """The checkpoint's model family has no adapter."""


class CheckpointError(EdgeMoEError):
    """The source checkpoint is missing files, truncated, or its tensors do not match the weight map."""


class PackageError(EdgeMoEError):
    """An .edgemoe package is missing, malformed or was not written completely."""


class IncompatiblePackageError(PackageError):
    """The package was written by an incompatible (newer major) format version."""


class CorruptRecordError(PackageError):
    """A file or expert record in the package does not match its sha256 or length."""


class UnsafePathError(PackageError):
    """A path in the manifest tries to leave the package directory."""


class BudgetError(EdgeMoEError):
    """The memory budget is malformed or too small for the package (``minimum``: the smallest budget
    that runs, in bytes, where the package's plan knows it)."""

    def __init__(self, message: str, minimum: int | None = None):
        super().__init__(message)
        self.minimum = minimum


class DeviceProfileError(ConfigError):
    """A device profile is unknown, or its YAML file is malformed (the message names the field)."""


class KernelsMissingError(PackageError):
    """A backend's ahead-of-time kernels for this package and device are missing, stale or cannot run
    here (the message names the command that builds them)."""
