"""The wheel: only our namespace, models/weights inside it, and the ``pansharpen`` console script.

``models/`` and ``weights/`` sit at the top of the repository but must be installed as
``pansharpen_cli.models`` / ``pansharpen_cli.weights``: a wheel that installs a top-level
``models`` or ``weights`` package would clash with every other project that does the same.
The build runs on a copy of the source tree, so it leaves no ``build/`` or ``*.egg-info`` behind.
"""

from __future__ import annotations

import configparser
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                 ".pytest_cache", ".ruff_cache", ".hypothesis", "bench-out", "out*.tif")


def _setuptools_has_bdist_wheel() -> bool:
    """setuptools >= 70.1 builds wheels by itself; older ones need the ``wheel`` package."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        import setuptools.command.bdist_wheel  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("build") is None:
        pytest.skip("needs the 'build' package (pip install build)")
    if importlib.util.find_spec("setuptools") is None or not _setuptools_has_bdist_wheel():
        pytest.skip("needs setuptools >= 70.1, or the 'wheel' package, to build without isolation")
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=_IGNORE, symlinks=True)
    dist = base / "dist"
    # -x: the pyproject lists "wheel" as a build requirement, which modern setuptools does not need
    res = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-x", "-o", str(dist)],
                         cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


@pytest.mark.slow
def test_wheel_has_no_top_level_models_or_weights(names: list[str]) -> None:
    tops = {n.split("/", 1)[0] for n in names}
    assert "models" not in tops and "weights" not in tops, sorted(tops)
    assert not any(n.startswith(("models/", "weights/")) for n in names)


@pytest.mark.slow
def test_wheel_holds_only_our_namespace(names: list[str]) -> None:
    tops = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1, dist_info
    assert tops - dist_info == {"pansharpen_cli"}, sorted(tops)
    assert not any(n.endswith((".pyc", ".tif")) or "__pycache__" in n for n in names)


@pytest.mark.slow
def test_wheel_installs_models_and_weights_inside_the_package(names: list[str]) -> None:
    for required in ("pansharpen_cli/__init__.py", "pansharpen_cli/cli.py", "pansharpen_cli/methods/__init__.py",
                     "pansharpen_cli/models/__init__.py", "pansharpen_cli/weights/__init__.py"):
        assert required in names, required
    # every model module of the source tree is shipped
    for src in sorted((ROOT / "models").glob("*.py")):
        assert f"pansharpen_cli/models/{src.name}" in names, src.name


@pytest.mark.slow
def test_wheel_declares_console_script(wheel: Path, names: list[str]) -> None:
    ep_name = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as z:
        text = z.read(ep_name).decode()
    cp = configparser.ConfigParser()
    cp.read_string(text)
    assert cp.has_section("console_scripts"), text
    assert cp.get("console_scripts", "pansharpen").strip() == "pansharpen_cli.cli:main"
    tops_file = next((n for n in names if n.endswith(".dist-info/top_level.txt")), None)
    if tops_file:
        with zipfile.ZipFile(wheel) as z:
            assert z.read(tops_file).decode().split() == ["pansharpen_cli"]
