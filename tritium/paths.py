"""Where Tritium writes the files it generates, and where its shipped data lives.

Generated files (Verilog, simulator builds, bitstreams and their reports, proofs, place-and-route
runs, training checkpoints) go under one build folder, :func:`build_dir`:

1. ``$TRITIUM_BUILD_DIR`` when set and not empty (a relative path is taken from the current
   directory at the time of the call);
2. else, when this package runs from a source checkout (an editable install or ``PYTHONPATH``),
   that checkout's ``build/`` folder, as the repository's ``make`` targets and tests expect;
3. else (an installed wheel) the user's cache folder: ``$XDG_CACHE_HOME/tritium`` or
   ``~/.cache/tritium`` (``~/Library/Caches/tritium`` on macOS, ``%LOCALAPPDATA%\\tritium\\Cache``
   on Windows), so simulator builds are shared between working directories and nothing is ever
   written inside the installed package.

The environment is only read, never written.
"""

import os
import pathlib
import sys

from .sim.golden import TritiumValueError

__all__ = ["BUILD_DIR_ENV", "BuildDirError", "build_dir", "source_checkout", "user_cache_dir"]

#: the environment variable that overrides the build folder
BUILD_DIR_ENV = "TRITIUM_BUILD_DIR"


class BuildDirError(TritiumValueError):
    """The configured build folder cannot hold generated files (it names an existing non-folder)."""


def source_checkout():
    """The root of the source checkout this package runs from (the folder holding
    ``pyproject.toml`` and ``hw/``), or ``None`` when it runs from an installed package."""
    root = pathlib.Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "hw" / "engine.py").is_file():
        return root
    return None


def user_cache_dir(environ=None):
    """The per-user cache folder for Tritium (not created); see the module docstring."""
    env = os.environ if environ is None else environ
    home = pathlib.Path(env.get("HOME") or pathlib.Path.home())
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "tritium"
    if os.name == "nt" and env.get("LOCALAPPDATA"):
        return pathlib.Path(env["LOCALAPPDATA"]) / "tritium" / "Cache"
    xdg = env.get("XDG_CACHE_HOME", "")
    base = pathlib.Path(xdg) if xdg and os.path.isabs(xdg) else home / ".cache"  # XDG: relative is ignored
    return base / "tritium"


def build_dir(*parts, environ=None):
    """The build folder, with ``parts`` joined below it, as an absolute path (not created).

    ``environ`` (default ``os.environ``) is only read. Raises :class:`BuildDirError` when
    ``$TRITIUM_BUILD_DIR`` names something that exists and is not a folder.
    """
    env = os.environ if environ is None else environ
    configured = env.get(BUILD_DIR_ENV, "")
    if configured:
        base = pathlib.Path(configured).expanduser()
        base = base if base.is_absolute() else pathlib.Path.cwd() / base
        if base.exists() and not base.is_dir():
            raise BuildDirError(f"{BUILD_DIR_ENV}={configured} is not a folder")
    elif (root := source_checkout()) is not None:
        base = root / "build"
    else:
        base = user_cache_dir(env)
    return base.joinpath(*parts)
