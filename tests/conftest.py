"""Shared test set-up: offscreen Qt, real sample data, tiny bundles exported once per session."""

from __future__ import annotations

import os

# Must be set before anything imports Qt: without a display QGIS aborts the process (SIGABRT).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest

from rs_clip_plugin.engine.settings import sample_data_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Indexes and extracted bundles go to a per-session folder, never the user's cache."""
    os.environ["RSCLIP_CACHE"] = str(tmp_path_factory.mktemp("rsclip-cache"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = sample_data_dir()
    if not (d / "README.md").is_file():
        pytest.fail(f"real sample data not found at {d}: set RSCLIP_DATA (default ../shared/data beside the checkout)")
    return d


@pytest.fixture(scope="session")
def major_tom_dir(data_dir: Path) -> Path:
    return next((data_dir / "major_tom_s2l2a").iterdir())


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle exported from the tiny open_clip configuration (random weights, real graphs)."""
    from training.export.exporter import export_model

    out = tmp_path_factory.mktemp("bundles") / "rsclip-tiny"
    export_model("rsclip-tiny", out_dir=out)
    return out


@pytest.fixture(scope="session")
def tiny_multilingual_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export.exporter import export_model

    out = tmp_path_factory.mktemp("bundles") / "rsclip-tiny-multilingual"
    export_model("rsclip-tiny-multilingual", out_dir=out)
    return out
