"""Deep networks: interface, detection, state-dict handling, published checkpoints, a real scene.

Tests marked ``shared`` need ``../shared`` (third-party checkpoints and a real WorldView-2 scene)
and are skipped when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pansharpen_cli.models import (
    ARCHITECTURES,
    INPUT_CONVENTIONS,
    PansharpenNet,
    build,
    clean_state_dict,
    detect_architecture,
    load_checkpoint_file,
    load_model,
    resolve_arch,
)
from pansharpen_cli.models import registry as reg
from pansharpen_cli.models.adwm import CACW, LAGConv2d
from pansharpen_cli.models.base import box_highpass

from pansharpen_cli.errors import ModelError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights"
needs_shared = pytest.mark.skipif(not WEIGHTS.is_dir(), reason="../shared is absent")

ARCHS = sorted(ARCHITECTURES)
LOCAL_ARCHS = [a for a in ARCHS if not ARCHITECTURES[a].global_context]


pytestmark = pytest.mark.usefixtures("torch_threads")


def _inputs(n_bands: int, size: int = 32, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pan = torch.rand(batch, 1, size, size, generator=g)
    ms = torch.rand(batch, n_bands, size // 4, size // 4, generator=g)
    lms = F.interpolate(ms, scale_factor=4, mode="bicubic", align_corners=False)
    return pan, lms, ms


def _random_model(arch: str, n_bands: int) -> PansharpenNet:
    torch.manual_seed(0)
    return build(arch, n_bands).eval()


# -- specs and the uniform interface ---------------------------------------------------------------


def test_arch_specs_are_complete():
    assert {
        "pnn",
        "pannet",
        "dicnn",
        "msdcnn",
        "drpnn",
        "fusionnet",
        "bwnet_fusionnet",
        "bwnet_lagconv",
        "bwnet_lgpnet",
        "premix",
    } <= set(ARCHITECTURES)
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name
        assert spec.input_convention in INPUT_CONVENTIONS
        assert spec.receptive_field > 0 and spec.size_multiple >= 1 and spec.tailor_point
        assert spec.default_scale == 2047.0
        if spec.input_convention in ("lr", "highpass"):
            assert spec.size_multiple == spec.ratio == 4


@pytest.mark.parametrize("n_bands", [4, 8])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_and_split_agree(arch: str, n_bands: int):
    model = _random_model(arch, n_bands)
    assert model.input_convention == ARCHITECTURES[arch].input_convention
    pan, lms, ms = _inputs(n_bands, batch=2)
    with torch.no_grad():
        out = model(pan, lms, ms)
        feat = model.features(pan, lms, ms)
        again = model.head(feat, pan, lms, ms)
    assert out.shape == (2, n_bands, 32, 32)
    assert feat.shape == (2, model.feat_channels, 32, 32)
    assert torch.isfinite(out).all()
    assert torch.equal(out, again)


@pytest.mark.parametrize("arch", ARCHS)
def test_unused_input_may_be_none(arch: str):
    model = _random_model(arch, 4)
    pan, lms, ms = _inputs(4)
    conv = model.input_convention
    with torch.no_grad():
        ref = model(pan, lms, ms)
        if conv == "lms":
            assert torch.equal(model(pan, lms, None), ref)
        elif conv == "lr":
            assert torch.equal(model(pan, None, ms), ref)
        else:
            with pytest.raises(ValueError):
                model(pan, lms, None)


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_shapes_are_rejected(arch: str):
    model = _random_model(arch, 4)
    pan, lms, ms = _inputs(4)
    with pytest.raises(ValueError):
        model(pan, lms[:, :3], ms[:, :3])  # wrong band count
    if model.input_convention in ("lms", "highpass"):
        with pytest.raises(ValueError):
            model(pan, lms[..., :28, :28], ms)  # lms not on the PAN grid
    if ARCHITECTURES[arch].size_multiple > 1:
        with pytest.raises(ValueError):
            model(pan[..., :30, :30], lms[..., :30, :30], ms[..., :7, :7])  # not a multiple of 4
    with pytest.raises(ValueError):
        model(pan[:, 0], lms, ms)  # pan not (N, 1, H, W)


@pytest.mark.parametrize("arch", LOCAL_ARCHS)
def test_receptive_field_is_honest(arch: str):
    """A window's output equals the full image's output wherever the window covers the receptive field."""
    spec = ARCHITECTURES[arch]
    rf = spec.receptive_field
    model = _random_model(arch, 4)
    pan, lms, ms = _inputs(4, size=112, seed=3)
    off, size = 12, 100 - 12  # multiples of 4
    win = (slice(None), slice(None), slice(off, off + size), slice(off, off + size))
    lr = (slice(None), slice(None), slice(off // 4, (off + size) // 4), slice(off // 4, (off + size) // 4))
    with torch.no_grad():
        full = model(pan, lms, ms)[win]
        part = model(pan[win], lms[win], ms[lr])
    inner = (slice(None), slice(None), slice(rf, size - rf), slice(rf, size - rf))
    torch.testing.assert_close(part[inner], full[inner], rtol=1e-4, atol=1e-5)


# -- building blocks ------------------------------------------------------------------------------


def test_box_highpass_matches_mirror_box_filter():
    from scipy import ndimage

    x = torch.rand(1, 3, 12, 9, dtype=torch.float64)
    ref = x.numpy() - ndimage.uniform_filter(x.numpy(), size=(1, 1, 5, 5), mode="mirror")
    np.testing.assert_allclose(box_highpass(x).numpy(), ref, atol=1e-12)


def test_lagconv_matches_unfold_formulation():
    torch.manual_seed(1)
    conv = LAGConv2d(5, 7).eval()
    x = torch.rand(2, 5, 9, 11)
    with torch.no_grad():
        taps = conv.attention1(x)  # (b, 9, H, W)
        cols = F.unfold(x, 3, padding=1).view(2, 5, 9, -1) * taps.flatten(2).unsqueeze(1)
        ref = torch.einsum("bnkp,mnk->bmp", cols, conv.weight.view(7, 5, 9)).view(2, 7, 9, 11)
        ref = ref + conv.attention3(x)
        torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-6)


def test_cacw_sample_centering_gives_correlation():
    blk = CACW(6, 4, center="samples")
    x = torch.randn(3, 6, 50, dtype=torch.float64)
    corr = blk.correlation(x)
    for i in range(3):
        torch.testing.assert_close(corr[i], torch.corrcoef(x[i]))
    # constant variables give zeros, not NaN
    x[:, 2] = 1.0
    assert torch.isfinite(blk.correlation(x)).all()


# -- registry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bands", [4, 8])
@pytest.mark.parametrize("arch", ARCHS)
def test_detection_round_trips(arch: str, n_bands: int):
    sd = build(arch, n_bands).state_dict()
    assert detect_architecture(sd) == (arch, n_bands)
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}
    assert detect_architecture(wrapped) == (arch, n_bands)


def test_resolve_aliases_and_unknown():
    assert resolve_arch("panet").name == "pannet"
    assert resolve_arch("DiCNN1").name == "dicnn"
    assert resolve_arch("adwm-lagconv").name == "bwnet_lagconv"
    with pytest.raises(ModelError, match="--arch"):
        resolve_arch("unet")
    with pytest.raises(ModelError):
        build("unet", 4)


def test_unknown_state_dict_asks_for_arch():
    with pytest.raises(ModelError, match="--arch"):
        detect_architecture({"conv1.weight": torch.zeros(3, 3, 3, 3)})
    sd = build("fusionnet", 4).state_dict()
    sd.pop("conv3.bias")
    with pytest.raises(ModelError, match="--arch"):
        detect_architecture(sd)


def test_ambiguous_state_dict_asks_for_arch(monkeypatch):
    twin = reg.ArchSpec("fusionnet_twin", reg.build_fusionnet, "lms", 10, 1, "conv3", band_key="conv3.weight")
    monkeypatch.setattr(reg, "_SPECS", [*reg._SPECS, twin])
    with pytest.raises(ModelError, match="several.*--arch"):
        detect_architecture(build("fusionnet", 8).state_dict())


def test_clean_state_dict_resolves_duplicate_aliases():
    sd = build("fusionnet", 4).state_dict()
    dup = dict(sd)
    for i in range(4):
        for name in ("conv20.weight", "conv20.bias", "conv21.weight", "conv21.bias"):
            dup[f"res{i + 1}.{name}"] = sd[f"backbone.{i}.{name}"].clone()
    assert set(clean_state_dict(dup)) == set(sd)
    only_alias = {k: v for k, v in dup.items() if not k.startswith("backbone.")}
    model = build("fusionnet", 4)
    model.load_state_dict(clean_state_dict(only_alias), strict=True)
    dup["res2.conv21.bias"] = dup["res2.conv21.bias"] + 1.0
    with pytest.raises(ModelError, match="differ"):
        clean_state_dict(dup)


def test_checkpoint_files(tmp_path: Path):
    from safetensors.torch import save_file

    model = build("dicnn", 4)
    sd = model.state_dict()
    pt = tmp_path / "m.pth"
    torch.save({"model": sd, "epoch": 1}, pt)
    st = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    for p in (pt, st):
        net, spec, nb = load_model(p)
        assert (spec.name, nb) == ("dicnn", 4) and not net.training
        assert set(load_checkpoint_file(p)) == set(sd)
    pickled = tmp_path / "module.pth"
    torch.save(model, pickled)
    with pytest.raises(ModelError, match="pickled"):
        load_checkpoint_file(pickled)
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint_file(tmp_path / "missing.pth")
    with pytest.raises(ModelError, match="does not fit"):
        load_model(pt, arch="fusionnet")
    with pytest.raises(ModelError, match="4 bands, not 8"):
        load_model(pt, n_bands=8)


# -- published checkpoints (../shared) -------------------------------------------------------------

_DLPAN_STEMS = {
    "pnn": "pnn",
    "pannet": "pannet",
    "panet": "pannet",
    "dicnn1": "dicnn",
    "msdcnn": "msdcnn",
    "drpnn": "drpnn",
    "fusionnet": "fusionnet",
}


def _checkpoints() -> list[tuple[Path, str, int]]:
    out = []
    for p in sorted((WEIGHTS / "dlpan").glob("*/*.pth")):
        out.append((p, _DLPAN_STEMS[p.stem], 8 if p.parent.name in ("WV3", "WV2") else 4))
    for p in sorted((WEIGHTS / "adwm").glob("*.pth")):
        out.append((p, p.stem.removesuffix("_wv3"), 8))
    return out


@pytest.mark.shared
@needs_shared
def test_all_shared_checkpoints_are_found():
    found = _checkpoints()
    assert len(found) == 27
    assert {a for _, a, _ in found} == set(ARCHITECTURES) - {"premix"}


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize(
    "path,arch,n_bands",
    _checkpoints() if WEIGHTS.is_dir() else [],
    ids=lambda v: v.relative_to(WEIGHTS).as_posix() if isinstance(v, Path) else None,
)
def test_published_checkpoint_loads_and_runs(path: Path, arch: str, n_bands: int):
    raw = load_checkpoint_file(path)
    assert detect_architecture(raw) == (arch, n_bands)
    model = build(arch, n_bands)
    model.load_state_dict(clean_state_dict(raw), strict=True)
    model.eval()
    pan, lms, ms = _inputs(n_bands, size=64)
    with torch.no_grad():
        out = model(pan, lms, ms)
        feat = model.features(pan, lms, ms)
        assert torch.equal(model.head(feat, pan, lms, ms), out)
    assert out.shape == (1, n_bands, 64, 64)
    assert torch.isfinite(out).all()


def _ergas(ref: np.ndarray, out: np.ndarray, ratio: int = 4) -> float:
    rmse = np.sqrt(((ref - out) ** 2).mean(axis=(1, 2)))
    return float(100.0 / ratio * np.sqrt(((rmse / ref.mean(axis=(1, 2))) ** 2).mean()))


def _cc(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(r.ravel(), o.ravel())[0, 1] for r, o in zip(ref, out, strict=True)]))


@pytest.fixture(scope="module")
def wv2_reduced():
    """WorldView-2 crop at reduced resolution (Wald): PAN 128x128, MS 32x32, reference MS 128x128."""
    from scipy.io import loadmat

    from pansharpen_cli.filters import interp23tap, wald_degrade
    from pansharpen_cli.sensors import get_sensor

    d = loadmat(SHARED / "data" / "wv2-grip" / "imgWV2.mat")
    pan = d["I_PAN"][384:896, 384:896].astype(np.float64)
    ms = d["I_MS"][96:224, 96:224].astype(np.float64).transpose(2, 0, 1)
    s = get_sensor("WV2")
    pan_lr, ms_lr = wald_degrade(pan, ms, s.gnyq, s.pan_gnyq, 4)
    lms = interp23tap(ms_lr, 4)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a / 2047.0, dtype=torch.float32).unsqueeze(0)

    return t(pan_lr[None]), t(lms), t(ms_lr), ms, lms


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "data" / "wv2-grip" / "imgWV2.mat").is_file(), reason="../shared is absent")
@pytest.mark.parametrize("stem", ["fusionnet", "pnn", "pannet", "dicnn1", "msdcnn", "drpnn"])
def test_dlpan_wv2_sharpens_a_real_scene(wv2_reduced, stem: str):
    pan, lms_t, ms_t, ref, lms = wv2_reduced
    model, _, _ = load_model(WEIGHTS / "dlpan" / "WV2" / f"{stem}.pth")
    with torch.no_grad():
        out = model(pan, lms_t, ms_t)[0].numpy() * 2047.0
    b = 8  # leave out the borders
    ref, out, lms = ref[:, b:-b, b:-b], out[:, b:-b, b:-b], lms[:, b:-b, b:-b]
    assert _cc(ref, out) > 0.9
    assert _cc(ref, out) > _cc(ref, lms) + 0.05
    assert _ergas(ref, out) < 0.6 * _ergas(ref, lms)


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "data" / "wv2-grip" / "imgWV2.mat").is_file(), reason="../shared is absent")
@pytest.mark.parametrize("stem", ["bwnet_fusionnet", "bwnet_lagconv", "bwnet_lgpnet"])
def test_adwm_wv3_improves_on_bicubic_on_a_wv2_scene(wv2_reduced, stem: str):
    """The WorldView-3 ADWM nets on WorldView-2 data (same VNIR bands): better than their own upsampling."""
    pan, _, ms_t, ref, _ = wv2_reduced
    model, _, _ = load_model(WEIGHTS / "adwm" / f"{stem}_wv3.pth")
    with torch.no_grad():
        out = model(pan, None, ms_t)[0].numpy() * 2047.0
        up = F.interpolate(ms_t, scale_factor=4, mode="bicubic")[0].numpy() * 2047.0
    b = 8
    ref, out, up = ref[:, b:-b, b:-b], out[:, b:-b, b:-b], up[:, b:-b, b:-b]
    assert _cc(ref, out) > 0.85
    assert _ergas(ref, out) < 0.85 * _ergas(ref, up)


# -- PreMix (own implementation, no published weights) ------------------------------------------------


def test_premix_starts_as_identity_and_learns():
    torch.manual_seed(0)
    model = build("premix", 4, embed_dim=8)
    pan, lms, ms = _inputs(4, size=16, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(model(pan, lms, None), lms, rtol=0, atol=1e-6)
    target = lms + 0.3 * (pan - pan.mean())  # inject some PAN detail
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.mse_loss(model(pan, lms, None), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_premix_hard_mask_runs():
    model = build("premix", 3, embed_dim=8, hard_threshold=0.1).eval()
    pan, lms, ms = _inputs(3, size=16)
    with torch.no_grad():
        mask = model.blocks[0].mix.mask(torch.rand(1, 8, 4, 4), torch.rand(1, 8, 4, 4))
        out = model(pan, lms, ms)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert out.shape == lms.shape and torch.isfinite(out).all()
