"""Per-scene test-time adaptation (``pansharpen_cli.adapt``).

Default tests use a small random-weight FusionNet on a synthetic scene whose low-resolution MS is
made by Wald-style degradation (sensor MTF + decimation) of a known high-resolution MS. Tests
marked ``shared`` (and ``slow``) use the DLPan checkpoints and the real WorldView-2 scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pansharpen_cli.models import build
from scipy.ndimage import gaussian_filter

from pansharpen_cli import adapt as A
from pansharpen_cli.filters import decimate, interp23tap, mtf_filter, mtf_kernels, wald_degrade
from pansharpen_cli.metrics import ergas, q2n, reproject
from pansharpen_cli.sensors import get_sensor

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WV2_MAT = SHARED / "data" / "wv2-grip" / "imgWV2.mat"
DLPAN = SHARED / "weights" / "dlpan"
R = 4
GNYQ = get_sensor("QB").gnyq  # 4 bands


pytestmark = pytest.mark.usefixtures("torch_threads")


def _toy_scene(seed: int = 0, size: int = 160, bands: int = 4) -> dict[str, np.ndarray]:
    """Synthetic HR MS (smooth fields + edges), PAN = band mean, LR MS by MTF + decimation."""
    rng = np.random.default_rng(seed)
    common = gaussian_filter(rng.standard_normal((size, size)), 3.0)
    common += (gaussian_filter(rng.standard_normal((size, size)), 1.0) > 0.3) * 0.8  # sharp structures
    common = (common - common.min()) / np.ptp(common)
    hr = np.stack([0.1 + 0.05 * b + (0.25 + 0.05 * b) * common
                   + 0.03 * gaussian_filter(rng.standard_normal((size, size)), 4.0) for b in range(bands)])
    pan = hr.mean(axis=0) + 0.002 * rng.standard_normal((size, size))
    ms_lr = decimate(mtf_filter(hr, mtf_kernels(GNYQ, R)), R)
    lms = interp23tap(ms_lr, R)
    f32 = np.float32
    return {"pan": pan.astype(f32), "ms_lr": np.ascontiguousarray(ms_lr, dtype=f32), "lms": lms.astype(f32),
            "hr": hr.astype(f32)}


def _toy_net(seed: int = 0, bands: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build("fusionnet", bands, channels=8, n_blocks=1)
    with torch.no_grad():  # a visibly imperfect detail injection, so there is something to adapt
        net.conv3.weight.mul_(3.0)
    return net.eval()


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]


def _patches(scene: dict[str, np.ndarray], **kw) -> list[dict]:
    kw.setdefault("patch", 32)
    kw.setdefault("fraction", 0.5)
    return A.sample_patches_from_arrays(scene["pan"], scene["ms_lr"], scene["lms"], R, sensor="QB", **kw)


@pytest.fixture(scope="module")
def scene() -> dict[str, np.ndarray]:
    return _toy_scene()


# -- the tailor and the adapted model ------------------------------------------------------------


def test_untrained_tailor_leaves_the_output_unchanged_exactly(scene):
    net = _toy_net()
    adapted = A.AdaptedModel(net, A.Tailor(net.feat_channels, 16, seed=3))
    pan, lms = _t(scene["pan"][None]), _t(scene["lms"])
    with torch.no_grad():
        assert torch.equal(adapted(pan, lms, None), net(pan, lms, None))
        feat = net.features(pan, lms, None)
        assert torch.equal(adapted.head(feat, pan, lms, None), net.head(feat, pan, lms, None))
    assert adapted.n_bands == net.n_bands and adapted.input_convention == net.input_convention


@pytest.mark.parametrize("arch", ["pnn", "pannet", "dicnn", "msdcnn", "drpnn", "bwnet_fusionnet", "premix"])
def test_the_tailor_point_is_exact_for_every_architecture(arch):
    from pansharpen_cli.models import ARCHITECTURES

    torch.manual_seed(0)
    net = build(arch, 4).eval()
    conv = ARCHITECTURES[arch].input_convention
    pan, lms, ms = torch.rand(1, 1, 32, 32), torch.rand(1, 4, 32, 32), torch.rand(1, 4, 8, 8)
    lms_in, ms_in = (None if conv == "lr" else lms), (None if conv == "lms" else ms)
    adapted = A.AdaptedModel(net, A.Tailor(net.feat_channels))
    with torch.no_grad():
        assert torch.equal(adapted(pan, lms_in, ms_in), net(pan, lms_in, ms_in))


def _random_tailor(channels: int, kind: str = "linear", seed: int = 0) -> A.Tailor:
    t = A.Tailor(channels, 8, seed=seed, kind=kind)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        t.project.weight.copy_(torch.randn(t.project.weight.shape, generator=g) * 0.2)
        t.project.bias.copy_(torch.randn(t.project.bias.shape, generator=g) * 0.2)
        t.expand.bias.copy_(torch.randn(t.expand.bias.shape, generator=g) * 0.2)
    return t


@pytest.mark.parametrize("arch", ["fusionnet", "pannet", "dicnn", "drpnn", "pnn", "bwnet_fusionnet"])
def test_linear_tailor_is_folded_into_the_head_exactly(arch):
    """Inference folds feat + tailor(feat) = M feat + c into the head convolution: the same output
    as the unfolded graph everywhere, the zero-padded rim included, at the base network's cost."""
    from pansharpen_cli.models import ARCHITECTURES

    torch.manual_seed(0)
    net = build(arch, 4).eval()
    conv = ARCHITECTURES[arch].input_convention
    pan, lms, ms = torch.rand(2, 1, 40, 36), torch.rand(2, 4, 40, 36), torch.rand(2, 4, 10, 9)
    lms_in, ms_in = (None if conv == "lr" else lms), (None if conv == "lms" else ms)
    adapted = A.AdaptedModel(net, _random_tailor(net.feat_channels)).eval()
    with torch.no_grad():
        feat = net.features(pan, lms_in, ms_in)
        reference = net.head(feat + adapted.tailor(feat), pan, lms_in, ms_in)
        assert adapted.folded_base() is not None
        folded = adapted(pan, lms_in, ms_in)
    assert not torch.equal(reference, net(pan, lms_in, ms_in))  # the tailor does something
    scale = float(reference.abs().max())
    assert float((folded - reference).abs().max()) < 1e-5 * max(scale, 1.0)
    # the fold follows the tailor's weights
    with torch.no_grad():
        adapted.tailor.project.bias.add_(0.5)
        moved = adapted(pan, lms_in, ms_in)
        ref2 = net.head(feat + adapted.tailor(feat), pan, lms_in, ms_in)
    assert float((moved - ref2).abs().max()) < 1e-5 * max(float(ref2.abs().max()), 1.0)


@pytest.mark.parametrize("arch,kind", [("msdcnn", "linear"), ("premix", "linear"), ("bwnet_lagconv", "linear"),
                                       ("fusionnet", "mlp")])
def test_tailors_that_cannot_be_folded_run_unfolded(arch, kind):
    from pansharpen_cli.models import ARCHITECTURES

    torch.manual_seed(0)
    net = build(arch, 4).eval()
    conv = ARCHITECTURES[arch].input_convention
    pan, lms, ms = torch.rand(1, 1, 32, 32), torch.rand(1, 4, 32, 32), torch.rand(1, 4, 8, 8)
    lms_in, ms_in = (None if conv == "lr" else lms), (None if conv == "lms" else ms)
    adapted = A.AdaptedModel(net, _random_tailor(net.feat_channels, kind)).eval()
    with torch.no_grad():
        assert adapted.folded_base() is None
        feat = net.features(pan, lms_in, ms_in)
        reference = net.head(feat + adapted.tailor(feat), pan, lms_in, ms_in)
        assert torch.allclose(adapted(pan, lms_in, ms_in), reference, rtol=1e-6, atol=1e-6)
    assert adapted.tailor.receptive_field == (1 if kind == "mlp" else 0)


def test_adapter_files_keep_the_tailor_kind(tmp_path: Path):
    from safetensors.torch import save_file

    net = _toy_net()
    for kind in A.TAILOR_KINDS:
        a = A.AdaptedModel(net, _random_tailor(net.feat_channels, kind),
                           meta={"base_state_sha256": A.state_sha256(net)})
        back = A.load_adapter(net, A.save_adapter(a, tmp_path / f"{kind}.safetensors"))
        assert back.tailor.kind == kind and back.tailor.hidden == 8
        assert all(torch.equal(x, y) for x, y in zip(back.tailor.state_dict().values(),
                                                     a.tailor.state_dict().values(), strict=True))
    # files written before the linear tailor existed have no tailor_kind: they are mlp tailors
    a = A.AdaptedModel(net, _random_tailor(net.feat_channels, "mlp"))
    md = {"format": A.ADAPTER_FORMAT, "mode": "tailor", "hidden": "8", "base_state_sha256": ""}
    save_file(a.adapter_state_dict(), str(tmp_path / "old.safetensors"), metadata=md)
    assert A.load_adapter(net, tmp_path / "old.safetensors").tailor.kind == "mlp"


def test_tailor_is_small():
    t = A.Tailor(32, 16)
    assert sum(p.numel() for p in t.parameters()) < 2000
    assert torch.count_nonzero(t.project.weight) == 0 and torch.count_nonzero(t.project.bias) == 0


# -- physics -------------------------------------------------------------------------------------


def test_mtf_degrade_matches_the_toolbox_reprojection_inside(scene):
    deg = A.MTFDegrade(GNYQ, R)
    hr = scene["hr"]
    got = deg(_t(hr))[0].numpy()
    want = reproject(hr, GNYQ, R)
    b = deg.radius // R + 1
    np.testing.assert_allclose(got[:, b:-b, b:-b], want[:, b:-b, b:-b], atol=2e-5)
    assert deg.radius < 20  # trimmed kernel


@pytest.mark.parametrize("phase", ["toolbox", "corner"])
def test_spectral_loss_of_the_truth_vanishes_only_at_the_right_phase(scene, phase):
    hr = scene["hr"].astype(np.float64)
    ms_lr = A.reproject_np(hr, GNYQ, R, phase)
    other = "corner" if phase == "toolbox" else "toolbox"
    x = _t(hr)
    for ph, small in ((phase, True), (other, False)):
        deg = A.MTFDegrade(GNYQ, R, phase=ph)
        b = deg.radius // R + 1
        err = (deg(x)[0].numpy() - ms_lr)[:, b:-b, b:-b]
        rel = float(np.abs(err).mean() / np.abs(ms_lr).mean())
        assert (rel < 1e-5) if small else (rel > 1e-3), (ph, rel)


def test_local_correlation_is_one_for_affine_copies():
    x = torch.rand(1, 1, 24, 24)
    y = 3.0 * x + 0.5
    rho = A.local_correlation(torch.cat([y, -y], 1), x, 4)
    assert rho.shape == (1, 2, 24, 24)
    assert torch.allclose(rho[0, 0], torch.ones(24, 24), atol=1e-3)
    assert torch.allclose(rho[0, 1], -torch.ones(24, 24), atol=1e-3)


def test_criterion_penalises_blur(scene):
    """The interpolated MS (blur) scores worse than the true HR image on the combined criterion."""
    item = _patches(scene, patch=64, fraction=1.0, max_patches=1)[0]
    y, x = item["origin"]
    w = item["pan"].shape[0]
    truth = scene["hr"][:, y:y + w, x:x + w]
    good = A.patch_criterion(truth, item, GNYQ, R)
    blur = A.patch_criterion(item["lms"], item, GNYQ, R)
    assert good["J"] < blur["J"]
    assert good["R_Q2n"] > blur["R_Q2n"] and good["D_rho"] < blur["D_rho"]


# -- patch selection -----------------------------------------------------------------------------


def test_select_patches_is_deterministic_and_skips_invalid():
    rng = np.random.default_rng(1)
    desc = np.concatenate([rng.normal(0, 1, (40, 5)), rng.normal(6, 0.2, (4, 5))])  # a rare cluster
    valid = np.ones(len(desc), dtype=bool)
    valid[[0, 5, 41]] = False
    a = A.select_patches(desc, 8, seed=7, valid=valid)
    assert a == A.select_patches(desc, 8, seed=7, valid=valid)
    assert len(a) == 8 == len(set(a)) and a == sorted(a)
    assert not {0, 5, 41} & set(a)
    assert any(i >= 40 for i in a)  # the rare content is represented
    assert A.select_patches(desc, 100, valid=valid) == np.flatnonzero(valid).tolist()
    assert A.select_patches([desc[i] for i in range(10)], 3, seed=0) == A.select_patches(desc[:10], 3, seed=0)


def test_sample_patches_skips_nodata_and_is_deterministic(scene):
    pan = scene["pan"].copy()
    pan[40:90, 50:100] = np.nan
    p1 = A.sample_patches_from_arrays(pan, scene["ms_lr"], scene["lms"], R, patch=32, margin=8, fraction=1.0,
                                      seed=3)
    p2 = A.sample_patches_from_arrays(pan, scene["ms_lr"], scene["lms"], R, patch=32, margin=8, fraction=1.0,
                                      seed=3)
    assert [p["origin"] for p in p1] == [p["origin"] for p in p2] and p1
    for p in p1:
        y, x = p["origin"]
        assert y % R == 0 and x % R == 0
        assert np.all(np.isfinite(p["pan"])) and p["pan"].shape == (48, 48)
        assert p["ms_lr"].shape == (4, 12, 12)
        np.testing.assert_array_equal(p["ms_lr"], scene["ms_lr"][:, y // R:y // R + 12, x // R:x // R + 12])
    # a validity mask works like NaN
    valid = np.ones_like(scene["pan"], dtype=bool)
    valid[:, :80] = False
    p3 = A.sample_patches_from_arrays(scene["pan"], scene["ms_lr"], scene["lms"], R, patch=32, fraction=1.0,
                                      valid=valid)
    assert p3 and all(p["origin"][1] >= 80 for p in p3)


def test_candidate_origins_and_patch_count():
    o = A.candidate_origins(300, 200, 64, 8)
    assert o[0] == (0, 0) and all(y % 4 == 0 and x % 4 == 0 for y, x in o)
    assert all(y + 80 <= 300 and x + 80 <= 200 for y, x in o) and len(o) == 4 * 2
    assert A.patch_count(361) == 18 and A.patch_count(16) == 8 and A.patch_count(5) == 5
    assert A.patch_count(10_000) == 64


# -- adaptation ----------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_only_the_tailor_changes(scene):
    net = _toy_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    res = A.adapt(net, _patches(scene), "QB", R, steps=25, lr=5e-3, seed=0)
    losses = [row["total"] for row in res.report["losses"]]
    assert len(losses) == 25 and losses[-1] < 0.8 * losses[0]
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in net.parameters()] == flags
    assert res.candidate is not None and res.candidate.base is net
    assert torch.count_nonzero(res.candidate.tailor.project.weight) > 0
    rep = res.report
    for k in ("R_Q2n", "D_lambda_K", "D_s", "D_rho", "J"):
        assert k in rep["criterion"]["before"] and k in rep["criterion"]["after"]
    assert rep["n_holdout"] >= 1 and rep["seconds"]["total"] > 0 and "reason" in rep


def test_adaptation_with_corner_aligned_grids(scene):
    """Corner phase: LR MS = MTF + sampling at r k + (r-1)/2, lms = bicubic (corner-aligned) upsampling."""
    hr = scene["hr"].astype(np.float64)
    ms_lr = A.reproject_np(hr, GNYQ, R, "corner").astype(np.float32)
    lms = torch.nn.functional.interpolate(_t(ms_lr), scale_factor=R, mode="bicubic", align_corners=False)[0].numpy()
    patches = A.sample_patches_from_arrays(scene["pan"], ms_lr, lms, R, patch=32, fraction=0.5, phase="corner")
    with pytest.raises(ValueError, match="corner"):
        A.sample_patches_from_arrays(scene["pan"], ms_lr, None, R, phase="corner")
    res = A.adapt(_toy_net(), patches, "QB", R, steps=20, lr=5e-3, phase="corner")
    losses = [row["spectral"] for row in res.report["losses"]]
    assert losses[-1] < 0.8 * losses[0] and res.report["phase"] == "corner"


def test_same_seed_same_output(scene):
    patches = _patches(scene)
    net = _toy_net()
    r1 = A.adapt(net, patches, "QB", R, steps=8, seed=5)
    r2 = A.adapt(net, patches, "QB", R, steps=8, seed=5)
    pan, lms = _t(scene["pan"][None]), _t(scene["lms"])
    with torch.no_grad():
        assert torch.equal(r1.candidate(pan, lms, None), r2.candidate(pan, lms, None))
    assert r1.report["losses"] == r2.report["losses"] and r1.used_adapted == r2.used_adapted


def test_do_no_harm_keeps_the_original_with_no_steps(scene):
    net = _toy_net()
    res = A.adapt(net, _patches(scene), "QB", R, steps=0)
    assert res.used_adapted is False and res.model is net
    assert "kept" in res.report["reason"]


def test_do_no_harm_keeps_the_original_when_it_is_already_optimal(scene):
    """The LR MS is replaced by the reprojection of the base model's own output: nothing to gain."""
    net = _toy_net()
    with torch.no_grad():
        out0 = net(_t(scene["pan"][None]), _t(scene["lms"]), None)[0].numpy()
    target = dict(scene, ms_lr=np.ascontiguousarray(reproject(out0, GNYQ, R), dtype=np.float32))
    res = A.adapt(net, _patches(target), "QB", R, steps=20, lr=5e-3)
    assert res.used_adapted is False and res.model is net


def test_swift_updates_only_the_selected_fraction(scene):
    net = _toy_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = A.adapt(net, _patches(scene), "QB", R, mode="swift", steps=5, lr=1e-3, swift_fraction=0.05)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the original is untouched
    cand = res.candidate
    n_all = sum(p.numel() for p in net.parameters())
    n_sel = sum(int(m.sum()) for m in cand.masks.values())
    assert n_sel == round(0.05 * n_all) == res.report["trainable_parameters"]
    changed = 0
    for name, p in cand.base.named_parameters():
        diff = p.detach() != before[name]
        changed += int(diff.sum())
        mask = cand.masks.get(name, torch.zeros_like(diff))
        assert not torch.any(diff & ~mask), name
    assert 0 < changed <= n_sel


def test_adapters_save_and_load(tmp_path, scene):
    net = _toy_net()
    patches = _patches(scene)
    res = A.adapt(net, patches, "QB", R, steps=6, holdout=0.0, base_name="fusionnet.toy", base_sha256="ab" * 32)
    assert res.used_adapted and "unchecked" in res.report["reason"]
    path = A.save_adapter(res.candidate, tmp_path / "tailor.safetensors")
    assert path.stat().st_size < 10_000
    back = A.load_adapter(net, path)
    pan, lms = _t(scene["pan"][None]), _t(scene["lms"])
    with torch.no_grad():
        assert torch.equal(back(pan, lms, None), res.candidate(pan, lms, None))
    assert back.meta["base_name"] == "fusionnet.toy" and back.meta["base_state_sha256"] == A.state_sha256(net)
    assert back.meta["sensor"] == "QB" and back.meta["steps"] == res.report["best_step"]
    with pytest.raises(ValueError, match="another base"):
        A.load_adapter(_toy_net(seed=1), path)
    # swift: a sparse delta
    sw = A.adapt(net, patches, "QB", R, mode="swift", steps=3, holdout=0.0, swift_fraction=0.02)
    p2 = A.save_adapter(sw.candidate, tmp_path / "swift.safetensors")
    back2 = A.load_adapter(net, p2)
    with torch.no_grad():
        assert torch.equal(back2(pan, lms, None), sw.candidate(pan, lms, None))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), _toy_net().state_dict().values(),
                                                  strict=True))


def test_adapt_rejects_bad_input(scene):
    net = _toy_net()
    with pytest.raises(ValueError, match="mode"):
        A.adapt(net, _patches(scene), "QB", R, mode="nope")  # type: ignore[arg-type]
    bad = [dict(p, pan=np.full_like(p["pan"], np.nan)) for p in _patches(scene)]
    res = A.adapt(net, bad, "QB", R, steps=3)
    assert res.model is net and not res.used_adapted and res.report["n_dropped"] == len(bad)


# -- the real WorldView-2 scene --------------------------------------------------------------------


def _wv2() -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    d = loadmat(WV2_MAT)
    return d["I_PAN"].astype(np.float64), d["I_MS"].astype(np.float64).transpose(2, 0, 1)


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.skipif(not (WV2_MAT.is_file() and (DLPAN / "WV3" / "fusionnet.pth").is_file()), reason="no ../shared")
def test_wv3_fusionnet_adapted_to_a_wv2_scene_at_reduced_resolution():
    """Wald protocol on a 640x640 PAN crop: the WV3 network gains on the WV2 scene after adaptation,
    and the WV2-native network is not made worse."""
    from pansharpen_cli.models.registry import load_model

    pan, ms = _wv2()
    pan, ms = pan[:640, :640], ms[:, :160, :160]
    s = get_sensor("WV2")
    pl, ml = wald_degrade(pan, ms, s.gnyq, s.pan_gnyq, R)
    lms = interp23tap(ml, R)
    k = 2047.0
    patches = A.sample_patches_from_arrays(pl / k, ml / k, lms / k, R, sensor="WV2", seed=0)
    cut = 21
    ref = ms[:, cut:-cut, cut:-cut]

    def score(m: torch.nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            out = m(_t(pl[None] / k), _t(lms / k), None)[0].numpy().astype(np.float64) * k
        f = out[:, cut:-cut, cut:-cut]
        return q2n(ref, f, 32, 32), ergas(ref, f, R)

    wv3, _, _ = load_model(DLPAN / "WV3" / "fusionnet.pth")
    res = A.adapt(wv3, patches, "WV2", R)
    q0, e0 = score(wv3)
    q1, e1 = score(res.model)
    assert res.used_adapted, res.report["reason"]
    assert q1 > q0 + 0.03 and e1 < e0 - 0.5
    wv2, _, _ = load_model(DLPAN / "WV2" / "fusionnet.pth")
    res2 = A.adapt(wv2, patches, "WV2", R)
    q2, e2 = score(wv2)
    q3, e3 = score(res2.model)
    assert q3 > q2 - 0.002 and e3 < e2 * 1.01


def test_window_sums_have_the_adjoint_backward():
    a = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: A._BoxSum.apply(x, 4), (a,))
    b = a.detach().clone().requires_grad_(True)
    (A._box(a, 3) ** 2).sum().backward()
    (A._box_sum(b, 3) ** 2 / 81).sum().backward()  # autograd through the slices
    assert torch.allclose(a.grad, b.grad)


def test_minibatches_cycle_through_the_training_patches(scene):
    net = _toy_net()
    patches = _patches(scene)
    full = A.adapt(net, patches, "QB", R, steps=6, seed=0, minibatch=None)
    mini = A.adapt(net, patches, "QB", R, steps=6, seed=0, minibatch=1)
    again = A.adapt(net, patches, "QB", R, steps=6, seed=0, minibatch=1)
    assert full.report["minibatch"] is None and mini.report["minibatch"] == 1
    n = full.report["n_train"]
    assert A.adapt(net, patches, "QB", R, steps=1, seed=0).report["minibatch"] == -(-n // A.DEFAULT_GROUPS["tailor"])
    # one patch per step: the step losses are those of single patches, not of the whole set
    lf = [s["total"] for s in full.report["losses"]]
    lm = [s["total"] for s in mini.report["losses"]]
    assert lf != lm
    assert lm == [s["total"] for s in again.report["losses"]]  # deterministic
