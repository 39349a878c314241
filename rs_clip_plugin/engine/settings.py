"""Settings read from the environment, with defaults that work from a checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "rsclip"

_REPO = Path(__file__).resolve().parents[2]


def sample_data_dir() -> Path:
    """Real Sentinel samples: $RSCLIP_DATA, else ../shared/data beside the checkout."""
    return Path(os.environ.get("RSCLIP_DATA", _REPO.parent / "shared" / "data"))


def user_cache_root() -> Path:
    """This user's cache folder for RS-CLIP by the platform's convention (``platformdirs.user_cache_dir``):
    Linux $XDG_CACHE_HOME/rsclip (default ~/.cache/rsclip, the folder earlier versions used), macOS
    ~/Library/Caches/rsclip, Windows %LOCALAPPDATA%\\rsclip\\Cache. platformdirs is used when importable (QGIS
    does not always ship it, so it is not a dependency); the same conventions are spelled out otherwise."""
    try:
        import platformdirs
    except ImportError:
        pass
    else:
        return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP_NAME / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / APP_NAME
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / APP_NAME


def cache_dir() -> Path:
    """Embedding indexes, extracted bundles, engine caches: $RSCLIP_CACHE, else ``user_cache_root()``."""
    env = os.environ.get("RSCLIP_CACHE")
    return Path(env) if env else user_cache_root()


def require_sample(*parts: str) -> Path:
    """A path inside the sample data, or a FileNotFoundError that says where samples come from."""
    p = sample_data_dir().joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(
            f"sample data {p} is missing: set RSCLIP_DATA to the folder holding the real Sentinel samples "
            "(default ../shared/data beside the checkout; see README, 'Sample data')"
        )
    return p

