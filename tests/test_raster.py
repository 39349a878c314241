"""Reading real Sentinel/aerial samples and small written rasters: band identity, physical units, windows."""

from __future__ import annotations

import shutil
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from plugin_support import s2_crop, s2_vrt
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.windows import Window

from rs_clip_plugin.engine.bands import S2_L1C_BANDS, S2_L2A_BANDS
from rs_clip_plugin.engine.bundle import EncoderSpec, Manifest, TextSpec
from rs_clip_plugin.engine.errors import cli_names
from rs_clip_plugin.engine.radiometry import default_transform
from rs_clip_plugin.engine.raster import RasterError, encoder_for, encoders_for, open_source
from rs_clip_plugin.engine.sources import discover
from training.data.composites import rgb_composite

L2A_N0400 = "S2A_MSIL2A_20230610T101031_N0509_R022_T33UUP_20230610T150000"


def spec(modality: str, bands: list[str], units: str | None = None) -> EncoderSpec:
    u, transforms, mean, std = default_transform(modality, len(bands))
    return EncoderSpec(modality, f"image_{modality}.onnx", bands, transforms, units or u, mean, std, 32, 10.0, 32)


def direct(path: Path, row: int, col: int, index: int = 1) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # UC Merced photos have no georeferencing
        ds = rasterio.open(path)
    with ds:
        return float(ds.read(index, window=Window(col, row, 1, 1))[0, 0])


def write_tif(path: Path, data: np.ndarray, res: float = 10.0, nodata=None, descriptions=None, crs="EPSG:32633",
              driver: str = "GTiff", origin=(300000.0, 5000000.0)) -> Path:
    count, h, w = data.shape
    # ESA's JPEG 2000 band files are lossless; so are ours (the driver's default is lossy).
    options = {"REVERSIBLE": "YES", "QUALITY": "100"} if driver == "JP2OpenJPEG" else {}
    with rasterio.open(path, "w", driver=driver, width=w, height=h, count=count, dtype=data.dtype.name, crs=crs,
                       transform=from_origin(origin[0], origin[1], res, res), nodata=nodata, **options) as ds:
        ds.write(data)
        for i, d in enumerate(descriptions or []):
            ds.set_band_description(i + 1, d)
    return path


# --- real samples -------------------------------------------------------------------------------------

def test_major_tom_per_band_folder(major_tom_dir: Path) -> None:
    with open_source(major_tom_dir) as src:
        assert src.sensor == "s2-l2a"
        assert src.band_names == list(S2_L2A_BANDS)
        assert src.s2_offset_dn == 0.0  # N9999 reprocessing: no baseline-04.00 offset
        assert (src.width, src.height) == (1068, 1068) and src.res == pytest.approx(10.0)
        x = src.read(Window(700, 500, 4, 4), ["B04", "B05", "B01"])
    assert x.dtype == np.float32 and x.shape == (3, 4, 4)
    assert x[0, 0, 0] == pytest.approx(direct(major_tom_dir / "B04.tif", 500, 700) / 10000.0)
    # B05 (20 m) bilinear onto 10 m: the centre of 10 m pixel (2R, 2C) lies at native (R + 0.25, C + 0.25),
    # so its value is 0.75/0.25 weights of native pixels R-1..R, C-1..C.
    with rasterio.open(major_tom_dir / "B05.tif") as ds:
        v = ds.read(1).astype(np.float64)
    r, c = 250, 350
    want = (0.5625 * v[r, c] + 0.1875 * v[r - 1, c] + 0.1875 * v[r, c - 1] + 0.0625 * v[r - 1, c - 1]) / 10000.0
    assert x[1, 0, 0] == pytest.approx(want, rel=1e-5)
    # B01 (60 m): a 10 m pixel near the middle of a 60 m pixel stays close to that pixel's value.
    with rasterio.open(major_tom_dir / "B01.tif") as ds:
        b01 = ds.read(1).astype(np.float64)
    mid = src.reopen().read(Window(6 * 50 + 2, 6 * 40 + 2, 2, 2), ["B01"])[0] * 10000.0
    assert b01[40, 50] - 10 <= mid.mean() <= b01[40, 50] + 10


def test_eurosat_ms_13_band_tif_is_l1c(data_dir: Path) -> None:
    path = data_dir / "eurosat_ms" / "Forest" / "Forest_1.tif"
    with open_source(path) as src:
        assert src.sensor == "s2-l1c" and src.band_names == list(S2_L1C_BANDS)
        x = src.read(Window(10, 20, 1, 1))
    assert x[10, 0, 0] == pytest.approx(direct(path, 20, 10, index=11) / 10000.0)  # B10, band 11


def test_bigearthnet_s1_folder_is_db(data_dir: Path) -> None:
    folder = next((data_dir / "bigearthnet_v1" / "BigEarthNet-S1").glob("*/*"))
    with open_source(folder) as src:
        assert src.sensor == "s1-grd" and src.band_names == ["VV", "VH"] and src.sar_units == "db"
        x = src.read(Window(5, 7, 2, 2))
    vh = next(folder.glob("*_VH.tif"))
    assert x[1, 0, 0] == pytest.approx(direct(vh, 7, 5))


def test_bigearthnet_s2_patch_folder(data_dir: Path) -> None:
    folder = next((data_dir / "bigearthnet_v1" / "BigEarthNet-S2").glob("*/*"))
    with open_source(folder) as src:
        assert src.sensor == "s2-l2a" and len(src.band_names) == 12 and (src.width, src.height) == (120, 120)


def test_ssl4eo_s1_s2a_s2c(data_dir: Path) -> None:
    root = data_dir / "ssl4eo_s12"
    s1 = next((root / "s1").glob("*/*"))
    with open_source(s1) as src:
        assert src.sensor == "s1-grd" and src.sar_units == "db"
        assert src.read(Window(3, 3, 1, 1))[0, 0, 0] == pytest.approx(direct(s1 / "VV.tif", 3, 3))
    with open_source(next((root / "s2a").glob("*/*"))) as src:
        assert src.sensor == "s2-l2a" and src.s2_offset_dn == 0.0  # PRODUCT_ID ..._N0214_...
        # EPSG:4326: the ground resolution comes out in metres (about 10 m at 30 deg N).
        assert 9.0 < src.res_m < 10.5
        # 20/60 m files have slightly different bounds here; warped reads still fill the interior.
        assert not np.isnan(src.read(Window(100, 100, 16, 16))).any()
    with open_source(next((root / "s2c").glob("*/*"))) as src:
        assert src.sensor == "s2-l1c" and "B10" in src.band_names


def test_ucmerced_rgb_uint8(data_dir: Path) -> None:
    path = next((data_dir / "ucmerced" / "forest").glob("*.tif"))
    with open_source(path) as src:
        assert src.sensor == "rgb" and src.band_names == ["red", "green", "blue"] and src.res_m is None
        x = src.read(Window(30, 40, 1, 1))
    assert x[2, 0, 0] == pytest.approx(direct(path, 40, 30, index=3) / 255.0)


# --- products made here -------------------------------------------------------------------------------

def test_l2a_n0400_product_name_applies_offset(tmp_path: Path) -> None:
    dn = np.full((12, 8, 8), 1500, np.uint16)
    path = write_tif(tmp_path / f"{L2A_N0400}.tif", dn)
    with open_source(path) as src:
        assert src.sensor == "s2-l2a" and src.s2_offset_dn == 1000.0
        assert np.allclose(src.read(Window(0, 0, 2, 2)), 0.05)
    with open_source(path, s2_offset=0) as src:
        assert np.allclose(src.read(Window(0, 0, 2, 2)), 0.15)


def test_vrt_stacking_band_files_takes_names_from_sources(tmp_path: Path, major_tom_dir: Path) -> None:
    bands = ["B04", "B03", "B02"]
    xml = ['<VRTDataset rasterXSize="1068" rasterYSize="1068">']
    with rasterio.open(major_tom_dir / "B04.tif") as ds:
        xml.append(f"<SRS>{ds.crs.to_wkt()}</SRS><GeoTransform>{', '.join(map(str, ds.transform.to_gdal()))}</GeoTransform>")
    for i, b in enumerate(bands, 1):
        xml.append(
            f'<VRTRasterBand dataType="UInt16" band="{i}"><SimpleSource><SourceFilename relativeToVRT="0">'
            f"{major_tom_dir / (b + '.tif')}</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>"
        )
    xml.append("</VRTDataset>")
    vrt = tmp_path / "stack.vrt"
    vrt.write_text("\n".join(xml))
    with open_source(vrt) as src:
        assert src.band_names == bands and src.sensor == "s2-l2a"
        x = src.read(Window(10, 20, 1, 1), ["B02"])
    assert x[0, 0, 0] == pytest.approx(direct(major_tom_dir / "B02.tif", 20, 10) / 10000.0)


MTD_L2A = """<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
<n1:General_Info><Product_Info><PROCESSING_BASELINE>05.09</PROCESSING_BASELINE></Product_Info>
<Product_Image_Characteristics><BOA_ADD_OFFSET_VALUES_LIST>
{offsets}
</BOA_ADD_OFFSET_VALUES_LIST></Product_Image_Characteristics></n1:General_Info></n1:Level-2A_User_Product>
"""


def make_safe(root: Path, dn: int = 2000) -> Path:
    """A minimal L2A SAFE: real JPEG 2000 band files in R10m/R20m/R60m, decoys that must be ignored, MTD xml."""
    safe = root / f"{L2A_N0400}.SAFE"
    img = safe / "GRANULE" / "L2A_T33UUP_A041000_20230610T101031" / "IMG_DATA"
    sizes = {10: 12, 20: 6, 60: 2}
    natives = {10: ["B02", "B03", "B04", "B08"], 20: ["B05", "B06", "B07", "B8A", "B11", "B12"], 60: ["B01", "B09"]}
    for res, names in natives.items():
        (img / f"R{res}m").mkdir(parents=True, exist_ok=True)
        n = sizes[res]
        for b in names + (["B02", "SCL", "TCI"] if res != 10 else ["TCI"]):
            data = np.full((1, n, n), dn + (7 if res != 10 and b == "B02" else 0), np.uint16)
            data[0, 0, 0] = 0  # Sentinel-2 no-data
            write_tif(img / f"R{res}m" / f"T33UUP_20230610T101031_{b}_{res}m.jp2", data, res=res, driver="JP2OpenJPEG")
    offsets = "\n".join(f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13))
    (safe / "MTD_MSIL2A.xml").write_text(MTD_L2A.format(offsets=offsets))
    return safe


def test_safe_folder_and_zip(tmp_path: Path) -> None:
    safe = make_safe(tmp_path)
    d = discover(safe)
    assert d.level == "s2-l2a" and d.baseline == "05.09" and d.offsets_dn["B04"] == 1000.0
    with open_source(safe) as src:
        assert src.sensor == "s2-l2a" and src.band_names == list(S2_L2A_BANDS)
        assert (src.width, src.height) == (12, 12) and src.s2_offset_dn == 1000.0
        x = src.read(Window(0, 0, 12, 12))
    # B02 is read from R10m, not the 20 m copy (which holds dn + 7); all bands (2000 - 1000) / 10000.
    assert np.isnan(x[:, 0, 0]).all()  # DN 0 -> NaN
    assert np.allclose(x[S2_L2A_BANDS.index("B02"), 5:, 5:], 0.1)
    assert np.allclose(x[S2_L2A_BANDS.index("B05"), 5:, 5:], 0.1)
    archive = tmp_path / "product.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in safe.rglob("*"):
            zf.write(f, f.relative_to(tmp_path).as_posix())
    shutil.rmtree(safe)  # the zip must be read in place, not from the folder
    with open_source(archive) as src:
        assert src.sensor == "s2-l2a" and src.s2_offset_dn == 1000.0
        assert np.array_equal(src.read(Window(0, 0, 12, 12)), x, equal_nan=True)


def test_nodata_nan_and_outside_are_nan(tmp_path: Path) -> None:
    data = np.full((2, 6, 6), -12.0, np.float32)
    data[0, 1, 1] = -9999.0
    data[1, 2, 2] = np.nan
    path = write_tif(tmp_path / "s1.tif", data, nodata=-9999.0, descriptions=["VV", "VH"])
    with open_source(path) as src:
        assert src.sensor == "s1-grd" and src.sar_units == "db"
        x = src.read(Window(-2, -2, 8, 8))  # sticks out by 2 px top-left
    assert np.isnan(x[:, :2, :]).all() and np.isnan(x[:, :, :2]).all()
    assert np.isnan(x[0, 3, 3]) and np.isnan(x[1, 4, 4])
    assert np.count_nonzero(np.isnan(x)) == 2 * (64 - 36) + 2


def test_bands_and_sensor_overrides_and_linear_detection(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "sar.tif", np.full((2, 4, 4), 0.1, np.float32))
    with open_source(path) as src:
        assert src.sensor == "s1-grd" and src.band_names == ["VV", "VH"] and src.sar_units == "linear"
        lin = src.read_for(spec("s1-grd", ["VV", "VH"], units="db"), Window(0, 0, 4, 4))
    assert np.allclose(lin, -10.0)  # 0.1 linear power is -10 dB
    with open_source(path, bands=["VH", "VV"], sar_units="db") as src:
        assert src.band_names == ["VH", "VV"] and src.sar_units == "db"
    rgbn = write_tif(tmp_path / "rgbn.tif", np.full((4, 4, 4), 65535, np.uint16))
    with open_source(rgbn) as src:
        assert src.sensor == "rgb" and src.band_names == ["red", "green", "blue"]
        assert np.allclose(src.read(Window(0, 0, 4, 4)), 1.0)
    three = write_tif(tmp_path / "s2three.tif", np.full((3, 4, 4), 1000, np.uint16))
    with open_source(three, bands=["B04", "B03", "B02"]) as src:
        assert src.sensor == "s2-l2a" and np.allclose(src.read(Window(0, 0, 1, 1)), 0.1)


def test_unmappable_raster_and_non_raster_errors(tmp_path: Path, major_tom_dir: Path) -> None:
    five = write_tif(tmp_path / "five.tif", np.ones((5, 4, 4), np.uint8))
    with pytest.raises(RasterError, match=r"5 unnamed uint8 bands.*`sensor`.*`bands`"):
        open_source(five)
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(RasterError, match="not a raster GDAL can read"):
        open_source(text)
    with pytest.raises(RasterError, match="no such file"):
        open_source(tmp_path / "missing.tif")
    s1 = write_tif(tmp_path / "s1.tif", np.full((2, 4, 4), -10.0, np.float32), descriptions=["VV", "VH"])
    with open_source(s1) as src, pytest.raises(RasterError) as err:
        src.encoder_input(spec("s2-l2a", list(S2_L2A_BANDS)))
    msg = str(err.value)
    assert "expects bands ['B01'" in msg and "has ['VV', 'VH']" in msg and "`sensor`" in msg and "`bands`" in msg
    # Each front end names the parameters its own way (issue 15: one error vocabulary).
    cli = err.value.render(cli_names(err.value.params))
    assert "--sensor" in cli and "--bands" in cli and "`" not in cli
    dialog = err.value.render({"sensor": "‘Sensor’", "bands": "‘Band mapping’"})
    assert "‘Sensor’" in dialog and "‘Band mapping’" in dialog and "--" not in dialog
    with open_source(major_tom_dir) as src, pytest.raises(RasterError, match=r"missing \['HH'\]|encoder for s2-l2a"):
        src.check_mapping(spec("s1-grd", ["HH"]))


def test_zero_band_for_13_band_encoder_on_l2a(major_tom_dir: Path) -> None:
    enc = spec("s2-l1c", [*S2_L1C_BANDS])
    with open_source(major_tom_dir) as src:
        read = src.encoder_input(enc)
        w = Window(100, 100, 8, 8)
        x = read(w)
        physical = src.read(w)
    assert x.shape == (13, 8, 8)
    assert np.all(x[10] == 0.0)  # B10 (cirrus) does not exist in L2A: Paper A feeds zeros
    assert np.array_equal(np.delete(x, 10, axis=0), physical)
    # Past the raster's edge the read bands are no data, the zero band stays zero.
    with open_source(major_tom_dir) as src:
        edge = src.encoder_input(enc)(Window(src.width - 4, -3, 8, 8))
        inside = src.read(Window(src.width - 4, 0, 4, 5))
    assert np.all(edge[10] == 0.0)
    rest = np.delete(edge, 10, axis=0)
    assert np.isnan(rest[:, :3, :]).all() and np.isnan(rest[:, :, 4:]).all()
    assert np.array_equal(rest[:, 3:, :4], inside)


def test_rgb_encoder_on_sentinel2_true_colour(major_tom_dir: Path) -> None:
    with open_source(major_tom_dir) as src:
        w = Window(400, 400, 16, 16)
        rgb = src.read_for(spec("rgb", ["red", "green", "blue"]), w)
        b = src.read(w, ["B04", "B03", "B02"])
    assert np.allclose(rgb, np.clip(b / 0.2, 0.0, 1.0))  # L2A: reflectance 0.2 is white
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0


def test_true_colour_bands_feed_the_rgb_encoder(tmp_path: Path, major_tom_dir: Path) -> None:
    """A 4-band VRT B04, B03, B02, B08 (issue 10, defect 5): detected as s2-l2a, it cannot feed the 12-band
    encoder, so the rgb one is chosen; --sensor rgb says the same explicitly; both read the composite."""
    vrt = s2_vrt(major_tom_dir, tmp_path / "rgbn.vrt")
    text = TextSpec("text.onnx", "tokenizer.json", 77, ["en"])
    rgb = spec("rgb", ["red", "green", "blue"])
    manifest = Manifest("m", 32, 100.0, text, [spec("s2-l2a", [*S2_L2A_BANDS]), rgb])
    w = Window(5, 7, 16, 16)
    with open_source(vrt) as src:
        assert src.band_names == ["B04", "B03", "B02", "B08"] and src.sensor == "s2-l2a"
        assert [e.modality for e in encoders_for(manifest, src)] == ["rgb"]
        assert encoder_for(manifest, src).modality == "rgb"
        composite = src.read_for(rgb, w)
        reflectance = src.read(w, ["B04", "B03", "B02"])
    # One definition of the composite: the training's (bands.S2_TRUE_COLOUR_WHITE_REFLECTANCE), unquantised.
    assert np.allclose(composite, rgb_composite(_as_13(reflectance), "s2-l2a", quantize=False))
    assert reflectance[0, 0, 0] == pytest.approx(direct(major_tom_dir / "B04.tif", 507, 305) / 10000.0)
    with open_source(vrt, sensor="rgb") as src:
        assert src.sensor == "s2-l2a" and src.encoders == ("rgb",)  # read as reflectance, composited
        assert encoder_for(manifest, src).modality == "rgb"
        assert np.array_equal(src.read_for(rgb, w), composite)
        with pytest.raises(RasterError, match="s2-l2a encoder expects"):
            src.check_mapping(spec("s2-l2a", ["B04", "B03", "B02", "B08"]))  # rgb asked for: only rgb
    # Without the true-colour bands --sensor rgb still does not fit, and says what would.
    only_nir = s2_vrt(major_tom_dir, tmp_path / "nir.vrt", bands=("B08", "B8A"))
    with pytest.raises(RasterError, match=r"`sensor` rgb does not fit .*B04, B03, B02"):
        open_source(only_nir, sensor="rgb")


def _as_13(rgb_reflectance: np.ndarray) -> np.ndarray:
    """B04, B03, B02 placed in a 13-band L1C-ordered stack (what training's rgb_composite takes)."""
    out = np.zeros((13, *rgb_reflectance.shape[1:]), np.float32)
    for band, plane in zip(("B04", "B03", "B02"), rgb_reflectance):
        out[S2_L1C_BANDS.index(band)] = plane
    return out


def test_band_mapping_by_common_names(tmp_path: Path, major_tom_dir: Path) -> None:
    tif = s2_crop(major_tom_dir, tmp_path / "crop.tif", size=32)  # bands B02, B03, B04, B08
    with open_source(tif, bands=["blue", "green", "red", "nir"]) as src:
        assert src.band_names == ["B02", "B03", "B04", "B08"] and src.sensor == "s2-l2a"
        assert src.read(Window(0, 0, 1, 1), ["B08"])[0, 0, 0] == pytest.approx(direct(tif, 0, 0, 4) / 10000.0)
    with open_source(tif, bands=["B02", "green", "red", "nir08"]) as src:
        assert src.band_names == ["B02", "B03", "B04", "B8A"]
    with open_source(tif, bands=["blue", "green", "red", "B08"], sensor="s2-l2a") as src:
        assert src.band_names == ["B02", "B03", "B04", "B08"]
    # Band descriptions in common names (as STAC-derived COGs carry them).
    named = tmp_path / "named.tif"
    with rasterio.open(tif) as ds:
        data, profile = ds.read(), ds.profile
    with rasterio.open(named, "w", **profile) as ds:
        ds.write(data)
        for i, d in enumerate(["blue", "green", "red", "nir"], 1):
            ds.set_band_description(i, d)
    with open_source(named) as src:
        assert src.band_names == ["B02", "B03", "B04", "B08"] and src.sensor == "s2-l2a"
    with pytest.raises(RasterError, match=r"'rededge'\] names more than one band"):
        open_source(tif, bands=["blue", "green", "red", "rededge"])
    # 8-bit RGBN (aerial photos): red/green/blue stay a photo's channels, nir is left unused.
    photo = write_tif(tmp_path / "rgbn.tif", np.full((4, 8, 8), 128, np.uint8))
    with open_source(photo, bands=["red", "green", "blue", "nir"]) as src:
        assert src.band_names == ["red", "green", "blue"] and src.sensor == "rgb"


def test_encoder_for_and_reopen_in_thread(major_tom_dir: Path) -> None:
    text = TextSpec("text.onnx", "tokenizer.json", 77, ["en"])
    manifest = Manifest("m", 32, 100.0, text, [spec("rgb", ["red", "green", "blue"]), spec("s2-l1c", [*S2_L1C_BANDS])])
    src = open_source(major_tom_dir)
    assert encoder_for(manifest, src).modality == "s2-l1c"
    w = Window(0, 0, 32, 32)
    results = {}

    def worker() -> None:
        with src.reopen() as mine:
            results["x"] = mine.read(w)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert np.array_equal(results["x"], src.read(w))
    src.close()
    with pytest.raises(RasterError, match="after close"):
        src.read(w)


def test_override_and_layout_errors(tmp_path: Path, major_tom_dir: Path) -> None:
    with pytest.raises(RasterError, match="`sensor` s1-grd does not fit"):
        open_source(major_tom_dir, sensor="s1-grd")
    with pytest.raises(RasterError, match="names its bands by file name"):
        open_source(major_tom_dir, bands=["B04"])
    with pytest.raises(RasterError, match="unknown sensor"):
        open_source(major_tom_dir, sensor="landsat")
    not_safe = tmp_path / "photos.zip"
    with zipfile.ZipFile(not_safe, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(RasterError, match=r"exactly one Sentinel-2 \.SAFE"):
        open_source(not_safe)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "cloud_mask.tif").write_bytes(b"")
    with pytest.raises(RasterError, match="folder without band files"):
        open_source(empty)
