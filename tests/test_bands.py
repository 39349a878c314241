"""Band tables and radiometry against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from rs_clip_plugin.engine.bands import (
    S2_COMMON_NAMES,
    S2_L1C_BANDS,
    S2_L2A_BANDS,
    bands_for,
    canonical_band,
    names_s2_bands,
    native_resolution,
    parse_s2_product,
    s2_offset_dn,
)
from rs_clip_plugin.engine.radiometry import (
    CLIP_MEAN,
    CLIP_STD,
    BandTransform,
    apply_transform,
    db_to_linear,
    default_transform,
    linear_to_db,
    s2_reflectance,
)


@pytest.mark.parametrize(
    "label, expected",
    [
        ("B4", "B04"), ("B04", "B04"), ("b8a", "B8A"), ("B8A", "B8A"), ("band_08", "B08"), ("BAND 12", "B12"),
        ("8", "B08"), ("VV", "VV"), ("vh", "VH"), ("Red", "red"), ("g", "green"), ("B13", None), ("NDVI", None),
        ("B00", None),
    ],
)  # fmt: skip
def test_canonical_band(label: str, expected: str) -> None:
    assert canonical_band(label) == expected


@pytest.mark.parametrize(
    "label, expected",
    [
        ("red", "B04"), ("Green", "B03"), ("blue", "B02"), ("nir", "B08"), ("nir08", "B8A"), ("nir09", "B09"),
        ("coastal", "B01"), ("cirrus", "B10"), ("swir16", "B11"), ("swir22", "B12"), ("B05", "B05"), ("VV", "VV"),
        ("rededge", None),
    ],
)  # fmt: skip
def test_stac_common_names_as_sentinel2_bands(label: str, expected: str) -> None:
    assert canonical_band(label, s2_common=True) == expected
    assert S2_COMMON_NAMES["nir"] == "B08" and set(S2_COMMON_NAMES.values()) <= set(S2_L1C_BANDS)


def test_when_common_names_mean_sentinel2() -> None:
    assert names_s2_bands(["red", "green", "blue", "nir"]) and names_s2_bands(["swir16", None])
    assert not names_s2_bands(["red", "green", "blue"])  # a photo's channels
    assert names_s2_bands(["red", "green", "blue"], sensor="s2-l2a")
    assert canonical_band("nir") is None  # without the context a bare 'nir' names nothing


def test_band_tables() -> None:
    assert len(S2_L1C_BANDS) == 13 and len(S2_L2A_BANDS) == 12 and "B10" not in S2_L2A_BANDS
    assert bands_for("s1-grd") == ("VV", "VH") and bands_for("rgb") == ("red", "green", "blue")
    assert native_resolution("B05") == 20.0 and native_resolution("B01") == 60.0 and native_resolution("VV") == 10.0
    with pytest.raises(ValueError, match="unknown modality"):
        bands_for("landsat")


def test_product_parsing() -> None:
    p = parse_s2_product("/data/S2B_MSIL2A_20200223T032759_N0214_R018_T48QUE_20200223T075021.SAFE/GRANULE")
    assert (p.level, p.baseline, p.date, p.tile) == ("s2-l2a", "0214", "20200223", "48QUE")
    q = parse_s2_product("S2A_MSIL1C_20230501T101031_N0509_R022_T32TQM_20230501T121212")
    assert (q.level, q.baseline, q.tile) == ("s2-l1c", "0509", "32TQM")
    assert parse_s2_product("LC08_L1TP_190024_20200101") is None


@pytest.mark.parametrize(
    "baseline, offset",
    [("0400", 1000.0), ("04.00", 1000.0), ("0509", 1000.0), ("0300", 0.0), ("0214", 0.0), ("9999", 0.0), (None, 0.0), ("xx", 0.0)],
)
def test_baseline_offset(baseline, offset: float) -> None:
    assert s2_offset_dn(baseline) == offset


def test_s2_reflectance_and_db() -> None:
    dn = np.array([1000, 2000, 11000], np.uint16)
    assert s2_reflectance(dn, 1000.0).tolist() == pytest.approx([0.0, 0.1, 1.0])
    assert s2_reflectance(dn).tolist() == pytest.approx([0.1, 0.2, 1.1])
    assert db_to_linear(np.array([-10.0, 0.0, 10.0])).tolist() == pytest.approx([0.1, 1.0, 10.0], rel=1e-6)
    assert linear_to_db(np.array([0.01, 1.0, 0.0])).tolist() == pytest.approx([-20.0, 0.0, -100.0], rel=1e-6)


def test_apply_transform_hand_computed() -> None:
    x = np.array([[[[0.5, 2.0]], [[-30.0, 5.0]]]], np.float32)  # (1, 2 bands, 1, 2)
    t = [BandTransform(1.0, 0.0, (0.0, 1.0)), BandTransform(1 / 35, 30 / 35, (0.0, 1.0))]
    y = apply_transform(x, t, mean=[0.25, 0.5], std=[0.5, 0.25])
    # band 0: clip(0.5)=0.5 -> (0.5-0.25)/0.5 = 0.5; clip(2.0)=1 -> 1.5
    # band 1: -30 dB -> 0 -> (0-0.5)/0.25 = -2; 5 dB -> 1 -> 2
    assert y.dtype == np.float32
    assert y[0, 0, 0].tolist() == pytest.approx([0.5, 1.5])
    assert y[0, 1, 0].tolist() == pytest.approx([-2.0, 2.0])


def test_apply_transform_nodata_and_errors() -> None:
    units, t, mean, std = default_transform("rgb", 3)
    assert units == "unit" and mean == list(CLIP_MEAN) and std == list(CLIP_STD)
    x = np.full((3, 2, 2), 0.5, np.float32)
    x[0, 0, 0] = np.nan
    y = apply_transform(x, t, mean, std)
    assert y[0, 0, 0] == 0.0
    assert y[1, 1, 1] == pytest.approx((0.5 - CLIP_MEAN[1]) / CLIP_STD[1])
    with pytest.raises(ValueError, match="3 bands in the data but 2 transforms"):
        apply_transform(x, t[:2], mean[:2], std[:2])
    units, t, mean, std = default_transform("s2-l1c", 13)
    assert units == "reflectance" and len(t) == 13 and mean == [0.0] * 13 and std == [1.0] * 13
    assert default_transform("s1-grd", 2)[0] == "db"
    with pytest.raises(ValueError, match="3 bands"):
        default_transform("rgb", 4)
