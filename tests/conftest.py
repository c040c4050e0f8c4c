"""Test configuration.

- ``@pytest.mark.slow``: end-to-end tests; skipped by default, run with ``--runslow`` or when the
  environment variable ``CI`` is set (CI runs everything).
- ``@pytest.mark.shared``: tests that read ``../shared`` beside the repository; they skip cleanly when
  it is absent (a user's fresh clone has none).
- ``home``: a private model store (``PANSHARPEN_HOME``) in the test's ``tmp_path``.
- ``torch_threads``: torch limited to 2 threads for the test (modules with networks use it through
  ``pytestmark = pytest.mark.usefixtures("torch_threads")``; it imports torch only there).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow") or bool(os.environ.get("CI"))
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow (CI runs it)")
    skip_shared = pytest.mark.skip(reason=f"{SHARED} is absent")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "shared" in item.keywords and not SHARED.is_dir():
            item.add_marker(skip_shared)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    return SHARED


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("PANSHARPEN_HOME", str(h))
    return h


@pytest.fixture
def torch_threads():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)
