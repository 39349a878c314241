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
    """A real bundle exported from the tiny open_clip configuration (random weights, real graphs). Seeded:
    tests that look at labels (polygons merged under a minimum mapping unit, dense edges) see the same model
    in every session."""
    import torch

    from training.export.exporter import export_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bundles") / "rsclip-tiny"
    export_model("rsclip-tiny", out_dir=out)
    return out


@pytest.fixture(scope="session")
def plain_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An rsclip-tiny bundle exported without dense outputs (the shape of every bundle before issue 11)."""
    from training.export.exporter import export_model

    out = tmp_path_factory.mktemp("bundles") / "plain"
    export_model("rsclip-tiny", out_dir=out, dense=None, int8=False)
    return out


@pytest.fixture(scope="session")
def bundle(tiny_bundle: Path):
    """The tiny bundle, loaded (engine API tests)."""
    from rs_clip_plugin.engine.bundle import load_bundle

    return load_bundle(tiny_bundle)


@pytest.fixture(scope="session")
def tiny_multilingual_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from training.export.exporter import export_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bundles") / "rsclip-tiny-multilingual"
    export_model("rsclip-tiny-multilingual", out_dir=out)
    return out


@pytest.fixture(scope="session")
def multimodal_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rsclip-tiny's text + rgb towers plus small Sentinel-2 L2A and Sentinel-1 students (random weights)."""
    import torch
    from torch import nn

    from rs_clip_plugin.engine.bands import S1_GRD_BANDS, S2_L2A_BANDS
    from rs_clip_plugin.engine.radiometry import default_transform
    from training.export.exporter import ImageEncoderExport, export_model, rgb_encoder
    from training.models.factory import create_model

    torch.manual_seed(0)
    loaded = create_model("rsclip-tiny")

    def student(modality: str, bands: tuple[str, ...]) -> ImageEncoderExport:
        c = len(bands)
        module = nn.Sequential(nn.Conv2d(c, 16, 8, 8), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 64))
        units, transforms, mean, std = default_transform(modality, c)
        return ImageEncoderExport(modality, module.eval(), list(bands), units, transforms, mean, std, input_size=64)

    out = tmp_path_factory.mktemp("bundles") / "rsclip-tiny-s1s2"
    export_model(loaded, out_dir=out, name="rsclip-tiny-s1s2",
                 image_encoders=[rgb_encoder(loaded), student("s2-l2a", S2_L2A_BANDS), student("s1-grd", S1_GRD_BANDS)])
    return out


@pytest.fixture
def provider(qgis_processing):
    """The rsclip Processing provider, registered as the plugin registers it (also for qgis_process)."""
    from qgis.core import QgsApplication

    from rs_clip_plugin.plugin import RSClipPlugin

    plugin = RSClipPlugin(None)
    plugin.initProcessing()
    yield QgsApplication.processingRegistry().providerById("rsclip")
    QgsApplication.processingRegistry().removeProvider(plugin.provider)


@pytest.fixture(scope="session", autouse=True)
def _layers_die_before_qgis(request: pytest.FixtureRequest):
    """Destroy what Python still owns of QGIS before pytest-qgis calls exitQgis() (plugin_support.release_qgis_objects:
    a leftover QgsRasterLayer crashed the interpreter after every test had passed, so `make test` failed)."""
    try:
        request.getfixturevalue("qgis_app")  # set up first, so this teardown runs before exitQgis()
    except pytest.FixtureLookupError:
        yield
        return
    yield
    from plugin_support import release_qgis_objects

    release_qgis_objects()
