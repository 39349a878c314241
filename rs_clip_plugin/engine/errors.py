"""The engine's one error vocabulary.

Every error a user can fix is an :class:`RSClipError`. Its message may name the *parameters* the user
should change as ``{name}`` placeholders (engine names: ``{sensor}``, ``{bands}``, ``{overwrite}``,
``{out}``, ...), listed in ``params``. Each front end words them its own way through :meth:`render`:
the CLI as ``--sensor``, Processing as its parameter's label, the classify dialog as its field's label.
``str(err)`` uses the engine names themselves in backticks (the Python API's keyword arguments).

Subclasses say what kind of fix is needed; the CLI maps every ``RSClipError`` (and ``OSError``) to exit
code 2 with one line, and anything else is a bug (exit 1, traceback).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Optional

_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class RSClipError(Exception):
    """An error the user can fix; the message names the problem and the fix."""

    def __init__(self, message: str, *, params: Iterable[str] = ()) -> None:
        self.template = message
        # Only listed names are placeholders, so a path that happens to hold "{x}" is left alone.
        self.params = tuple(params) or tuple(dict.fromkeys(_PLACEHOLDER.findall(message)))
        super().__init__(message)

    def render(self, names: Optional[Mapping[str, str]] = None) -> str:
        """The message with each parameter placeholder replaced by the front end's name for it."""
        names = names or {}

        def sub(m: re.Match) -> str:
            key = m.group(1)
            if key not in self.params:
                return m.group(0)
            return names.get(key, f"`{key}`")

        return _PLACEHOLDER.sub(sub, self.template)

    def __str__(self) -> str:
        return self.render()


class InputError(RSClipError, ValueError):
    """Bad input: a raster that cannot be read or mapped, an option value out of range."""


class BundleError(RSClipError, ValueError):
    """A model bundle that cannot be used: which file, and what to do."""


class OutputError(RSClipError, OSError):
    """The output cannot be written: it exists (and overwrite was not asked), another run is writing
    it, or the folder is read-only, full or not a folder."""


class OutputExistsError(OutputError, FileExistsError):
    """Outputs already in the output folder and overwrite not asked for."""


class ReadError(RSClipError, OSError):
    """A file that exists but cannot be read (truncated, corrupt, unreachable)."""


def cli_names(params: Iterable[str]) -> dict[str, str]:
    """The CLI's spelling of engine parameter names: ``tile_size_m`` -> ``--tile-size-m``."""
    return {p: "--" + p.replace("_", "-") for p in params}


def read_failure(path: object, exc: BaseException) -> ReadError:
    """The ReadError for a raster (or band file) that opened but fails to read: truncated, damaged, gone.

    GDAL's own message ("Read failed. See previous exception for details.") names neither the file nor the
    cause; the cause, when rasterio chained one, is added.
    """
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and "previous exception" in detail:
        detail = str(cause).splitlines()[0]
    return ReadError(f"cannot read {path}: {detail}; the file is truncated or damaged: copy or export it again")
