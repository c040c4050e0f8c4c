"""The engine's I/O paths: prefetched strip reads, per-tile output conversion, the light scene
sample, the polyphase resampler, GDAL-style cubic resampling and the SceneWindows protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuse import read, real_pair, write

from pansharpen_cli import resample as R
from pansharpen_cli.methods import Method, SceneInfo, TileInput
from pansharpen_cli.pipeline import FuseRequest, fuse, open_scene, plan_fuse
from pansharpen_cli.tiling import Window

# -- prefetch and per-tile conversion ---------------------------------------------------------------


@pytest.mark.parametrize("budget", [None, 0])
def test_networks_get_interpolated_tiles_from_the_prefetch_thread(tmp_path: Path, monkeypatch,
                                                                  budget: int | None) -> None:
    """For networks the prefetch thread also interpolates the MS (TileInputs, not raw reads); the
    file is the same as without prefetch, and no tile is interpolated twice. Over the memory budget
    (here 0 bytes) it prefetches raw reads, with the same result."""
    import torch
    from pansharpen_cli.models import build

    from pansharpen_cli import pipeline, zoo
    from pansharpen_cli.methods.network import NetworkMethod

    monkeypatch.setenv("PANSHARPEN_HOME", str(tmp_path / "home"))
    if budget is not None:
        monkeypatch.setattr(pipeline, "PREFETCH_INPUTS_BUDGET", budget)
    torch.manual_seed(0)
    ck = tmp_path / "QB" / "fusionnet.pth"
    ck.parent.mkdir()
    torch.save(build("fusionnet", 4).state_dict(), ck)
    entry = zoo.import_checkpoint(ck)
    pan_p, ms_p = real_pair(tmp_path, size=192, ratio=4)
    calls = {"n": 0}
    real = pipeline._Engine._compute

    def counting(self, raw):
        calls["n"] += 1
        return real(self, raw)

    monkeypatch.setattr(pipeline._Engine, "_compute", counting)
    outs, counts = [], []
    for prefetch in (True, False):
        calls["n"] = 0
        out = tmp_path / f"n{prefetch}.tif"
        s = fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, method=NetworkMethod(entry.name, device="cpu"), tile=64,
                             prefetch=prefetch, background_write=prefetch))
        outs.append(read(out))
        counts.append((calls["n"], s["tiles"]["count"]))
    assert np.array_equal(outs[0], outs[1])
    # the prefetch thread's interpolation replaces the loop's, it does not add to it
    assert counts[0] == counts[1] and counts[0][0] <= counts[0][1] + 1
    plan = pipeline.plan_fuse(FuseRequest(pan=pan_p, ms=ms_p, method=NetworkMethod(entry.name, device="cpu"), tile=64))
    assert 0 < plan.prefetched_inputs_bytes() <= pipeline.PREFETCH_INPUTS_BUDGET or budget == 0


@pytest.mark.parametrize("method,overlap", [("wbrovey", 0), ("brovey", 0), ("mtf-glp-hpm", None)])
def test_prefetched_reads_give_the_same_file(tmp_path: Path, method: str, overlap: int | None) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=192, ratio=4)
    outs = []
    for prefetch in (True, False):
        out = tmp_path / f"o{prefetch}.tif"
        s = fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, method=method, tile=64, overlap=overlap,
                             prefetch=prefetch, background_write=prefetch))
        assert set(s["timings"]) >= {"read_s", "read_wait_s", "compute_s", "write_wait_s", "write_s", "setup_s"}
        outs.append(read(out))
    assert np.array_equal(outs[0], outs[1])


def test_per_tile_conversion_equals_whole_image(tmp_path: Path) -> None:
    # overlap 0: tiles are clamped/rounded/converted on the pool; must equal one big tile
    pan_p, ms_p = real_pair(tmp_path, size=160, ratio=4)
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=tmp_path / "a.tif", method="wbrovey", tile=48, bit_depth=11))
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=tmp_path / "b.tif", method="wbrovey", tile=512, bit_depth=11))
    a, b = read(tmp_path / "a.tif"), read(tmp_path / "b.tif")
    assert a.dtype == np.uint16 and a.max() <= 2047
    assert np.array_equal(a, b)


def _reference_conversion(data: np.ndarray, valid: np.ndarray, dtype: str, bits: int, nod) -> np.ndarray:
    """Clamp, round, nodata written out plainly (float64, pixel semantics of the spec)."""
    dt = np.dtype(dtype)
    out = data.astype(np.float64)
    if dt.kind in "ui":
        lo, hi = float(np.iinfo(dt).min), float(np.iinfo(dt).max)
        if dt.kind == "u":
            hi = min(hi, 2.0 ** bits - 1)
        out = np.rint(np.clip(np.nan_to_num(out, nan=lo), lo, hi))
        if nod is not None:
            out[out == nod] = nod + (1 if nod < hi else -1)
    out = out.astype(dt)
    if nod is not None:
        out[:, ~valid] = nod
    return out


@pytest.mark.parametrize("dtype,bits,nod", [("uint16", 11, None), ("uint16", 11, 0), ("uint16", 11, 2047),
                                            ("uint16", 11, 100), ("uint16", 16, 65535), ("int16", 16, -32768),
                                            ("uint8", 8, 7), ("float32", 32, float("nan")), ("float32", 32, -9999.0)])
@pytest.mark.parametrize("all_valid", [True, False])
def test_output_sink_clamps_rounds_and_keeps_nodata_apart(dtype: str, bits: int, nod, all_valid: bool) -> None:
    from types import SimpleNamespace

    from pansharpen_cli.pipeline import _OutputSink, _to_output

    rng = np.random.default_rng(3)
    data = rng.uniform(-50, 3000, size=(3, 20, 30)).astype(np.float32)
    data[0, 0, :8] = [0, 0.4, 99.5, 100.2, 2046.6, 2047, 2100, np.nan]
    valid = np.ones((20, 30), bool) if all_valid else rng.random((20, 30)) > 0.2
    plan = SimpleNamespace(out_dtype=dtype, bands=3, out_nodata=nod, bit_depth=bits)
    want = _reference_conversion(data, valid, dtype, bits, nod)
    sink = _OutputSink(plan)
    got = sink.alloc(20, 30)
    sink(data.copy(), None if all_valid else valid, got)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, want)  # NaN == NaN here
    block = np.concatenate([data, valid[None].astype(np.float32)])
    np.testing.assert_array_equal(_to_output(block, plan), want)
    if nod is not None and not np.isnan(nod):
        assert not np.any(got[:, valid] == nod)


@pytest.mark.parametrize("method", ["wbrovey", "gihs", "gs", "exp", "identity-pan", "brovey"])
def test_per_pixel_methods_in_bands_of_rows_equal_whole_tiles(tmp_path: Path, monkeypatch, method: str) -> None:
    """Per-pixel methods run in cache-sized bands of rows (here 8 rows); the file equals whole-tile
    fusion, with nodata in the PAN and in one MS pixel (the validity of each band)."""
    from pansharpen_cli import pipeline

    pan_p, ms_p = real_pair(tmp_path, size=160, ratio=4)
    pan, ms = read(pan_p)[0], read(ms_p)
    pan[30:37, 50:90] = 0
    ms[1, 20, 20] = 0
    write(pan_p, pan, rasterio.open(pan_p).transform, nodata=0)
    write(ms_p, ms, rasterio.open(ms_p).transform, nodata=0)
    outs = []
    for chunk in (1, 1 << 40):
        monkeypatch.setattr(pipeline._Engine, "PER_PIXEL_CHUNK_BYTES", chunk)
        out = tmp_path / f"o{chunk}.tif"
        fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, method=method, tile=64, bit_depth=12))
        outs.append(read(out))
    assert np.array_equal(outs[0], outs[1])
    assert np.all(outs[0][:, 30:37, 50:90] == 0) and np.all(outs[0][:, 80:84, 80:84] == 0)


def test_light_scene_sample_does_not_miss_sparse_valid_data(tmp_path: Path) -> None:
    # > 1024 px: the light sample looks at a few windows only; here they are all nodata, the data
    # sits elsewhere -> the full sample must decide, and the run must succeed
    n, r = 1100, 4
    pan = np.zeros((n, n), np.uint16)
    ms = np.zeros((4, n // r, n // r), np.uint16)
    pan[160:240, 160:240] = 900
    ms[:, 40:60, 40:60] = 500
    t = Affine(1.0, 0, 0, 0, -1.0, 0)
    pan_p = write(tmp_path / "pan.tif", pan, t, nodata=0)
    ms_p = write(tmp_path / "ms.tif", ms, Affine(4.0, 0, 0, 0, -4.0, 0), nodata=0)
    out = tmp_path / "o.tif"
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, method="wbrovey"))
    o = read(out)
    assert (o[:, 170:230, 170:230] > 0).all()
    assert (o[:, 600:, 600:] == 0).all()


# -- resampling ---------------------------------------------------------------------------------------


def _keys(t: np.ndarray) -> np.ndarray:
    x = np.abs(t)
    a = -0.5
    return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                    np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))


def test_cubic_resampling_is_keys_at_the_true_position() -> None:
    # GDAL's cubic: output pixel j of a corner-aligned ratio-4 grid sits at LR (j + 0.5) / 4 - 0.5
    rng = np.random.default_rng(3)
    lr = rng.uniform(0, 2000, size=(1, 40, 40)).astype(np.float32)
    amap = R.AxisMap(0.25, 0.5 / 4 - 0.5)
    out = R.resample_block(lr, amap, amap, 0, 0, (40, 120), (40, 120), (40, 40), kind="cubic")
    u = amap.positions(40, 120)
    base = np.floor(u).astype(int)
    w = np.stack([_keys(u - (base + t)) for t in (-1, 0, 1, 2)], axis=1)  # (n, 4)
    idx = base[:, None] + np.arange(-1, 3)[None]
    rows = np.einsum("it,itc->ic", w, lr[0][idx].astype(np.float64))
    ref = np.einsum("jt,ijt->ij", w, rows[:, idx])
    assert np.abs(out[0] - ref).max() < 1e-2


@pytest.mark.parametrize("kind,scale,offset", [("23tap", 0.25, -0.375), ("23tap", 0.25, -0.5), ("23tap", 0.5, -0.25),
                                                ("23tap", 0.25, 0.1), ("cubic", 0.25, -0.375), ("cubic", 1 / 3, 0.2)])
def test_polyphase_equals_the_reference_chain(kind: str, scale: float, offset: float) -> None:
    rng = np.random.default_rng(4)
    lr = rng.uniform(0, 2000, size=(2, 60, 60)).astype(np.float32)
    amap = R.AxisMap(scale, offset)
    assert R._phase_kernels(amap, 60, kind) is not None
    k0, k1 = R.lr_range(amap, 50, 130, 60)
    block = lr[:, :, np.clip(np.arange(k0, k1), 0, 59)]
    fast = R.resample_axis(block, 2, amap, k0, 50, 130, 60, kind)
    ref = R._reference_axis(block.astype(np.float64), 2, amap, k0, 50, 130, 60, kind)
    assert np.abs(fast - ref).max() < 2e-3  # float32 rounding on values up to 2000


def test_drifting_scale_uses_the_reference_chain() -> None:
    assert R._phase_kernels(R.AxisMap(0.25 + 1e-9, 0.0), 100) is None


@settings(max_examples=20, deadline=None)
@given(a=st.integers(0, 50), b=st.integers(1, 50), kind=st.sampled_from(["23tap", "cubic"]))
def test_cubic_and_23tap_values_do_not_depend_on_the_block(a: int, b: int, kind: str) -> None:
    rng = np.random.default_rng(5)
    lr = rng.uniform(0, 1000, size=(1, 60, 60)).astype(np.float32)
    amap = R.AxisMap(0.25, -0.375)

    def run(j0: int, j1: int) -> np.ndarray:
        k0, k1 = R.lr_range(amap, j0, j1, 60)
        cols = np.clip(np.arange(k0, k1), 0, 59)
        return R.resample_axis(lr[:, :, cols], 2, amap, k0, j0, j1, 60, kind)

    whole = run(0, 120)
    part = run(a, a + b)
    assert np.array_equal(part, whole[:, :, a:a + b])


def test_wbrovey_defaults_to_cubic_and_23tap_is_selectable(tmp_path: Path) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=96, ratio=4)
    plan = plan_fuse(FuseRequest(pan=pan_p, ms=ms_p, method="wbrovey"))
    assert plan.method.resampling == "cubic" and plan.to_dict()["resampling"] == "cubic"
    plan = plan_fuse(FuseRequest(pan=pan_p, ms=ms_p, method="wbrovey", resampling="23tap"))
    assert plan.method.resampling == "23tap"
    assert plan_fuse(FuseRequest(pan=pan_p, ms=ms_p, method="exp")).method.resampling == "23tap"
    out = tmp_path / "o.tif"
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=out, method="exp", resampling="cubic"))
    with rasterio.open(out) as ds:
        assert '"resampling": "cubic"' in ds.tags()["PANSHARPEN_OPTIONS"]


def test_unknown_resampling_is_a_usage_error(tmp_path: Path) -> None:
    from pansharpen_cli.errors import UsageError

    pan_p, ms_p = real_pair(tmp_path, size=96, ratio=4)
    with pytest.raises(UsageError, match="resampling"):
        plan_fuse(FuseRequest(pan=pan_p, ms=ms_p, resampling="lanczos"))


# -- SceneWindows ---------------------------------------------------------------------------------------


class _Spy(Method):
    name = "spy"
    description = "records what fit() sees"

    def fit(self, scene: SceneInfo) -> None:
        self.scene = scene
        w = scene.windows
        assert w is not None
        self.phase, self.ratio, self.shape = w.phase, w.ratio, (w.height, w.width)
        self.aligned = w.lr_aligned(Window(8, 12, 16, 32))
        self.misaligned = w.lr_aligned(Window(9, 12, 16, 32))
        self.lr, self.lr_valid = w.ms_lr(Window(8, 12, 16, 32))
        self.tile = w.inputs(Window(8, 12, 16, 32))
        self.pan = w.pan(Window(8, 12, 16, 32))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        return tile.ms_up


def test_methods_read_scene_windows_while_fitted(tmp_path: Path) -> None:
    pan_p, ms_p = real_pair(tmp_path, size=96, ratio=4)
    spy = _Spy()
    plan = plan_fuse(FuseRequest(pan=pan_p, ms=ms_p, method=spy))
    with open_scene(plan) as (scene, _engine):
        assert scene is spy.scene
    assert spy.phase == "corner" and spy.ratio == 4 and spy.shape == (96, 96)
    assert spy.aligned and not spy.misaligned
    ms = read(ms_p).astype(np.float32)
    assert np.array_equal(spy.lr, ms[:, 2:6, 3:11]) and spy.lr_valid.all()
    assert spy.tile.pan.shape == (16, 32) and spy.tile.ms_up.shape == (4, 16, 32)
    # the PAN alone (screening reads) is exactly what the tile gets
    assert np.array_equal(spy.pan[0], spy.tile.pan) and spy.pan[1].all()
    assert np.array_equal(spy.pan[0], read(pan_p)[0, 8:24, 12:44].astype(np.float32))
    with pytest.raises(ValueError, match="MS pixels"):
        spy.scene.windows.ms_lr(Window(9, 12, 16, 32))


def test_toolbox_phase_is_recognised(tmp_path: Path) -> None:
    from pansharpen_cli.pipeline import fuse_arrays

    spy = _Spy()
    rng = np.random.default_rng(0)
    fuse_arrays(rng.uniform(1, 100, (64, 64)).astype(np.float32), rng.uniform(1, 100, (4, 16, 16)).astype(np.float32),
                spy, ratio=4, phase="toolbox", workdir=tmp_path)
    assert spy.phase == "toolbox"


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("sizes", [[512, 512, 76], [512, 300, 212, 76], [100, 900, 100], [1100]])
def test_writer_hands_whole_block_rows_over_without_copy(tmp_path: Path, background: bool, sizes: list[int]) -> None:
    """Owned blocks that are one whole block row go to the writer thread as they are; others are
    buffered. Either way the file holds exactly what was written, in place."""
    from pansharpen_cli.raster import OutputWriter

    h, w = 1100, 300
    data = np.random.default_rng(4).integers(0, 4096, size=(2, h, w), dtype=np.uint16)
    out = tmp_path / "w.tif"
    with OutputWriter(out, width=w, height=h, count=2, dtype="uint16", crs="EPSG:32633",
                      transform=Affine(2.0, 0, 0, 0, -2.0, 0), nodata=None, background=background) as wr:
        row = 0
        for n in sizes:
            wr.write_rows(row, data[:, row:row + n].copy(), owned=True)
            row += n
    assert np.array_equal(read(out), data)


def test_scene_sample_skipped_when_no_pixel_can_be_invalid(tmp_path: Path, monkeypatch) -> None:
    """Integer inputs without nodata, no sensor bit depth to check: nothing is sampled, and the
    file is the one the sampled path writes."""
    from pansharpen_cli import pipeline
    from pansharpen_cli.raster import SceneReader

    pan_p, ms_p = real_pair(tmp_path, size=1040, ratio=4)  # > 1024: the light sample takes crops
    with monkeypatch.context() as m:
        m.setattr(pipeline, "_may_be_invalid", lambda plan: True)
        fuse(FuseRequest(pan=pan_p, ms=ms_p, out=tmp_path / "sampled.tif", method="wbrovey", tile=256))

    def refuse(*_a, **_k):
        raise AssertionError("the scene was sampled")

    monkeypatch.setattr(SceneReader, "sample_ms_lr", refuse)
    monkeypatch.setattr(SceneReader, "sample", refuse)
    fuse(FuseRequest(pan=pan_p, ms=ms_p, out=tmp_path / "direct.tif", method="wbrovey", tile=256))
    assert np.array_equal(read(tmp_path / "direct.tif"), read(tmp_path / "sampled.tif"))
    # a nodata value (here from --nodata) brings the sample back
    with pytest.raises(AssertionError, match="sampled"):
        fuse(FuseRequest(pan=pan_p, ms=ms_p, out=tmp_path / "nod.tif", method="wbrovey", tile=256, nodata=0))


def test_sensor_bit_depth_is_still_checked_against_the_data(tmp_path: Path) -> None:
    # QuickBird is 11-bit; MS values above 2047 widen the output range to 16 bits, with a notice
    pan_p, ms_p = real_pair(tmp_path, size=128, ratio=4)
    assert read(ms_p).max() > 2047
    notes: list[str] = []
    s = fuse(FuseRequest(pan=pan_p, ms=ms_p, out=tmp_path / "o.tif", method="wbrovey", sensor="QB"),
             notice=notes.append)
    assert s["bit_depth"] == 16
    assert any("above the 11-bit range" in n for n in notes)


# -- vertical stripes: memory independent of the scene width ---------------------------------------


@pytest.mark.parametrize("method", ["wbrovey", "identity-pan", "mtf-glp-hpm", "awlp"])
@pytest.mark.parametrize("fmt", ["GTiff", "COG"])
def test_stripes_give_the_same_file_as_whole_rows(tmp_path: Path, monkeypatch, method: str, fmt: str) -> None:
    """Tiles that do not overlap are done in vertical stripes as wide as STRIPE_MAX_WIDTH (here 2
    tiles of 64, on 64-px output blocks): the file equals whole-row processing, with nodata in the
    PAN and the MS, a snapped last row and column, and context for the filter-based methods."""
    from pansharpen_cli import pipeline

    pan_p, ms_p = real_pair(tmp_path, size=288, ratio=4)  # 288 = 4 x 64 + 32: last row/column snapped
    pan, ms = read(pan_p)[0], read(ms_p)
    pan[100:140, 60:200] = 0
    ms[2, 40, 10:40] = 0
    write(pan_p, pan, rasterio.open(pan_p).transform, nodata=0)
    write(ms_p, ms, rasterio.open(ms_p).transform, nodata=0)
    co = {"BLOCKXSIZE": "64", "BLOCKYSIZE": "64"} if fmt == "GTiff" else {}
    outs, groups = [], []
    for width in (128, 1 << 30):
        monkeypatch.setattr(pipeline, "STRIPE_MAX_WIDTH", width)
        out = tmp_path / f"o{width}.tif"
        req = FuseRequest(pan=pan_p, ms=ms_p, out=out, method=method, tile=64, bit_depth=12, fmt=fmt,
                          creation_options=co)
        groups.append(plan_fuse(req).column_groups())
        fuse(req)
        outs.append(read(out))
    if fmt == "GTiff":
        # the snapped last tile stays with its neighbour
        assert groups[0] == [(0, 2), (2, 3), (3, 5)] and groups[1] == [(0, 5)]
    else:
        assert groups[0] == groups[1] == [(0, 5)]  # COG's intermediate has 512-px blocks: no stripe boundary
    assert np.array_equal(outs[0], outs[1])
    assert np.all(outs[0][:, 100:140, 60:200] == 0)


def test_stripes_bound_the_memory_estimate(tmp_path: Path, monkeypatch) -> None:
    from pansharpen_cli import pipeline

    pan_p, ms_p = real_pair(tmp_path, size=288, ratio=4)
    req = FuseRequest(pan=pan_p, ms=ms_p, method="wbrovey", tile=64, creation_options={"BLOCKXSIZE": "64"})
    plan = plan_fuse(req)  # what it computes follows STRIPE_MAX_WIDTH at the time
    whole = (plan.stripe_width, plan.memory_estimate())
    monkeypatch.setattr(pipeline, "STRIPE_MAX_WIDTH", 128)
    assert whole[0] == 288 and plan.stripe_width == 128
    assert plan.memory_estimate() < whole[1]
    # overlapping tiles are cross-faded across the row: never split
    req.overlap = 16
    assert plan_fuse(req).column_groups() == [(0, len(plan_fuse(req).tiles.col_starts))]


@pytest.mark.parametrize("background", [True, False])
def test_writer_takes_stripes_interleaved(tmp_path: Path, background: bool) -> None:
    """Column ranges on block boundaries, written in any interleaving (rows of each in order, not
    always whole block rows): the file holds exactly what was written; misuse is refused."""
    from pansharpen_cli.raster import OutputWriter

    h, w = 300, 200
    data = np.random.default_rng(5).integers(0, 4096, size=(2, h, w), dtype=np.uint16)
    out = tmp_path / "s.tif"
    kw = dict(width=w, height=h, count=2, dtype="uint16", crs="EPSG:32633", transform=Affine(2.0, 0, 0, 0, -2.0, 0),
              nodata=None, background=background, creation_options={"BLOCKXSIZE": "64", "BLOCKYSIZE": "64"})
    stripes = [(0, 128), (128, 200)]
    plan = [(0, 0, 64), (1, 0, 64), (0, 64, 100), (0, 100, 128), (1, 64, 300), (0, 128, 300)]
    with OutputWriter(out, **kw) as wr:
        for s, r0, r1 in plan:
            c0, c1 = stripes[s]
            wr.write_rows(r0, data[:, r0:r1, c0:c1].copy(), owned=True, col0=c0)
        with pytest.raises(ValueError, match="block boundary"):
            wr.write_rows(0, data[:, :10, 10:20].copy(), col0=10)
        with pytest.raises(RuntimeError, match="in order"):
            wr.write_rows(0, data[:, :64, 0:128].copy(), col0=0)
    assert np.array_equal(read(out), data)
    with pytest.raises(RuntimeError, match="rows were written"), OutputWriter(tmp_path / "short.tif", **kw) as wr:
        wr.write_rows(0, data[:, :, :128].copy(), col0=0)
        wr.write_rows(0, data[:, :100, 128:].copy(), col0=128)
    assert not (tmp_path / "short.tif").exists()
