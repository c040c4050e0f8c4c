"""Typed errors raised by the library.

Every error carries the file it concerns (when there is one), what is wrong, and how to fix it;
the CLI prints them as one line and maps them to an exit code: 2 for usage errors (the command
line cannot be satisfied as given), 1 for runtime errors (the data cannot be processed).
"""

from __future__ import annotations

from pathlib import Path


class PansharpenError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, problem: str, *, path: str | Path | None = None, fix: str | None = None):
        self.problem = problem
        self.path = str(path) if path is not None else None
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.path:
            parts.append(f"{self.path}:")
        parts.append(self.problem.rstrip("."))
        msg = " ".join(parts)
        if self.fix:
            msg += f" - {self.fix.rstrip('.')}"
        return msg


class UsageError(PansharpenError):
    """The command line or call arguments cannot be satisfied (exit 2)."""

    exit_code = 2


class InputNotFoundError(UsageError):
    """A named input file does not exist or cannot be read."""


class OutputError(UsageError):
    """The destination cannot be written (exists, folder missing, not writable)."""


class SceneResolutionError(UsageError):
    """A SCENE argument could not be resolved into a PAN/MS pair."""


class DataError(PansharpenError):
    """The data cannot be processed as given (exit 1)."""


class NotARasterError(DataError):
    """A file exists but is not a raster GDAL can read."""


class GeometryError(DataError):
    """The PAN and MS grids cannot be aligned (disjoint, rotated, flipped, no georeference)."""


class RadiometryError(DataError):
    """Unsupported data type, or no valid pixel at all."""


class ModelError(PansharpenError):
    """A model or its weights cannot be used (unknown name, hash mismatch, shape mismatch)."""


class Cancelled(PansharpenError):
    """The run was interrupted (Ctrl-C); nothing was left at the destination."""

    exit_code = 130
