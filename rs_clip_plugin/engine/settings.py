"""Settings read from the environment, with defaults that work from a checkout."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def sample_data_dir() -> Path:
    """Real Sentinel samples: $RSCLIP_DATA, else ../shared/data beside the checkout."""
    return Path(os.environ.get("RSCLIP_DATA", _REPO.parent / "shared" / "data"))


def cache_dir() -> Path:
    """Embedding indexes, extracted bundles, the default bundle: $RSCLIP_CACHE, else ~/.cache/rsclip."""
    return Path(os.environ.get("RSCLIP_CACHE", Path.home() / ".cache" / "rsclip"))


def require_sample(*parts: str) -> Path:
    """A path inside the sample data, or a FileNotFoundError that says where samples come from."""
    p = sample_data_dir().joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(
            f"sample data {p} is missing: set RSCLIP_DATA to the folder holding the real Sentinel samples "
            "(default ../shared/data beside the checkout; see README, 'Sample data')"
        )
    return p

