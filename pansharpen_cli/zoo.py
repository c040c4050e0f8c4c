"""The model zoo: named network weights, their manifests, hash verification and checkpoint import.

Two stores hold models, each a folder with a ``manifest.json`` (schema: ``weights/README.md``,
section "Manifest schema") and the ``.safetensors`` files it lists:

* the **shipped** store: the package folder ``pansharpen_cli.weights`` (``weights/`` in the
  repository), located with :mod:`importlib.resources`; read-only, never written;
* the **user** store: ``$PANSHARPEN_HOME/models`` (default ``$XDG_CACHE_HOME/pansharpen/models``,
  i.e. ``~/.cache/pansharpen/models``), where ``pansharpen models import`` puts converted checkpoints.

Models are named ``arch.tag`` (``fusionnet.wv3``): the architecture key of
:data:`pansharpen_cli.models.ARCHITECTURES`, a dot, and a tag. Classical method names never
contain a dot, so a name resolves unambiguously. A shipped name shadows a user one.

Every load verifies the file's size and full SHA-256 against the manifest first: the bytes are
read once, in chunks, hashed while read, and only those verified bytes are parsed (no second
open between check and use). A mismatch raises :class:`~pansharpen_cli.errors.ModelError` and
nothing is deserialised. Pickled checkpoints are only read on import, with
``torch.load(weights_only=True)``.

This module imports no torch at import time (``pansharpen models list``/``--help`` stay fast);
the functions that need it import it inside.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelError, UsageError
from .sensors import Sensor, get_sensor

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from .models.base import ArchSpec, PansharpenNet

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SHIPPED_PACKAGE = "pansharpen_cli.weights"
#: ``arch.tag``: lowercase; the architecture part is a registry key, the tag may hold ``. _ - +``
#: (``+`` names adapted models: ``fusionnet.wv3+wv2``).
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*\.[a-z0-9][a-z0-9_.+-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20

#: manifest keys every entry must have, with their JSON types
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "file": str,
    "sha256": str,
    "size": int,
    "arch": str,
    "bands": int,
    "band_names": list,
    "sensor": str,
    "ratio": int,
    "bit_depth": int,
    "scale": (int, float),
    "input_convention": str,
    "training_data": str,
    "recipe": (str, type(None)),
    "quality": dict,
    "licence": str,
}
#: optional keys and their defaults
OPTIONAL_FIELDS: dict[str, Any] = {
    "description": "",
    "source": "",
    "compatible_sensors": [],
    "created": "",
    "default_for": [],
    "provenance": "",
}
#: optional keys of adapted models (``pansharpen adapt``), stored only when set, with their types
ADAPTED_FIELDS: dict[str, type] = {"base_model": str, "base_sha256": str, "adaptation": dict}
#: values of the ``provenance`` field: how the weights came to be
PROVENANCES = ("trained", "imported", "adapted")
_CONVENTIONS = ("lms", "lr", "highpass")


# -- entries -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """One manifest entry (see ``weights/README.md`` for the meaning of each field)."""

    name: str
    file: str
    sha256: str
    size: int
    arch: str
    bands: int
    band_names: tuple[str, ...]
    sensor: str
    ratio: int
    bit_depth: int
    scale: float
    input_convention: str
    training_data: str
    recipe: str | None
    quality: dict[str, Any]
    licence: str
    description: str = ""
    source: str = ""
    compatible_sensors: tuple[str, ...] = ()
    created: str = ""
    #: not stored: "shipped" or "user"
    origin: str = field(default="user", compare=False)
    #: not stored: the folder holding the manifest (a Path, or a Traversable for the package)
    root: Any = field(default=None, compare=False, repr=False)
    #: sensor keys for which ``pansharpen fuse`` runs this (shipped) model when neither --method
    #: nor --model is given (see :func:`default_model_for`)
    default_for: tuple[str, ...] = ()
    #: how the weights came to be: "trained", "imported", "adapted", or "" (unknown: inferred by
    #: :func:`provenance_of`)
    provenance: str = ""
    #: adapted models (``pansharpen adapt``): the base model's name; the entry's file is an adapter
    #: (see :mod:`pansharpen_cli.adapt`) applied on top of the base when loaded
    base_model: str = ""
    #: adapted models: the SHA-256 of the base model's weights file the adapter was made for
    base_sha256: str = ""
    #: adapted models: how (mode, scenes, seed, steps, learning rate, patches) and the report
    adaptation: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def location(self) -> str:
        """Where the weights file is, for messages."""
        return str(self.root / self.file) if self.root is not None else self.file

    def to_json(self) -> dict[str, Any]:
        """The manifest form (stored keys only, in schema order)."""
        d: dict[str, Any] = {}
        for k in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS):
            v = getattr(self, k)
            d[k] = list(v) if isinstance(v, tuple) else v
        for k in ADAPTED_FIELDS:  # written only for adapted models
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, origin: str, root: Any, where: str) -> ModelEntry:
        """Validate one manifest entry; ``where`` names the manifest in error messages."""
        if not isinstance(d, Mapping):
            raise ModelError("a manifest entry is not an object", path=where)
        label = f"entry '{d.get('name', '?')}'"
        for k, t in REQUIRED_FIELDS.items():
            if k not in d:
                raise ModelError(f"{label} lacks the field '{k}'", path=where, fix="see weights/README.md")
            v = d[k]
            if not isinstance(v, t) or (t is int and isinstance(v, bool)):
                raise ModelError(f"{label}: field '{k}' has the wrong type ({type(v).__name__})", path=where)
        name = d["name"]
        if not NAME_RE.match(name):
            raise ModelError(f"{label}: name must be 'arch.tag' in lowercase (e.g. fusionnet.wv3)", path=where)
        if name.split(".", 1)[0] != d["arch"]:
            raise ModelError(f"{label}: the name must start with its architecture '{d['arch']}.'", path=where)
        f = d["file"]
        if "/" in f or "\\" in f or f.startswith(".") or not f.endswith(".safetensors"):
            raise ModelError(f"{label}: 'file' must be a plain .safetensors file name beside the manifest",
                             path=where)
        if not _SHA_RE.match(d["sha256"]):
            raise ModelError(f"{label}: 'sha256' must be 64 lowercase hex digits", path=where)
        if d["size"] <= 0 or d["bands"] < 1 or d["ratio"] < 1 or not 1 <= d["bit_depth"] <= 32:
            raise ModelError(f"{label}: size, bands, ratio or bit_depth out of range", path=where)
        if not (math.isfinite(float(d["scale"])) and float(d["scale"]) > 0):
            raise ModelError(f"{label}: 'scale' must be a positive number", path=where)
        if len(d["band_names"]) != d["bands"]:
            raise ModelError(f"{label}: {len(d['band_names'])} band_names for {d['bands']} bands", path=where)
        if d["input_convention"] not in _CONVENTIONS:
            raise ModelError(f"{label}: input_convention must be one of {', '.join(_CONVENTIONS)}", path=where)
        opt = {k: d.get(k, v) for k, v in OPTIONAL_FIELDS.items()}
        return cls(
            name=name, file=f, sha256=d["sha256"], size=int(d["size"]), arch=d["arch"], bands=int(d["bands"]),
            band_names=tuple(str(b) for b in d["band_names"]), sensor=d["sensor"], ratio=int(d["ratio"]),
            bit_depth=int(d["bit_depth"]), scale=float(d["scale"]), input_convention=d["input_convention"],
            training_data=d["training_data"], recipe=d["recipe"], quality=dict(d["quality"]),
            licence=d["licence"], description=str(opt["description"]), source=str(opt["source"]),
            compatible_sensors=tuple(str(s) for s in opt["compatible_sensors"]), created=str(opt["created"]),
            origin=origin, root=root, default_for=_str_list(d, "default_for", label, where),
            provenance=_provenance_field(d, label, where), **_adapted_fields(d, label, where),
        )


def _str_list(d: Mapping[str, Any], key: str, label: str, where: str) -> tuple[str, ...]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ModelError(f"{label}: field '{key}' must be a list of strings", path=where)
    return tuple(v)


def _adapted_fields(d: Mapping[str, Any], label: str, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, t in ADAPTED_FIELDS.items():
        if k in d:
            if not isinstance(d[k], t):
                raise ModelError(f"{label}: field '{k}' has the wrong type ({type(d[k]).__name__})", path=where)
            out[k] = dict(d[k]) if t is dict else d[k]
    if out.get("base_sha256") and not _SHA_RE.match(out["base_sha256"]):
        raise ModelError(f"{label}: 'base_sha256' must be 64 lowercase hex digits", path=where)
    if out.get("base_model") and out["base_model"] == d.get("name"):
        raise ModelError(f"{label}: a model cannot be its own base", path=where)
    return out


def _provenance_field(d: Mapping[str, Any], label: str, where: str) -> str:
    v = d.get("provenance", "")
    if not isinstance(v, str) or (v and v not in PROVENANCES):
        raise ModelError(f"{label}: field 'provenance' must be one of {', '.join(PROVENANCES)}", path=where)
    return v


def provenance_of(entry: ModelEntry) -> str:
    """How a model's weights came to be: ``trained``, ``imported`` or ``adapted``.

    The stored ``provenance`` field when present; else inferred for older user manifests (an
    ``imported from ...`` source means imported, a recipe means trained).
    """
    if entry.provenance:
        return entry.provenance
    if entry.source.startswith("imported from"):
        return "imported"
    return "trained" if entry.recipe else "imported"


def origin_label(entry: ModelEntry) -> str:
    """``models list``'s provenance column: ``shipped``, ``user-imported``, ``user-trained`` or
    ``user-adapted`` (with its base model when the entry names one)."""
    if entry.origin == "shipped":
        return "shipped"
    label = f"user-{provenance_of(entry)}"
    base = getattr(entry, "base_model", "") or ""
    return f"{label} (base {base})" if base else label


# -- stores ------------------------------------------------------------------------------------------


def shipped_root() -> Traversable:
    """The package folder of the shipped weights (read-only)."""
    return resources.files(SHIPPED_PACKAGE)


def user_home() -> Path:
    """``$PANSHARPEN_HOME``, else ``$XDG_CACHE_HOME/pansharpen``, else ``~/.cache/pansharpen``."""
    env = os.environ.get("PANSHARPEN_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "pansharpen"


def user_store() -> Path:
    """The folder of the user's models and their ``manifest.json`` (may not exist yet)."""
    return user_home() / "models"


def _read_manifest(root: Any, origin: str) -> list[ModelEntry]:
    mf = root / MANIFEST
    where = str(mf)
    if not mf.is_file():
        return []
    try:
        data = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read the model manifest ({exc})", path=where,
                         fix="repair or delete it" if origin == "user" else "reinstall pansharpen") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelError("the model manifest must be an object with a 'models' list", path=where)
    if int(data.get("schema", SCHEMA_VERSION)) > SCHEMA_VERSION:
        raise ModelError(f"the model manifest has schema {data['schema']}, newer than this version "
                         f"understands ({SCHEMA_VERSION})", path=where, fix="upgrade pansharpen")
    entries = [ModelEntry.from_json(d, origin=origin, root=root, where=where) for d in data["models"]]
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise ModelError(f"the model manifest lists '{e.name}' twice", path=where)
        seen.add(e.name)
    return entries


def shipped_models() -> list[ModelEntry]:
    """The models shipped with the package."""
    return _read_manifest(shipped_root(), "shipped")


def user_models() -> list[ModelEntry]:
    """The models in the user store."""
    return _read_manifest(user_store(), "user")


def list_models() -> list[ModelEntry]:
    """Shipped models, then the user's (a user entry named like a shipped one is hidden)."""
    shipped = shipped_models()
    names = {e.name for e in shipped}
    return shipped + [e for e in user_models() if e.name not in names]


def find_model(name: str) -> ModelEntry | None:
    """The entry called ``name`` (case-insensitive), or None."""
    key = name.strip().lower()
    if "." not in key:  # classical method names never hold a dot: skip reading manifests
        return None
    return next((e for e in list_models() if e.name == key), None)


def has_model(name: str) -> bool:
    return find_model(name) is not None


def get_model(name: str) -> ModelEntry:
    """The entry called ``name``; :class:`ModelError` listing the available models otherwise."""
    e = find_model(name)
    if e is None:
        names = [m.name for m in list_models()]
        raise ModelError(
            f"unknown model '{name}'",
            fix=("choose one of: " + ", ".join(names)) if names else
            "no model is installed yet; import a checkpoint with `pansharpen models import CKPT`",
        )
    return e


# -- hashing and loading -----------------------------------------------------------------------------


def _chunks(src: Any) -> Iterator[bytes]:
    with src.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def sha256_file(path: str | Path | Traversable) -> str:
    """The SHA-256 of a file, streamed in 1 MiB chunks."""
    src = Path(path) if isinstance(path, str) else path
    h = hashlib.sha256()
    for chunk in _chunks(src):
        h.update(chunk)
    return h.hexdigest()


def _open_checked(entry: ModelEntry, *, keep: bool) -> bytes:
    src = entry.root / entry.file
    if not src.is_file():
        raise ModelError(f"the weights of '{entry.name}' are missing", path=entry.location,
                         fix="reinstall pansharpen" if entry.origin == "shipped" else
                         "import the checkpoint again (`pansharpen models import`)")
    h = hashlib.sha256()
    buf = bytearray()
    n = 0
    try:
        for chunk in _chunks(src):
            n += len(chunk)
            if n > entry.size:
                break
            h.update(chunk)
            if keep:
                buf += chunk
    except OSError as exc:
        raise ModelError(f"cannot read the weights of '{entry.name}' ({exc.strerror or exc})",
                         path=entry.location) from None
    fix = ("reinstall pansharpen" if entry.origin == "shipped" else
           "the file was modified or corrupted; import the checkpoint again")
    if n != entry.size:
        raise ModelError(f"size mismatch for '{entry.name}': the manifest says {entry.size} bytes, the file "
                         f"has {'more' if n > entry.size else n}; not loaded", path=entry.location, fix=fix)
    digest = h.hexdigest()
    if digest != entry.sha256:
        raise ModelError(f"SHA-256 mismatch for '{entry.name}': expected {entry.sha256[:16]}..., got "
                         f"{digest[:16]}...; not loaded", path=entry.location, fix=fix)
    return bytes(buf)


def verify_model(entry: ModelEntry | str) -> str:
    """Check size and SHA-256 of a model's file; returns the digest or raises :class:`ModelError`."""
    e = get_model(entry) if isinstance(entry, str) else entry
    _open_checked(e, keep=False)
    return e.sha256


def load_state_dict(entry: ModelEntry | str) -> dict[str, Tensor]:
    """The verified tensors of a model (hash checked on the very bytes that are parsed)."""
    e = get_model(entry) if isinstance(entry, str) else entry
    data = _open_checked(e, keep=True)
    from safetensors.torch import load as st_load

    try:
        return st_load(data)
    except Exception as exc:  # noqa: BLE001 - a bad file is reported the same way whatever the cause
        raise ModelError(f"the weights of '{e.name}' are not a valid safetensors file ({exc})",
                         path=e.location) from None


def load_network(entry: ModelEntry | str) -> tuple[PansharpenNet, ArchSpec, ModelEntry]:
    """Build the network of a model and load its verified weights strictly (eval mode).

    An adapted model (``base_model`` set) is its base network, loaded and verified the same way,
    plus its verified adapter (:func:`load_adapted_network`)."""
    e = get_model(entry) if isinstance(entry, str) else entry
    if e.base_model:
        return load_adapted_network(e)
    from .models import resolve_arch

    spec = resolve_arch(e.arch)
    if spec.input_convention != e.input_convention:
        raise ModelError(f"'{e.name}': the manifest says input convention '{e.input_convention}' but "
                         f"{spec.name} uses '{spec.input_convention}'", path=e.location)
    sd = load_state_dict(e)
    model = spec.builder(e.bands)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelError(f"the weights of '{e.name}' do not fit {spec.name} with {e.bands} bands "
                         f"({first[1].strip() if len(first) > 1 else first[0]})", path=e.location) from None
    model.eval()
    return model, spec, e


def load_adapted_network(entry: ModelEntry, _seen: tuple[str, ...] = ()) -> tuple[PansharpenNet, ArchSpec, ModelEntry]:
    """An adapted model: its base model (size and SHA-256 verified; the base's SHA-256 must also be
    the one the adapter was made for) and the adapter file (size and SHA-256 verified, parsed from
    the verified bytes) applied on top. Returns the adapted network, the base's architecture and
    ``entry``."""
    if entry.name in _seen or entry.base_model in _seen:
        raise ModelError(f"'{entry.name}': its base models form a loop ({' -> '.join((*_seen, entry.name))})",
                         path=entry.location)
    base = find_model(entry.base_model)
    if base is None:
        raise ModelError(f"'{entry.name}' is adapted from '{entry.base_model}', which is not installed",
                         path=entry.location, fix=f"import or restore '{entry.base_model}', or remove "
                         f"'{entry.name}' (`pansharpen models remove {entry.name}`)")
    if entry.base_sha256 and base.sha256 != entry.base_sha256:
        raise ModelError(f"'{entry.name}' was adapted from '{base.name}' with SHA-256 {entry.base_sha256[:16]}..., "
                         f"but the installed '{base.name}' is {base.sha256[:16]}...; not loaded", path=base.location,
                         fix=f"restore the original '{base.name}', or adapt it again (`pansharpen adapt`)")
    if base.base_model:
        net, spec, _ = load_adapted_network(base, (*_seen, entry.name))
    else:
        net, spec, _ = load_network(base)
    data = _open_checked(entry, keep=True)
    from .adapt import load_adapter_bytes

    try:
        model = load_adapter_bytes(net, data, where=entry.location)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"the adapter of '{entry.name}' does not fit '{base.name}' ({exc})",
                         path=entry.location) from None
    return model.eval(), spec, entry


def adapted_model_for(sensor_key: str | None, n_bands: int, ratio: float,
                      band_names: Sequence[str] | None = None) -> ModelEntry | None:
    """The user-adapted model (``pansharpen adapt``) that ``pansharpen fuse`` runs by default on a
    scene of ``sensor_key``, or None: a user model whose provenance is ``adapted``, flagged for the
    sensor in its ``default_for``, with the scene's band count and ratio (and its bands, when the
    scene names them). The most recently created one wins. Such a model wins over a shipped default
    (:func:`default_model_for`): the user adapted it to this sensor on purpose."""
    if sensor_key is None or sensor_key.strip().lower() == "generic":
        return None
    key = sensor_key.strip().upper()
    want = [b.strip().upper() for b in band_names] if band_names else None
    try:
        entries = user_models()
    except ModelError:
        return None  # a broken user manifest is reported when a model is actually used
    best: ModelEntry | None = None
    for e in entries:
        if provenance_of(e) != "adapted" or not e.base_model or key not in {s.upper() for s in e.default_for}:
            continue
        if e.bands != n_bands or not _ratio_fits(e.ratio, ratio):
            continue
        if want is not None and want != [b.upper() for b in e.band_names]:
            continue
        if best is None or e.created >= best.created:
            best = e
    if best is not None and any(s.name == best.name for s in shipped_models()):
        return None  # shadowed by a shipped model of the same name
    return best


def register_adapted(adapter: str | Path, base: ModelEntry, *, name: str, sensor: Sensor,
                     adaptation: Mapping[str, Any], quality: Mapping[str, Any] | None = None,
                     training_data: str = "", overwrite: bool = False) -> ModelEntry:
    """Add an adapter file (:func:`pansharpen_cli.adapt.save_adapter`) to the user store as a new
    model adapted from ``base`` to ``sensor``: provenance ``adapted``, ``base_model`` and
    ``base_sha256`` recorded, ``default_for`` the sensor (``pansharpen fuse`` then runs it by
    default on that sensor's scenes, :func:`adapted_model_for`). The entry is validated by loading
    it (base + adapter, both hash-verified) before the store is written. Raises
    :class:`ModelError` (nothing written) when it cannot be used."""
    src = Path(adapter)
    final = _normalise_name(name, base.arch)
    data = src.read_bytes()
    sens = sensor.subset(base.bands) if sensor.n_bands >= base.bands else sensor
    band_names = tuple(sens.band_names) if len(sens.band_names) == base.bands else base.band_names
    d: dict[str, Any] = {
        "name": final, "file": f"{final}.safetensors", "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data), "arch": base.arch, "bands": base.bands, "band_names": list(band_names),
        "sensor": sens.key, "ratio": base.ratio, "bit_depth": base.bit_depth, "scale": base.scale,
        "input_convention": base.input_convention,
        "training_data": training_data or f"adapted without reference to {sens.key} scenes",
        "recipe": None, "quality": dict(quality or {}), "licence": base.licence,
        "description": f"{base.name} adapted to {sens.key} ({adaptation.get('mode', 'tailor')})",
        "source": f"adapted from {base.name} (sha256 {base.sha256}) with `pansharpen adapt`",
        "compatible_sensors": [], "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "default_for": [sens.key], "provenance": "adapted", "base_model": base.name, "base_sha256": base.sha256,
        "adaptation": json.loads(json.dumps(dict(adaptation), default=str)),
    }
    # validate where the file is (hash, base, strict load), then store it
    here = ModelEntry.from_json({**d, "file": src.name}, origin="user", root=src.parent, where=str(src))
    load_adapted_network(here)
    final_entry = ModelEntry.from_json(d, origin="user", root=user_store(), where=str(user_store() / MANIFEST))
    return _store_user_entry(final_entry, data, overwrite=overwrite)


# -- fitting a scene ---------------------------------------------------------------------------------


def _ratio_fits(model_ratio: int, scene_ratio: float) -> bool:
    return abs(float(scene_ratio) - model_ratio) <= 0.05 * model_ratio


def models_fitting(n_bands: int, ratio: float) -> list[ModelEntry]:
    """The models whose band count and ratio fit a scene."""
    return [e for e in list_models() if e.bands == n_bands and _ratio_fits(e.ratio, ratio)]


def check_fit(entry: ModelEntry, n_bands: int, ratio: float) -> None:
    """Raise :class:`ModelError` when ``entry`` cannot run on a scene, listing the models that can."""
    problems = []
    if entry.bands != n_bands:
        problems.append(f"is for {entry.bands} MS bands, the scene has {n_bands}")
    if not _ratio_fits(entry.ratio, ratio):
        problems.append(f"is for ratio {entry.ratio}, the scene's PAN/MS ratio is {ratio:g}")
    if not problems:
        return
    fits = [e.name for e in models_fitting(n_bands, ratio)]
    fix = ("models that fit: " + ", ".join(fits)) if fits else (
        f"no installed model fits {n_bands} bands at ratio {ratio:g}; use a classical --method, or import one "
        "with `pansharpen models import`")
    raise ModelError(f"model '{entry.name}' " + " and ".join(problems), fix=fix)


def default_model_for(sensor_key: str | None, n_bands: int, ratio: float,
                      band_names: Sequence[str] | None = None) -> str | None:
    """The shipped model ``pansharpen fuse`` runs when given neither --method nor --model, or None.

    Only shipped models flagged for the sensor in their ``default_for`` field are candidates: the
    default must not depend on what a user imported, and a model is made a default only where its
    measured quality on real scenes of that sensor beats the classical methods (``weights/README.md``).
    A candidate must also have ``n_bands`` bands, the scene's ratio (within 5 %) and, when the
    scene's ``band_names`` are known, the same bands (a Landsat B4-B7 scene is not a B2-B5 one).
    A scene without a sensor (``sensor_key`` None) matches only ``"generic"`` in ``default_for``.
    Models whose own ``sensor`` is the scene's come first, then manifest order. None when nothing
    fits: the caller falls back to a classical method.
    """
    key = (sensor_key or "generic").upper()
    want = [b.strip().upper() for b in band_names] if band_names else None
    best: tuple[int, int, str] | None = None
    for i, e in enumerate(shipped_models()):
        if key not in {s.upper() for s in e.default_for}:
            continue
        if e.bands != n_bands or not _ratio_fits(e.ratio, ratio):
            continue
        if want is not None and want != [b.upper() for b in e.band_names]:
            continue
        rank = 0 if e.sensor.upper() == key else 1
        if best is None or (rank, i) < best[:2]:
            best = (rank, i, e.name)
    return best[2] if best else None


# -- import --------------------------------------------------------------------------------------------


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", s.strip().lower()).strip("-.")


def guess_sensor(path: Path, n_bands: int) -> Sensor | None:
    """A sensor named by the checkpoint's folder or a token of its file name, with ``n_bands`` bands."""
    candidates = [path.parent.name, *re.split(r"[_\-. ]+", path.stem)]
    for c in candidates:
        if not c:
            continue
        try:
            s = get_sensor(c)
        except UsageError:
            continue
        if s.n_bands == n_bands:
            return s
    return None


def _resolve_sensor(sensor: str | None, path: Path, n_bands: int) -> Sensor | None:
    if sensor is None:
        return guess_sensor(path, n_bands)
    if sensor.strip().lower() == "generic":
        return None
    s = get_sensor(sensor)
    if n_bands > s.n_bands:
        raise ModelError(f"the checkpoint has {n_bands} bands but sensor {s.key} has {s.n_bands}", path=path,
                         fix="pass the right --sensor, or --sensor generic")
    return s.subset(n_bands)


def _default_name(arch: str, sensor: Sensor | None, path: Path) -> str:
    tag = sensor.key if sensor else (_slug(path.parent.name) or _slug(path.stem))
    return f"{arch}.{_slug(tag) or 'model'}"


def _normalise_name(name: str, arch: str) -> str:
    n = name.strip().lower()
    if "." not in n:
        n = f"{arch}.{n}"
    if not NAME_RE.match(n):
        raise ModelError(f"invalid model name '{name}'",
                         fix="use 'arch.tag' with lowercase letters, digits and . _ - (e.g. fusionnet.wv3)")
    if n.split(".", 1)[0] != arch:
        raise ModelError(f"model name '{name}' must start with its architecture '{arch}.'",
                         fix=f"e.g. --name {arch}.{n.split('.', 1)[1]}")
    return n


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[None]:
    """An exclusive lock on the user store while its manifest is rewritten (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(store / ".lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _check_not_package(store: Path) -> None:
    try:
        pkg = Path(str(shipped_root())).resolve()
    except (OSError, TypeError):  # pragma: no cover - zipped package: cannot be written anyway
        return
    s = store.resolve()
    if s == pkg or pkg in s.parents:
        raise UsageError("the user model store points into the package's weights folder", path=store,
                         fix="set PANSHARPEN_HOME to a folder outside the installed package")


def import_checkpoint(
    ckpt: str | Path,
    *,
    arch: str | None = None,
    sensor: str | None = None,
    name: str | None = None,
    bit_depth: int | None = None,
    ratio: int | None = None,
    scale: float | None = None,
    licence: str | None = None,
    training_data: str | None = None,
    overwrite: bool = False,
) -> ModelEntry:
    """Convert a checkpoint (``.pth``/``.pt``/``.ckpt`` read with ``weights_only=True``, or
    ``.safetensors``) into the user store: returns its new manifest entry.

    The architecture and band count are detected from the state dict unless ``arch`` is given (an
    ambiguous or unknown checkpoint raises :class:`ModelError` asking for ``--arch``); the weights
    are loaded strictly into the network to prove they fit, then stored as contiguous, unshared
    float32 tensors (the duplicate aliases of DLPan checkpoints dropped) in ``NAME.safetensors``.

    Defaults: ``sensor`` guessed from the folder or file name (``WV3/``, ``*_wv3.pth``) when its band
    count matches; ``name`` = ``arch.sensor`` (or ``arch.<folder name>``) in lowercase;
    ``bit_depth`` = 11 and ``scale`` = 2^bit_depth - 1 (2047: what the published checkpoints
    divide by); ``ratio`` = the sensor's, else the architecture's.
    """
    import torch
    from safetensors.torch import save_file

    from .models.registry import (
        ARCHITECTURES,
        clean_state_dict,
        detect_architecture,
        load_checkpoint_file,
        load_model,
        resolve_arch,
    )

    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise ModelError("checkpoint not found", path=path, fix="check the path given to `models import`")
    raw = load_checkpoint_file(path)
    try:
        sd = clean_state_dict(raw)
        if arch is None:
            arch_name, _ = detect_architecture(sd)
        else:
            arch_name = resolve_arch(arch).name
        model, spec, nb = load_model(sd, arch=arch_name)
    except ModelError as exc:
        raise ModelError(exc.problem, path=path, fix=exc.fix) from None
    assert spec is ARCHITECTURES[arch_name]
    sens = _resolve_sensor(sensor, path, nb)
    if ratio is None:
        ratio = sens.ratio if sens else spec.ratio
    if ratio < 2:
        raise ModelError(f"--ratio {ratio} is out of range", fix="use the PAN/MS ratio the model was trained for")
    if spec.input_convention != "lms" and ratio != spec.ratio:
        raise ModelError(f"{spec.name} is built for ratio {spec.ratio}, not {ratio}", path=path,
                         fix=f"omit --ratio or use {spec.ratio}")
    bits = bit_depth if bit_depth is not None else round(math.log2(spec.default_scale + 1))
    if not 1 <= bits <= 32:
        raise ModelError(f"--bit-depth {bits} is out of range", fix="use 1-32 (11 for the published checkpoints)")
    div = float(scale) if scale is not None else float(2**bits - 1)
    if not (math.isfinite(div) and div > 0):
        raise ModelError(f"--scale {scale} must be a positive number")
    final = _normalise_name(name, spec.name) if name else _default_name(spec.name, sens, path)
    if any(e.name == final for e in shipped_models()):
        raise ModelError(f"'{final}' is the name of a shipped model", fix="choose another --name")

    # contiguous, unshared float32 copies of exactly the tensors the network holds
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float32)
        tensors[k] = t.clone().contiguous()
    file_name = f"{final}.safetensors"
    src_sha = sha256_file(path)

    store = user_store()
    _check_not_package(store)
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the model store ({exc.strerror or exc})", path=store,
                         fix="set PANSHARPEN_HOME to a writable folder") from None
    with _locked(store):
        entries = user_models()
        old = next((e for e in entries if e.name == final), None)
        if old is not None and not overwrite:
            raise ModelError(f"a model named '{final}' is already in the user store", path=old.location,
                             fix="pass --name to import it under another name, or --overwrite to replace it")
        fd, tmp = tempfile.mkstemp(dir=store, prefix=f".{file_name}.", suffix=".tmp")
        os.close(fd)
        try:
            meta = {"format": "pansharpen", "name": final, "arch": spec.name, "bands": str(nb),
                    "scale": repr(div), "input_convention": spec.input_convention}
            save_file(tensors, tmp, metadata=meta)
            entry = ModelEntry(
                name=final, file=file_name, sha256=sha256_file(tmp), size=os.path.getsize(tmp), arch=spec.name,
                bands=nb, band_names=tuple(sens.band_names if sens else [f"Band {i + 1}" for i in range(nb)]),
                sensor=sens.key if sens else "generic", ratio=int(ratio), bit_depth=int(bits), scale=div,
                input_convention=spec.input_convention,
                training_data=training_data or "unknown (imported checkpoint)", recipe=None, quality={},
                licence=licence or "unknown", source=f"imported from {path.resolve()} (sha256 {src_sha})",
                created=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), origin="user", root=store,
                provenance="imported",
            )
            os.replace(tmp, store / file_name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        kept = [e for e in entries if e.name != final] + [entry]
        doc = {"schema": SCHEMA_VERSION, "models": [e.to_json() for e in kept]}
        _write_atomic(store / MANIFEST, (json.dumps(doc, indent=2) + "\n").encode())
    return entry


def _store_user_entry(entry: ModelEntry, data: bytes, *, overwrite: bool) -> ModelEntry:
    """Write ``data`` as ``entry.file`` into the user store and add ``entry`` to its manifest, under
    the store's lock; the weights file is renamed into place before the manifest names it."""
    if any(e.name == entry.name for e in shipped_models()):
        raise ModelError(f"'{entry.name}' is the name of a shipped model", fix="choose another name")
    store = user_store()
    _check_not_package(store)
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the model store ({exc.strerror or exc})", path=store,
                         fix="set PANSHARPEN_HOME to a writable folder") from None
    with _locked(store):
        entries = user_models()
        old = next((e for e in entries if e.name == entry.name), None)
        if old is not None and not overwrite:
            raise ModelError(f"a model named '{entry.name}' is already in the user store", path=old.location,
                             fix="choose another name, or pass --overwrite to replace it")
        _write_atomic(store / entry.file, data)
        kept = [e for e in entries if e.name != entry.name] + [entry]
        doc = {"schema": SCHEMA_VERSION, "models": [e.to_json() for e in kept]}
        _write_atomic(store / MANIFEST, (json.dumps(doc, indent=2) + "\n").encode())
    return entry


def register_model(weights: str | Path, entry: Mapping[str, Any], *, overwrite: bool = False,
                   provenance: str = "trained") -> ModelEntry:
    """Add weights that pansharpen made (``pansharpen train``; adaptation) to the user store with
    their full manifest entry: recipe, training data, validation quality and licence are kept.

    ``entry`` is a manifest entry for ``weights`` (the dict :func:`pansharpen_cli.training.export_model`
    returns): its ``sha256`` and ``size`` must describe the file, which must load strictly into
    ``arch`` with ``bands`` bands. The name is normalised like an import's (``arch.tag``, lowercase;
    a shipped name is refused, an existing user model needs ``overwrite``). The stored copy is
    ``NAME.safetensors`` beside the user manifest; ``file`` and ``provenance`` are set here,
    ``default_for`` is cleared (user models are never defaults) and unknown fields are dropped.
    Raises :class:`ModelError` (nothing is written) when the entry or the file is not valid.
    """
    if provenance not in PROVENANCES:
        raise ValueError(f"provenance must be one of {', '.join(PROVENANCES)}")
    src = Path(weights).expanduser()
    if not src.is_file():
        raise ModelError("weights file not found", path=src)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("arch"), str) \
            or not isinstance(entry.get("name"), str):
        raise ModelError("the manifest entry to register needs 'name' and 'arch'", path=src)
    name = _normalise_name(entry["name"], entry["arch"])
    d = {k: entry[k] for k in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS) if k in entry}
    d.update(name=name, file=src.name, default_for=[], provenance=provenance)
    if not d.get("source"):
        d["source"] = f"{provenance} with pansharpen ({src.resolve()})"
    if not d.get("created"):
        d["created"] = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # validate the entry against the file where it is (hash and size first, then a strict load)
    here = ModelEntry.from_json(d, origin="user", root=src.parent, where=str(src))
    data = _open_checked(here, keep=True)
    load_network(here)
    d["file"] = f"{name}.safetensors"
    final = ModelEntry.from_json(d, origin="user", root=user_store(), where=str(user_store() / MANIFEST))
    return _store_user_entry(final, data, overwrite=overwrite)


def remove_model(name: str) -> ModelEntry:
    """Delete a model from the user store (shipped models cannot be removed)."""
    store = user_store()
    with _locked(store) if store.is_dir() else contextlib.nullcontext():
        entries = user_models()
        e = next((m for m in entries if m.name == name.strip().lower()), None)
        if e is None:
            raise ModelError(f"no model '{name}' in the user store", path=store)
        doc = {"schema": SCHEMA_VERSION, "models": [m.to_json() for m in entries if m.name != e.name]}
        _write_atomic(store / MANIFEST, (json.dumps(doc, indent=2) + "\n").encode())
        with contextlib.suppress(FileNotFoundError):
            (store / e.file).unlink()
    return e


def describe(entry: ModelEntry) -> dict[str, Any]:
    """``models info`` / ``list --json``: the manifest fields plus origin, provenance and location."""
    return {**entry.to_json(), "origin": entry.origin, "provenance": provenance_of(entry),
            "origin_label": origin_label(entry), "path": entry.location}


__all__ = [
    "MANIFEST", "SCHEMA_VERSION", "ModelEntry", "check_fit", "default_model_for", "describe", "find_model",
    "adapted_model_for", "get_model", "guess_sensor", "has_model", "import_checkpoint", "list_models",
    "load_adapted_network", "load_network", "register_adapted",
    "load_state_dict", "models_fitting", "origin_label", "provenance_of", "register_model", "remove_model",
    "sha256_file", "shipped_models", "shipped_root", "user_home", "user_models", "user_store", "verify_model",
]
