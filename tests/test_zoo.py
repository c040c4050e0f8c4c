"""The model zoo: manifests, user store, SHA-256 verification, checkpoint import, `pansharpen models`.

Every test uses a temporary user store (``PANSHARPEN_HOME``); the package's ``weights/`` folder is
only read. Tests marked ``shared`` import the third-party checkpoints of ``../shared/weights``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pansharpen_cli.models import build
from pansharpen_cli.models import registry as reg
from typer.testing import CliRunner

from pansharpen_cli import zoo
from pansharpen_cli.errors import ModelError, UsageError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights"


pytestmark = pytest.mark.usefixtures("torch_threads")


def save_checkpoint(path: Path, arch: str, n_bands: int, *, seed: int = 0, dlpan_style: bool = False) -> dict:
    """A random ``arch`` state dict saved as a plain PyTorch file; returns the state dict."""
    torch.manual_seed(seed)
    sd = build(arch, n_bands).state_dict()
    obj: dict = dict(sd)
    if dlpan_style:  # DataParallel prefix plus the duplicate resN aliases of the DLPan checkpoints
        for i in range(4):
            for k in ("conv20.weight", "conv20.bias", "conv21.weight", "conv21.bias"):
                obj[f"res{i + 1}.{k}"] = sd[f"backbone.{i}.{k}"]
        obj = {"epoch": 7, "state_dict": {"module." + k: v for k, v in obj.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return sd


def _inputs(n_bands: int, size: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    pan = torch.rand(1, 1, size, size, generator=g)
    lms = torch.rand(1, n_bands, size, size, generator=g)
    return pan, lms


runner = CliRunner()


def cli(*args: str):
    from pansharpen_cli.cli import app

    return runner.invoke(app, list(args))


# -- stores ------------------------------------------------------------------------------------------


def test_user_home_locations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("PANSHARPEN_HOME", str(tmp_path / "ph"))
    assert zoo.user_home() == tmp_path / "ph"
    assert zoo.user_store() == tmp_path / "ph" / "models"
    monkeypatch.delenv("PANSHARPEN_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.user_home() == tmp_path / "xdg" / "pansharpen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert zoo.user_home() == tmp_path / "h" / ".cache" / "pansharpen"


def test_shipped_manifest_is_valid_and_verifies():
    mf = Path(str(zoo.shipped_root())) / zoo.MANIFEST
    data = json.loads(mf.read_text())
    assert isinstance(data["models"], list)
    for e in zoo.shipped_models():  # every shipped file is present and matches its hash
        assert e.origin == "shipped"
        assert zoo.verify_model(e) == e.sha256
        assert e.name.split(".", 1)[0] == e.arch


def test_empty_store(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert zoo.user_models() == []
    assert [e.origin for e in zoo.list_models()] == ["shipped"] * len(zoo.shipped_models())
    assert zoo.find_model("fusionnet.wv3") is None
    assert zoo.find_model("wbrovey") is None
    with pytest.raises(ModelError, match="unknown model 'fusionnet.nope'"):
        zoo.get_model("fusionnet.nope")
    res = cli("models", "list")
    assert res.exit_code == 0 and "user-" not in res.output  # only the shipped models
    assert all(e.name in res.output for e in zoo.shipped_models())
    # nothing shipped and nothing imported
    _write_manifest(tmp_path / "pkg", [])
    monkeypatch.setattr(zoo, "shipped_root", lambda: tmp_path / "pkg")
    res = cli("models", "list")
    assert res.exit_code == 0 and "no models installed" in res.output


# -- import round trip ---------------------------------------------------------------------------------


def test_import_round_trip(home: Path, tmp_path: Path):
    ckpt = tmp_path / "ckpts" / "QB" / "fusionnet.pth"
    sd = save_checkpoint(ckpt, "fusionnet", 4, dlpan_style=True)
    entry = zoo.import_checkpoint(ckpt, licence="MIT")

    # detected, named arch.sensor from the folder, stored beside the user manifest
    assert (entry.name, entry.arch, entry.bands, entry.sensor, entry.ratio) == ("fusionnet.qb", "fusionnet", 4, "QB", 4)
    assert (entry.bit_depth, entry.scale, entry.input_convention) == (11, 2047.0, "lms")
    assert entry.band_names == ("Blue", "Green", "Red", "NIR")
    stored = zoo.user_store() / entry.file
    assert stored.is_file() and stored.parent == home / "models"
    assert entry.sha256 == zoo.sha256_file(stored) and entry.size == stored.stat().st_size
    assert str(ckpt.resolve()) in entry.source and zoo.sha256_file(ckpt) in entry.source

    # safetensors: exactly the network's tensors, no duplicate aliases, contiguous
    from safetensors import safe_open

    with safe_open(str(stored), framework="pt") as f:
        assert set(f.keys()) == set(sd)
        assert f.metadata()["arch"] == "fusionnet"
        for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            t = f.get_tensor(k)
            assert t.is_contiguous() and t.dtype == torch.float32
            assert torch.equal(t, sd[k])

    # manifest on disk follows the schema
    doc = json.loads((home / "models" / "manifest.json").read_text())
    assert doc["schema"] == 1 and [m["name"] for m in doc["models"]] == ["fusionnet.qb"]
    assert set(zoo.REQUIRED_FIELDS) <= set(doc["models"][0])

    # list / info / verify through the CLI
    res = cli("models", "list", "--json")
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    shipped = [e.name for e in zoo.shipped_models()]
    assert [m["name"] for m in listed] == [*shipped, "fusionnet.qb"]  # shipped first, then the user's
    mine = listed[-1]
    assert (mine["origin"], mine["provenance"], mine["origin_label"]) == ("user", "imported", "user-imported")
    assert {m["origin_label"] for m in listed[:-1]} <= {"shipped"}
    res = cli("models", "list")
    assert res.exit_code == 0 and "QB" in res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("fusionnet.qb "))
    assert "user-imported" in line
    res = cli("models", "info", "fusionnet.qb", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["sha256"] == entry.sha256 and info["architecture"]["receptive_field"] == 10
    res = cli("models", "verify")
    assert res.exit_code == 0 and "ok" in res.output and "fusionnet.qb" in res.output

    # load -> same outputs as the original state dict
    net, spec, e = zoo.load_network("fusionnet.qb")
    ref = build("fusionnet", 4)
    ref.load_state_dict(sd)
    ref.eval()
    pan, lms = _inputs(4)
    with torch.no_grad():
        assert torch.equal(net(pan, lms, None), ref(pan, lms, None))
    assert spec.name == "fusionnet" and e == entry


def test_import_via_cli(home: Path, tmp_path: Path):
    ckpt = tmp_path / "runs" / "My Run" / "best.pth"
    save_checkpoint(ckpt, "dicnn", 3)
    res = cli("models", "import", str(ckpt), "--bit-depth", "12", "--ratio", "2")
    assert res.exit_code == 0, res.output
    assert "imported dicnn.my-run" in res.output
    e = zoo.get_model("DICNN.my-run")  # names are case-insensitive
    assert (e.sensor, e.ratio, e.bit_depth, e.scale, e.bands) == ("generic", 2, 12, 4095.0, 3)
    assert e.band_names == ("Band 1", "Band 2", "Band 3")


def test_import_names_and_collisions(home: Path, tmp_path: Path):
    ckpt = tmp_path / "x" / "WV3" / "net.pth"
    save_checkpoint(ckpt, "pnn", 8)
    assert zoo.import_checkpoint(ckpt).name == "pnn.wv3"
    with pytest.raises(ModelError, match="already in the user store.*--overwrite"):
        zoo.import_checkpoint(ckpt)
    assert zoo.import_checkpoint(ckpt, overwrite=True).name == "pnn.wv3"
    assert zoo.import_checkpoint(ckpt, name="v2").name == "pnn.v2"  # a bare tag gets the arch prefix
    assert zoo.import_checkpoint(ckpt, name="pnn.WV3-b").name == "pnn.wv3-b"
    with pytest.raises(ModelError, match="must start with its architecture 'pnn.'"):
        zoo.import_checkpoint(ckpt, name="fusionnet.x")
    with pytest.raises(ModelError, match="invalid model name"):
        zoo.import_checkpoint(ckpt, name="pnn.a/b")
    with pytest.raises(ModelError, match="8 bands but sensor QB has 4"):
        zoo.import_checkpoint(ckpt, sensor="QB", name="pnn.qb")
    assert [e.name for e in zoo.user_models()] == ["pnn.wv3", "pnn.v2", "pnn.wv3-b"]
    zoo.remove_model("pnn.v2")
    assert [e.name for e in zoo.user_models()] == ["pnn.wv3", "pnn.wv3-b"]
    assert not (zoo.user_store() / "pnn.v2.safetensors").exists()


def test_import_ambiguous_asks_for_arch(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    twin = reg.ArchSpec("fusionnet_twin", reg.build_fusionnet, "lms", 10, 1, "conv3", band_key="conv3.weight")
    monkeypatch.setattr(reg, "_SPECS", [*reg._SPECS, twin])
    ckpt = tmp_path / "WV3" / "f.pth"
    save_checkpoint(ckpt, "fusionnet", 8)
    with pytest.raises(ModelError, match="several architectures.*--arch") as ei:
        zoo.import_checkpoint(ckpt)
    assert ei.value.path == str(ckpt)
    res = cli("models", "import", str(ckpt))
    assert res.exit_code == 1 and "--arch" in res.output
    assert zoo.user_models() == []
    assert zoo.import_checkpoint(ckpt, arch="fusionnet").name == "fusionnet.wv3"


def test_import_refuses_unknown_and_pickled(home: Path, tmp_path: Path):
    with pytest.raises(ModelError, match="checkpoint not found"):
        zoo.import_checkpoint(tmp_path / "missing.pth")
    odd = tmp_path / "odd.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, odd)
    with pytest.raises(ModelError, match="no known architecture.*--arch"):
        zoo.import_checkpoint(odd)
    pickled = tmp_path / "module.pth"
    torch.save(build("pnn", 4), pickled)  # a whole pickled module: refused, never unpickled
    with pytest.raises(ModelError, match="pickled objects"):
        zoo.import_checkpoint(pickled)
    ckpt = tmp_path / "p.pth"
    save_checkpoint(ckpt, "pnn", 4)
    with pytest.raises(ModelError, match="does not fit"):
        zoo.import_checkpoint(ckpt, arch="fusionnet")
    with pytest.raises(ModelError, match="built for ratio 4"):
        save_checkpoint(tmp_path / "pn.pth", "pannet", 4)
        zoo.import_checkpoint(tmp_path / "pn.pth", ratio=2)
    assert zoo.user_models() == []


def test_import_safetensors_input(home: Path, tmp_path: Path):
    from safetensors.torch import save_file

    sd = build("msdcnn", 4).state_dict()
    p = tmp_path / "GE1" / "m.safetensors"
    p.parent.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    e = zoo.import_checkpoint(p)
    assert (e.name, e.sensor) == ("msdcnn.ge1", "GE1")


# -- tampering -------------------------------------------------------------------------------------------


def test_tampered_file_is_refused_and_never_loaded(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ckpt = tmp_path / "QB" / "fusionnet.pth"
    save_checkpoint(ckpt, "fusionnet", 4)
    e = zoo.import_checkpoint(ckpt)
    stored = zoo.user_store() / e.file
    data = bytearray(stored.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight: still a valid safetensors file
    stored.write_bytes(bytes(data))

    import safetensors.torch

    def _no_load(*a, **k):
        raise AssertionError("a file that failed verification was deserialised")

    monkeypatch.setattr(safetensors.torch, "load", _no_load)
    monkeypatch.setattr(safetensors.torch, "load_file", _no_load)
    with pytest.raises(ModelError, match="SHA-256 mismatch.*not loaded"):
        zoo.verify_model("fusionnet.qb")
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        zoo.load_network("fusionnet.qb")
    from pansharpen_cli.methods import get_method

    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        get_method("fusionnet.qb")
    res = cli("models", "verify")
    assert res.exit_code == 1 and "FAILED fusionnet.qb" in res.output

    stored.write_bytes(bytes(data[:-100]))  # truncated
    with pytest.raises(ModelError, match="size mismatch"):
        zoo.load_network("fusionnet.qb")
    stored.write_bytes(bytes(data) + b"\0")  # grown
    with pytest.raises(ModelError, match="size mismatch"):
        zoo.verify_model("fusionnet.qb")
    stored.unlink()
    with pytest.raises(ModelError, match="missing"):
        zoo.load_network("fusionnet.qb")


def test_package_folder_is_never_written(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pkg = Path(str(zoo.shipped_root()))
    before = {p.name: p.stat().st_mtime_ns for p in pkg.iterdir()}
    ckpt = tmp_path / "WV4" / "pnn.pth"
    save_checkpoint(ckpt, "pnn", 4)
    zoo.import_checkpoint(ckpt)
    assert {p.name: p.stat().st_mtime_ns for p in pkg.iterdir()} == before
    monkeypatch.setenv("PANSHARPEN_HOME", str(pkg))
    with pytest.raises(UsageError, match="package's weights folder"):
        zoo.import_checkpoint(ckpt)
    assert {p.name: p.stat().st_mtime_ns for p in pkg.iterdir()} == before


# -- manifests -----------------------------------------------------------------------------------------


def _entry(**kw) -> dict:
    d = {"name": "fusionnet.wv3", "file": "fusionnet.wv3.safetensors", "sha256": "0" * 64, "size": 10,
         "arch": "fusionnet", "bands": 8, "band_names": [f"B{i}" for i in range(8)], "sensor": "WV3", "ratio": 4,
         "bit_depth": 11, "scale": 2047, "input_convention": "lms", "training_data": "t", "recipe": None,
         "quality": {}, "licence": "MIT"}
    d.update(kw)
    return d


def _write_manifest(folder: Path, entries: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"models": entries}))


@pytest.mark.parametrize("bad,match", [
    ({"sha256": "abc"}, "sha256"),
    ({"name": "FusionNet"}, "arch.tag"),
    ({"name": "pnn.wv3"}, "must start with its architecture"),
    ({"file": "../x.safetensors"}, "plain .safetensors"),
    ({"file": "x.pth"}, "plain .safetensors"),
    ({"bands": "8"}, "wrong type"),
    ({"band_names": ["a"]}, "band_names"),
    ({"input_convention": "rgb"}, "input_convention"),
    ({"scale": 0}, "scale"),
    ({"default_for": "L8"}, "'default_for' must be a list of strings"),
    ({"provenance": "stolen"}, "'provenance' must be one of"),
])
def test_manifest_validation(home: Path, bad: dict, match: str):
    _write_manifest(zoo.user_store(), [_entry(**bad)])
    with pytest.raises(ModelError, match=match):
        zoo.user_models()


def test_manifest_errors(home: Path):
    e = _entry()
    del e["licence"]
    _write_manifest(zoo.user_store(), [e])
    with pytest.raises(ModelError, match="lacks the field 'licence'"):
        zoo.user_models()
    _write_manifest(zoo.user_store(), [_entry(), _entry()])
    with pytest.raises(ModelError, match="twice"):
        zoo.user_models()
    (zoo.user_store() / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read the model manifest"):
        zoo.list_models()
    (zoo.user_store() / "manifest.json").write_text(json.dumps({"schema": 99, "models": []}))
    with pytest.raises(ModelError, match="upgrade"):
        zoo.list_models()
    res = cli("models", "list")
    assert res.exit_code == 1 and "upgrade" in res.output


def test_default_model_for(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    shipped = tmp_path / "pkg"
    l8 = ["B2", "B3", "B4", "B5"]
    _write_manifest(shipped, [
        _entry(name="fusionnet.generic8", sensor="generic", default_for=["generic"]),
        _entry(name="fusionnet.wv2", sensor="WV2", compatible_sensors=["WV3"], default_for=["WV2", "WV3"]),
        _entry(name="fusionnet.wv3", sensor="WV3", default_for=["WV3"]),
        _entry(name="fusionnet.ge1", sensor="GE1", bands=4, band_names=list("BGRN")),  # fits, never a default
        _entry(name="pnn.qb", arch="pnn", sensor="QB", bands=4, band_names=list("BGRN"), default_for=["QB"]),
        _entry(name="pnn.l8", arch="pnn", sensor="L8", bands=4, band_names=l8, ratio=2, default_for=["L8", "L9"]),
    ])
    monkeypatch.setattr(zoo, "shipped_root", lambda: shipped)
    assert zoo.default_model_for("WV3", 8, 4.0) == "fusionnet.wv3"  # its own sensor before manifest order
    assert zoo.default_model_for("wv2", 8, 4.0) == "fusionnet.wv2"
    assert zoo.default_model_for("GE1", 8, 4.0) is None  # a generic model fits but is not flagged for GE1
    assert zoo.default_model_for("GE1", 4, 4.0) is None  # fusionnet.ge1 has no default_for
    assert zoo.default_model_for(None, 8, 4.0) == "fusionnet.generic8"
    assert zoo.default_model_for("QB", 4, 4.02) == "pnn.qb"
    assert zoo.default_model_for("QB", 4, 2.0) is None
    assert zoo.default_model_for("L8", 4, 2.0) == "pnn.l8"
    assert zoo.default_model_for("L9", 4, 2.0, l8) == "pnn.l8"
    assert zoo.default_model_for("L8", 4, 2.0, ["b2", "b3", "b4", "b5"]) == "pnn.l8"
    assert zoo.default_model_for("L8", 4, 2.0, ["B4", "B5", "B6", "B7"]) is None  # other bands
    assert zoo.default_model_for("L8", 3, 2.0) is None
    assert zoo.default_model_for("L7", 4, 2.0) is None
    assert zoo.default_model_for("WV3", 3, 4.0) is None
    # user models are never defaults, even with a default_for of their own
    ckpt = tmp_path / "c" / "QB" / "dicnn.pth"
    save_checkpoint(ckpt, "dicnn", 4)
    zoo.import_checkpoint(ckpt)
    doc = json.loads((zoo.user_store() / "manifest.json").read_text())
    doc["models"][0]["default_for"] = ["WV4", "QB"]
    (zoo.user_store() / "manifest.json").write_text(json.dumps(doc))
    assert zoo.get_model("dicnn.qb").default_for == ("WV4", "QB")
    assert zoo.default_model_for("WV4", 4, 4.0) is None
    assert zoo.default_model_for("QB", 4, 4.0) == "pnn.qb"
    # fitting / listing
    assert [e.name for e in zoo.models_fitting(4, 4.0)] == ["fusionnet.ge1", "pnn.qb", "dicnn.qb"]
    with pytest.raises(ModelError, match="is for 8 MS bands, the scene has 4 - models that fit: fusionnet.ge1, "
                                         "pnn.qb, dicnn.qb"):
        zoo.check_fit(zoo.get_model("fusionnet.wv3"), 4, 4.0)
    with pytest.raises(ModelError, match="is for ratio 4, the scene's PAN/MS ratio is 2.*pnn.l8"):
        zoo.check_fit(zoo.get_model("dicnn.qb"), 4, 2.0)
    with pytest.raises(ModelError, match="no installed model fits 3 bands at ratio 2"):
        zoo.check_fit(zoo.get_model("dicnn.qb"), 3, 2.0)


# -- the shipped models ------------------------------------------------------------------------------


SHIPPED = ["fusionnet.l8", "fusionnet.vhr4", "fusionnet.vhr8", "bwnet_fusionnet.vhr4", "bwnet_fusionnet.vhr8"]


def test_shipped_models_are_the_trained_ones():
    """The manifest ships the project's five models with their trained.json recipe, data, quality, licence."""
    trained = {m["name"]: m for m in json.loads((Path(str(zoo.shipped_root())) / "trained.json").read_text())["models"]}
    entries = zoo.shipped_models()
    assert [e.name for e in entries] == SHIPPED
    for e in entries:
        t = trained[e.name]
        for k in ("file", "sha256", "size", "arch", "bands", "sensor", "ratio", "bit_depth", "input_convention",
                  "training_data", "recipe", "quality", "licence"):
            assert getattr(e, k) == t[k], (e.name, k)
        assert list(e.band_names) == t["band_names"] and e.scale == t["scale"]
        assert e.licence == "MIT" and e.recipe and "train_shipped.py" in e.recipe
        assert {r["protocol"] for r in e.quality["results"]} == {"reduced-resolution (Wald)", "full-resolution"}
        assert zoo.provenance_of(e) == "trained" and zoo.origin_label(e) == "shipped"
    # only the Landsat model is a default: the VHR ones, trained on simulated Sentinel-2 data, score below
    # the classical methods on real WorldView-2 (weights/README.md)
    assert {e.name: e.default_for for e in entries if e.default_for} == {"fusionnet.l8": ("L8", "L9")}


def test_shipped_defaults(home: Path):
    l8 = ["B2", "B3", "B4", "B5"]
    assert zoo.default_model_for("L8", 4, 2.0, l8) == "fusionnet.l8"
    assert zoo.default_model_for("L9", 4, 2.0, l8) == "fusionnet.l8"
    assert zoo.default_model_for("L8", 4, 2.0) == "fusionnet.l8"
    assert zoo.default_model_for("L8", 3, 2.0, l8[:3]) is None  # trained on 4 bands
    assert zoo.default_model_for("L7", 4, 2.0) is None
    assert zoo.default_model_for(None, 4, 2.0) is None
    for sensor, n in (("WV2", 8), ("WV3", 8), ("QB", 4), ("GE1", 4), ("WV4", 4), (None, 4), (None, 8)):
        assert zoo.default_model_for(sensor, n, 4.0) is None, sensor
    res = cli("models", "list")
    assert res.exit_code == 0
    rows = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.split() and ln.split()[0] in SHIPPED}
    assert set(rows) == set(SHIPPED) and all("shipped" in r for r in rows.values())
    assert "L8 L9" in rows["fusionnet.l8"]


def test_shipped_verify_via_cli(home: Path):
    res = cli("models", "verify")
    assert res.exit_code == 0, res.output
    for name in SHIPPED:
        assert f"ok     {name}" in res.output


# -- registering models that pansharpen made --------------------------------------------------------------


def _trained_entry(tmp_path: Path, name: str = "fusionnet.mine", seed: int = 0) -> tuple[Path, dict]:
    from pansharpen_cli.training import export_model

    torch.manual_seed(seed)
    sf = tmp_path / "runs" / f"{name}.safetensors"
    entry = export_model(build("fusionnet", 4), sf, name=name, arch="fusionnet", band_names=["B2", "B3", "B4", "B5"],
                         sensor="L8", ratio=2, bit_depth=16, scale=65535.0, training_data="my Landsat scenes",
                         recipe="pansharpen train --arch fusionnet ...",
                         quality={"protocol": "reduced-resolution (Wald)", "dataset": "validation split (0.1)",
                                  "metrics": {"Q2n": 0.9, "SAM": 1.0, "ERGAS": 2.0}},
                         licence="CC-BY-4.0", description="mine", extra={"default_for": ["L8"], "junk": 1})
    return sf, entry


def test_register_model_keeps_the_whole_entry(home: Path, tmp_path: Path):
    sf, entry = _trained_entry(tmp_path)
    e = zoo.register_model(sf, entry)
    stored = zoo.user_store() / "fusionnet.mine.safetensors"
    assert stored.read_bytes() == sf.read_bytes() and e.location == str(stored)
    assert (e.recipe, e.training_data, e.quality, e.licence) == (entry["recipe"], "my Landsat scenes",
                                                                entry["quality"], "CC-BY-4.0")
    assert (e.sensor, e.ratio, e.scale, e.band_names) == ("L8", 2, 65535.0, ("B2", "B3", "B4", "B5"))
    assert e.default_for == () and e.provenance == "trained"  # a user model is never a default
    assert zoo.origin_label(e) == "user-trained" and e.created == entry["created"]
    doc = json.loads((zoo.user_store() / "manifest.json").read_text())["models"][0]
    assert doc["recipe"] == entry["recipe"] and doc["provenance"] == "trained" and "junk" not in doc
    net, _, got = zoo.load_network("fusionnet.mine")
    assert got == e
    # the same name again needs overwrite; a shipped name is refused; nothing else changes
    with pytest.raises(ModelError, match="already in the user store"):
        zoo.register_model(sf, entry)
    sf2, entry2 = _trained_entry(tmp_path / "b", seed=1)
    assert zoo.register_model(sf2, entry2, overwrite=True).sha256 == entry2["sha256"] != entry["sha256"]
    ship = {**entry, "name": "fusionnet.l8"}
    with pytest.raises(ModelError, match="name of a shipped model"):
        zoo.register_model(sf, ship)
    assert [m.name for m in zoo.user_models()] == ["fusionnet.mine"]


def test_register_model_refuses_a_bad_file_or_entry(home: Path, tmp_path: Path):
    sf, entry = _trained_entry(tmp_path)
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        zoo.register_model(sf, {**entry, "sha256": "0" * 64})
    with pytest.raises(ModelError, match="size mismatch"):
        zoo.register_model(sf, {**entry, "size": entry["size"] + 1})
    with pytest.raises(ModelError, match="do not fit"):
        zoo.register_model(sf, {**entry, "bands": 8, "band_names": [f"B{i}" for i in range(8)]})
    with pytest.raises(ModelError, match="lacks the field 'recipe'"):
        zoo.register_model(sf, {k: v for k, v in entry.items() if k != "recipe"})
    with pytest.raises(ModelError, match="must start with its architecture"):
        zoo.register_model(sf, {**entry, "name": "pnn.mine"})
    with pytest.raises(ModelError, match="not found"):
        zoo.register_model(tmp_path / "nope.safetensors", entry)
    assert zoo.user_models() == []
    assert not zoo.user_store().exists() or not list(zoo.user_store().glob("*.safetensors"))


# -- no torch for help and listing -----------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["models", "--help"], ["models", "list"], ["models", "verify"],
                                  ["models", "import", "--help"], ["fuse", "--help"]])
def test_cli_does_not_import_torch(argv: list[str], home: Path):
    code = (
        "import sys\n"
        "from pansharpen_cli.cli import main\n"
        f"sys.argv = ['pansharpen', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', rc)\n"
    )
    env = {**os.environ, "COLUMNS": "120"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "NOTORCH 0", res.stdout[-2000:]


# -- ../shared: every published checkpoint imports and runs ---------------------------------------------


def _shared_checkpoints() -> list[Path]:
    return sorted(WEIGHTS.glob("*/*/*.pth")) + sorted(WEIGHTS.glob("adwm/*.pth")) if WEIGHTS.is_dir() else []


_STEM_ARCH = {"pnn": "pnn", "pannet": "pannet", "panet": "pannet", "dicnn1": "dicnn", "msdcnn": "msdcnn",
              "drpnn": "drpnn", "fusionnet": "fusionnet"}


@pytest.mark.shared
@pytest.mark.skipif(not WEIGHTS.is_dir(), reason="../shared is absent")
def test_all_shared_checkpoints_are_listed():
    assert len(_shared_checkpoints()) == 27


@pytest.mark.shared
@pytest.mark.parametrize("ckpt", _shared_checkpoints(), ids=lambda p: p.relative_to(WEIGHTS).as_posix())
def test_shared_checkpoint_imports_and_runs(ckpt: Path, home: Path):
    from pansharpen_cli.methods import TileInput, get_method

    e = zoo.import_checkpoint(ckpt, licence="GPL-3.0" if "dlpan" in ckpt.parts else "MIT")
    if ckpt.parent.parent.name == "dlpan":
        sensor = ckpt.parent.name
        assert (e.arch, e.sensor) == (_STEM_ARCH[ckpt.stem], sensor)
        assert e.name == f"{_STEM_ARCH[ckpt.stem]}.{sensor.lower()}"
        assert e.bands == (8 if sensor in ("WV2", "WV3") else 4)
    else:
        assert e.name == ckpt.stem.replace("_wv3", ".wv3") and e.sensor == "WV3" and e.bands == 8
    assert zoo.verify_model(e.name) == e.sha256
    m = get_method(e.name, device="cpu")
    rng = np.random.default_rng(0)
    size = 48
    pan = rng.uniform(200, 1500, (size, size)).astype(np.float32)
    ms_up = rng.uniform(200, 1500, (e.bands, size, size)).astype(np.float32)
    out = m.fuse_tile(TileInput(pan=pan, ms_up=ms_up, valid=np.ones((size, size), bool)))
    assert out.shape == (e.bands, size, size) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert m.provenance["weights_sha256"] == e.sha256
