"""NetworkMethod: a zoo network run through the tiling engine (`fuse --model`).

Random-weight models are imported into a temporary user store (``PANSHARPEN_HOME``); tests marked
``shared`` use the DLPan WorldView-2 FusionNet and the real WV2 scene of ``../shared``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from pansharpen_cli.models import build
from typer.testing import CliRunner

from pansharpen_cli import zoo
from pansharpen_cli.errors import ModelError, UsageError
from pansharpen_cli.methods import TileInput, get_method
from pansharpen_cli.methods import network as netmod
from pansharpen_cli.methods.network import NetworkMethod, resolve_device, resolve_precision
from pansharpen_cli.pipeline import fuse_arrays

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WV2 = SHARED / "data" / "wv2-grip"
WV2_FUSIONNET = SHARED / "weights" / "dlpan" / "WV2" / "fusionnet.pth"
needs_wv2 = pytest.mark.skipif(not (WV2.is_dir() and WV2_FUSIONNET.is_file()), reason="../shared is absent")


pytestmark = pytest.mark.usefixtures("torch_threads")


def add_random_model(tmp_path: Path, arch: str, n_bands: int, sensor: str, seed: int = 0) -> zoo.ModelEntry:
    torch.manual_seed(seed)
    p = tmp_path / "ckpt" / sensor / f"{arch}.pth"
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build(arch, n_bands).state_dict(), p)
    return zoo.import_checkpoint(p)


def smooth_scene(size: int, n_bands: int, ratio: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A PAN (size, size) and an LR MS (B, size/ratio, size/ratio) with structure, in 11-bit DN."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(size=(size, size)), 3)
    base = (base - base.min()) / np.ptp(base)
    pan = (300 + 1400 * base + rng.normal(0, 10, base.shape)).astype(np.float32)
    lr = pan.reshape(size // ratio, ratio, size // ratio, ratio).mean(axis=(1, 3))
    ms = np.stack([lr * (0.6 + 0.1 * b) + 40 * b for b in range(n_bands)]).astype(np.float32)
    return pan, ms


def tile_input(pan: np.ndarray, ms_up: np.ndarray) -> TileInput:
    return TileInput(pan=pan, ms_up=ms_up, valid=np.ones(pan.shape, bool))


# -- the engine --------------------------------------------------------------------------------------


def test_tiling_does_not_change_the_output(home: Path, tmp_path: Path):
    """A FusionNet (random weights) through the engine: 64-px tiles == one 512-px tile up to rounding."""
    e = add_random_model(tmp_path, "fusionnet", 4, "QB")
    pan, ms = smooth_scene(192, 4)
    small = fuse_arrays(pan, ms, e.name, ratio=4, tile=64)
    whole = fuse_arrays(pan, ms, e.name, ratio=4, tile=512)
    assert small.shape == whole.shape == (4, 192, 192)
    assert np.isfinite(whole).all() and np.ptp(whole) > 100
    assert np.abs(small - whole).max() < 0.5


def test_default_overlap_follows_the_architecture(home: Path, tmp_path: Path):
    """Convolutional nets are exact with cropped context (default overlap 0); ADWM's tile-wide
    covariance weighting is not, and gets the cross-fade of twice its receptive field."""
    local = NetworkMethod(add_random_model(tmp_path, "fusionnet", 4, "QB").name, device="cpu")
    wide = NetworkMethod(add_random_model(tmp_path, "bwnet_fusionnet", 4, "QB").name, device="cpu")
    assert local.exact_tiles and not wide.exact_tiles


def test_fuse_tile_is_the_normalised_forward(home: Path, tmp_path: Path):
    e = add_random_model(tmp_path, "fusionnet", 4, "QB")
    m = NetworkMethod(e.name, device="cpu")
    assert m.name == "fusionnet.qb" and m.receptive_field == 10
    pan, ms = smooth_scene(64, 4)
    ms_up = np.repeat(np.repeat(ms, 4, axis=1), 4, axis=2)
    out = m.fuse_tile(tile_input(pan, ms_up))
    net, _, _ = zoo.load_network(e.name)
    with torch.no_grad():
        ref = net(torch.from_numpy(pan / np.float32(2047))[None, None],
                  torch.from_numpy(ms_up / np.float32(2047))[None], None)[0].numpy() * 2047
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-3)
    # the normalisation is a constant of the model, not a statistic of the tile
    half = m.fuse_tile(tile_input(pan[:32, :32].copy(), ms_up[:, :32, :32].copy()))
    np.testing.assert_allclose(half[:, :20, :20], out[:, :20, :20], rtol=1e-5, atol=2e-3)
    # batched and single tiles agree
    m.batch = 2
    a, b = m.fuse_tiles([tile_input(pan, ms_up), tile_input(pan[::-1].copy(), ms_up[:, ::-1].copy())])
    np.testing.assert_allclose(a, out, rtol=1e-5, atol=2e-3)
    assert b.shape == out.shape


@pytest.mark.parametrize("arch", ["pannet", "bwnet_fusionnet"])
def test_tiles_are_padded_to_the_size_multiple(arch: str, home: Path, tmp_path: Path):
    e = add_random_model(tmp_path, arch, 4, "QB")
    m = NetworkMethod(e.name, device="cpu")
    assert m.spec.size_multiple == 4 and m.needs_lr
    assert m.receptive_field == m.spec.receptive_field + 4
    pan, ms = smooth_scene(48, 4)
    ms_up = np.repeat(np.repeat(ms, 4, axis=1), 4, axis=2)
    for h, w in ((46, 43), (41, 48), (48, 48)):
        out = m.fuse_tile(tile_input(pan[:h, :w].copy(), ms_up[:, :h, :w].copy()))
        assert out.shape == (4, h, w) and np.isfinite(out).all()


def test_provenance_reaches_the_output_tags(home: Path, tmp_path: Path):
    from pansharpen_cli.pipeline import FuseRequest, fuse
    from pansharpen_cli.raster import write_array

    e = add_random_model(tmp_path, "dicnn", 4, "QB")
    pan, ms = smooth_scene(64, 4)
    write_array(tmp_path / "pan.tif", pan.astype(np.uint16)[None], (0.5, 0, 0, 0, -0.5, 32), bit_depth=11)
    write_array(tmp_path / "ms.tif", ms.astype(np.uint16), (2.0, 0, 0, 0, -2.0, 32), bit_depth=11)
    m = NetworkMethod(e.name, device="cpu")
    assert m.provenance == {"model": e.name, "arch": "dicnn", "weights_sha256": e.sha256, "precision": "fp32"}
    fuse(FuseRequest(pan=tmp_path / "pan.tif", ms=[tmp_path / "ms.tif"], out=tmp_path / "out.tif", method=m))
    with rasterio.open(tmp_path / "out.tif") as ds:
        tags = ds.tags()
        assert ds.dtypes[0] == "uint16" and ds.count == 4
    assert tags["PANSHARPEN_METHOD"] == "dicnn.qb"
    assert tags["PANSHARPEN_MODEL"] == "dicnn.qb" and tags["PANSHARPEN_ARCH"] == "dicnn"
    assert tags["PANSHARPEN_WEIGHTS_SHA256"] == e.sha256
    assert json.loads(tags["PANSHARPEN_METHOD_OPTIONS"])["device"] == "cpu"


def test_scene_that_does_not_fit_lists_models_that_do(home: Path, tmp_path: Path):
    add_random_model(tmp_path, "pnn", 4, "QB")
    add_random_model(tmp_path, "dicnn", 8, "WV3")
    pan, ms = smooth_scene(64, 4)
    # the shipped 4-band ratio-4 models come first, then the user's
    fits = "fusionnet.vhr4, bwnet_fusionnet.vhr4, pnn.qb"
    assert ", ".join(e.name for e in zoo.models_fitting(4, 4.0)) == fits
    with pytest.raises(ModelError, match=f"'dicnn.wv3' is for 8 MS bands, the scene has 4 - models that fit: {fits}$"):
        fuse_arrays(pan, ms, "dicnn.wv3", ratio=4)
    pan2, ms2 = smooth_scene(64, 4, ratio=2)
    with pytest.raises(ModelError, match="is for ratio 4, the scene's PAN/MS ratio is 2 - models that fit: "
                                         "fusionnet.l8$"):
        fuse_arrays(pan2, ms2, "pnn.qb", ratio=2)
    pan3, ms3 = smooth_scene(64, 3, ratio=2)
    with pytest.raises(ModelError, match="is for 4 MS bands, the scene has 3 and is for ratio 4, the scene's PAN/MS "
                                         "ratio is 2 - no installed model fits 3 bands at ratio 2"):
        fuse_arrays(pan3, ms3, "pnn.qb", ratio=2)


# -- devices, precision, malloc ----------------------------------------------------------------------


def test_device_and_precision_checks():
    notes: list[str] = []
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UsageError, match="unknown --device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto", notes).type == "cpu" and "no CUDA GPU" in notes[0]
        with pytest.raises(UsageError, match="no CUDA GPU is available"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert resolve_precision(None, cpu) == netmod.DEFAULT_PRECISION == "fp32"
    with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(UsageError, match="unknown --precision"):
        resolve_precision("int8", cpu)


# -- CUDA logic, exercised on the CPU with a simulated GPU ---------------------------------------------

GiB = 1 << 30


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> dict:
    """torch.cuda reports one GPU with ``state['free']`` bytes free and 512 MiB cached by torch."""
    state = {"free": 2 * GiB, "reserved": 512 << 20, "allocated": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: state.get("bf16", True))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return state


def test_device_resolution_with_a_gpu(fake_gpu: dict):
    notes: list[str] = []
    assert resolve_device("auto", notes) == torch.device("cuda") and notes == []
    assert resolve_device("cuda:0").index == 0
    with pytest.raises(UsageError, match="no CUDA device 1 \\(1 visible\\)"):
        resolve_device("cuda:1")
    with pytest.raises(UsageError, match="unknown --device"):
        resolve_device("cuda:x")
    gpu = torch.device("cuda")
    assert resolve_precision("fp16", gpu) == "fp16" and resolve_precision("bf16", gpu) == "bf16"
    fake_gpu["bf16"] = False
    with pytest.raises(UsageError, match="this GPU has no bf16 support"):
        resolve_precision("bf16", gpu)


def test_device_resolution_without_a_gpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    notes: list[str] = []
    assert resolve_device("auto", notes).type == "cpu"
    assert notes == [f"no CUDA GPU available: running the network on the CPU ({torch.get_num_threads()} threads)"]
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(UsageError, match="--device cuda but no CUDA GPU is available \\(no CUDA device is visible\\) "
                                         "- use --device cpu or auto"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(UsageError, match="this torch is built without CUDA"):
        resolve_device("cuda:0")


def test_batch_size_from_gpu_memory(home: Path, tmp_path: Path, fake_gpu: dict):
    assert netmod.auto_batch_size(10 * GiB, 100 << 20) == netmod.MAX_AUTO_BATCH  # capped
    assert netmod.auto_batch_size(1 * GiB, 100 << 20) == 6  # 0.6 GiB / 100 MiB
    assert netmod.auto_batch_size(10 << 20, 100 << 20) == 1  # never 0
    net = build("fusionnet", 4)
    assert netmod.activation_bytes_per_pixel(net, 5, 4, "fp32") == 2 * (9 * 4 + 4 * 32 * 4)
    assert netmod.activation_bytes_per_pixel(net, 5, 4, "fp16") == 2 * (9 * 4 + 4 * 32 * 2)
    assert netmod.gpu_usable_bytes(torch.device("cuda")) == 2 * GiB + (512 << 20)

    e = add_random_model(tmp_path, "fusionnet", 4, "QB")
    m = NetworkMethod(e.name, device="cpu")
    assert m.batch_auto and m.batch == 1 and not m.pin_memory and "batch" not in m.options  # CPU: one tile
    m.device = torch.device("cuda")  # the same method as if it ran on the simulated GPU
    m.batch = None
    assert m.pin_memory
    side = netmod.AUTO_BATCH_TILE + 4 * m.receptive_field + 1
    per_tile = 1096 * side * side
    assert m.batch == int(0.6 * (2.5 * GiB)) // per_tile == 4
    fake_gpu["free"] = 64 * GiB  # an idle H100: capped
    assert m._pass_size(side, side) == netmod.MAX_AUTO_BATCH
    assert m._pass_size(2048, 2048) == int(0.6 * 64.5 * GiB) // (1096 * 2048 * 2048) == 9  # big tiles: fewer
    fake_gpu["free"] = 0
    fake_gpu["reserved"] = 0
    assert m._pass_size(64, 64) == 1
    m.batch = 3  # --batch wins
    assert not m.batch_auto and m._pass_size(2048, 2048) == 3


def test_pinned_host_buffers_on_cuda(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """On CUDA the tiles are staged in pinned host memory both ways (simulated: the flag is recorded)."""
    e = add_random_model(tmp_path, "fusionnet", 4, "QB")
    m = NetworkMethod(e.name, device="cpu")
    pan, ms = smooth_scene(64, 4)
    t = tile_input(pan, np.repeat(np.repeat(ms, 4, axis=1), 4, axis=2))
    calls: list[tuple[tuple[int, ...], bool]] = []
    real = netmod._host_empty

    def spy(shape, pinned):
        calls.append((tuple(shape), pinned))
        return real(shape, False)  # no GPU here: an ordinary buffer

    monkeypatch.setattr(netmod, "_host_empty", spy)
    plain = m.fuse_tile(t)
    assert calls == [((1, 5, 64, 64), False)]
    calls.clear()
    monkeypatch.setattr(NetworkMethod, "pin_memory", property(lambda self: True))
    pinned = m.fuse_tile(t)
    assert calls == [((1, 5, 64, 64), True), ((1, 4, 64, 64), True)]  # input and output staging
    np.testing.assert_array_equal(pinned, plain)


def test_out_of_memory_halves_the_pass(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       fake_gpu: dict):
    e = add_random_model(tmp_path, "dicnn", 4, "QB")
    m = NetworkMethod(e.name, device="cpu")
    m.device = torch.device("cuda")
    m.batch = 5
    passes: list[int] = []

    def fake_forward(tiles):
        passes.append(len(tiles))
        if len(tiles) > 2:
            raise netmod._CUDA_OOM("CUDA out of memory")
        return np.stack([np.full((4, 8, 8), t.pan[0, 0], np.float32) for t in tiles])

    monkeypatch.setattr(m, "_forward", fake_forward)
    tiles = [tile_input(np.full((8, 8), i, np.float32), np.zeros((4, 8, 8), np.float32)) for i in range(5)]
    out = m.fuse_tiles(tiles)
    assert [o[0, 0, 0] for o in out] == [0, 1, 2, 3, 4]  # order kept
    assert passes == [5, 3, 2, 1, 2]
    assert m.notices[-2:] == ["GPU out of memory with 5 tiles per pass: continuing with 3",
                              "GPU out of memory with 3 tiles per pass: continuing with 2"]
    passes.clear()
    m.fuse_tiles(tiles)  # later passes stay at the size that worked
    assert passes == [2, 2, 1]

    def oom(tiles):
        raise netmod._CUDA_OOM("CUDA out of memory")

    monkeypatch.setattr(m, "_forward", oom)
    with pytest.raises(ModelError, match="GPU ran out of memory on one 8x8 tile of dicnn.qb - use a smaller --tile"):
        m.fuse_tiles(tiles[:1])


@pytest.mark.skipif(not netmod.cpu_supports_bf16(), reason="no native bf16 on this CPU")
def test_bf16_runs_close_to_fp32(home: Path, tmp_path: Path):
    e = add_random_model(tmp_path, "fusionnet", 4, "QB")
    pan, ms = smooth_scene(64, 4)
    t = tile_input(pan, np.repeat(np.repeat(ms, 4, axis=1), 4, axis=2))
    a = NetworkMethod(e.name, device="cpu").fuse_tile(t)
    m = NetworkMethod(e.name, device="cpu", precision="bf16")
    assert m.provenance["precision"] == "bf16"
    b = m.fuse_tile(t)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_tune_malloc_is_guarded(monkeypatch: pytest.MonkeyPatch):
    from pansharpen_cli import runtime

    monkeypatch.setattr(runtime, "_MALLOC_TUNED", None)
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert runtime.tune_malloc() is False
    assert runtime.tune_malloc() is False  # once per process
    monkeypatch.setattr(runtime, "_MALLOC_TUNED", None)
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.setenv("PANSHARPEN_NO_MALLOPT", "1")
    assert runtime.tune_malloc() is False


# -- method lookup and the CLI -----------------------------------------------------------------------


def test_get_method_falls_back_to_the_zoo(home: Path, tmp_path: Path):
    e = add_random_model(tmp_path, "pnn", 4, "QB")
    m = get_method("PNN.QB", device="cpu")
    assert isinstance(m, NetworkMethod) and m.name == e.name
    with pytest.raises(UsageError, match="unknown method 'pnn.nope'.*models list"):
        get_method("pnn.nope")


def test_classical_methods_never_import_torch():
    code = ("import sys\nfrom pansharpen_cli.methods import get_method\nget_method('wbrovey')\n"
            "from pansharpen_cli import zoo\nzoo.find_model('wbrovey')\nprint('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "False", res.stderr


def _cli(*args: str):
    from pansharpen_cli.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_model_option_errors(home: Path, tmp_path: Path):
    e = add_random_model(tmp_path, "pnn", 4, "QB")
    common = ["fuse", "--pan", "p.tif", "--ms", "m.tif", "-o", str(tmp_path / "o.tif")]
    res = _cli(*common, "--model", e.name, "--method", "brovey")
    assert res.exit_code == 2 and "mutually exclusive" in res.output
    res = _cli(*common, "--method", "wbrovey", "--device", "cpu")
    assert res.exit_code == 2 and "--device only applies to deep models, not to 'wbrovey'" in res.output
    res = _cli(*common, "--model", e.name, "--weights", "1,1,1,1")
    assert res.exit_code == 2 and "--weights" in res.output
    res = _cli(*common, "--model", "pnn.nope")
    names = ", ".join(m.name for m in zoo.list_models())
    assert names.startswith("fusionnet.l8, ") and names.endswith(", pnn.qb")  # shipped first, then the user's
    assert res.exit_code == 1 and f"unknown model 'pnn.nope' - choose one of: {names}" in res.output
    res = _cli(*common, "--model", e.name, "--precision", "fp16", "--device", "cpu")
    assert res.exit_code == 2 and "fp16 needs a CUDA GPU" in res.output
    res = _cli(*common, "--model", e.name, "--batch", "0")
    assert res.exit_code == 2 and "--batch 0 must be at least 1" in res.output
    if not torch.cuda.is_available():
        res = _cli(*common, "--model", e.name, "--device", "cuda")
        assert res.exit_code == 2 and "--device cuda but no CUDA GPU is available" in res.output
        assert len(res.stderr.strip().splitlines()) == 1


# -- ../shared: the DLPan WorldView-2 FusionNet on the real scene ------------------------------------


def _crop(src: Path, dst: Path, row: int, col: int, size: int) -> None:
    from affine import Affine
    from rasterio.windows import Window

    with rasterio.open(src) as ds:
        w = Window(col, row, size, size)
        t = ds.transform
        prof = ds.profile.copy()
        prof.update(width=size, height=size,
                    transform=Affine(t.a, t.b, t.c + t.a * col + t.b * row, t.d, t.e, t.f + t.d * col + t.e * row))
        with rasterio.open(dst, "w", **prof) as out:
            out.write(ds.read(window=w))
            out.update_tags(**ds.tags())


@pytest.mark.shared
@needs_wv2
def test_cli_fuse_with_the_dlpan_wv2_fusionnet(home: Path, tmp_path: Path):
    _crop(WV2 / "pan.tif", tmp_path / "pan.tif", 512, 512, 256)
    _crop(WV2 / "ms.tif", tmp_path / "ms.tif", 128, 128, 64)
    res = _cli("models", "import", str(WV2_FUSIONNET), "--licence", "GPL-3.0")
    assert res.exit_code == 0, res.output
    name = "fusionnet.wv2"
    out, exp = tmp_path / "out.tif", tmp_path / "exp.tif"
    res = _cli("fuse", "--pan", str(tmp_path / "pan.tif"), "--ms", str(tmp_path / "ms.tif"), "--model", name,
               "-o", str(out), "--device", "cpu")
    assert res.exit_code == 0, res.output
    res = _cli("fuse", "--pan", str(tmp_path / "pan.tif"), "--ms", str(tmp_path / "ms.tif"), "--method", "exp",
               "-o", str(exp), "-q")
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        a = ds.read()
        tags = ds.tags()
        assert (ds.count, ds.width, ds.height, ds.dtypes[0]) == (8, 256, 256, "uint16")
        assert ds.crs is not None and ds.transform == rasterio.open(tmp_path / "pan.tif").transform
    assert tags["BIT_DEPTH"] == "11" and a.max() <= 2047 and a.mean() > 50
    assert tags["PANSHARPEN_MODEL"] == name and tags["PANSHARPEN_WEIGHTS_SHA256"] == zoo.get_model(name).sha256
    with rasterio.open(exp) as ds:
        b = ds.read().astype(np.float64)
    # sharpened: follows the interpolated MS closely in every band, and adds PAN detail
    for k in range(8):
        assert np.corrcoef(a[k].ravel(), b[k].ravel())[0, 1] > 0.85
    pan = rasterio.open(tmp_path / "pan.tif").read(1).astype(np.float64)
    hp = pan - np.pad(pan, 1, mode="edge")[1:-1, :-2]
    hp_a = a[4].astype(np.float64) - np.pad(a[4].astype(np.float64), 1, mode="edge")[1:-1, :-2]
    hp_b = b[4] - np.pad(b[4], 1, mode="edge")[1:-1, :-2]
    assert np.corrcoef(hp.ravel(), hp_a.ravel())[0, 1] > np.corrcoef(hp.ravel(), hp_b.ravel())[0, 1] + 0.2


@pytest.mark.shared
@needs_wv2
def test_engine_feeds_the_dlpan_lms_convention(home: Path):
    """Through the engine (toolbox phase), the net sees exactly the toolbox's 23-tap `lms`."""
    from scipy.io import loadmat

    from pansharpen_cli.filters import interp23tap, wald_degrade
    from pansharpen_cli.sensors import get_sensor

    d = loadmat(WV2 / "imgWV2.mat")
    pan = d["I_PAN"][384:640, 384:640].astype(np.float64)
    ms = d["I_MS"][96:160, 96:160].astype(np.float64).transpose(2, 0, 1)
    s = get_sensor("WV2")
    pan_lr, ms_lr = wald_degrade(pan, ms, s.gnyq, s.pan_gnyq, 4)
    e = zoo.import_checkpoint(WV2_FUSIONNET)
    got = fuse_arrays(pan_lr.astype(np.float32), ms_lr.astype(np.float32), e.name, ratio=4, sensor="WV2", tile=32)
    net, _, _ = zoo.load_network(e.name)
    lms = interp23tap(ms_lr, 4)
    with torch.no_grad():
        ref = net(torch.tensor(pan_lr / 2047.0, dtype=torch.float32)[None, None],
                  torch.tensor(lms / 2047.0, dtype=torch.float32)[None], None)[0].numpy() * 2047.0
    b = 24  # borders: the toolbox pads differently from the engine
    assert np.abs(got[:, b:-b, b:-b] - ref[:, b:-b, b:-b]).max() < 0.5
