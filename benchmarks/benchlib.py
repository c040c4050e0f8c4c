"""Helpers shared by ``bench_model.py`` and ``bench_batch.py``: machine and version info, a measured
child process (wall, CPU, peak RSS, load average before and after), pixel checksums of rasters.

The CPU, RAM and git-HEAD probes are those of ``bench_fuse.py`` (imported from it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fuse import _cmd_output, _cpuinfo, _mem_total_gib, find_pansharpen, repo_head  # noqa: E402

__all__ = ["Measured", "cores_usable", "find_pansharpen", "fmt_load", "mem_available_gib", "machine_info",
           "pixel_sha256", "run_measured"]


def cores_usable() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def mem_available_gib() -> float:
    """``MemAvailable`` of /proc/meminfo (what can be allocated without swapping), GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - an optional package that fails to import is "absent"
        return None
    return str(getattr(mod, "__version__", "?"))


def machine_info(argv: list[str], pansharpen_cmd: str, *, extra_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    """Command line, machine (CPU model, cores, RAM), versions, git HEAD, load average now."""
    import numpy
    import rasterio

    info: dict[str, Any] = {
        "command_line": shlex.join([Path(sys.executable).name, *argv]),
        "cwd": os.getcwd(),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpuinfo(),
        "cores": os.cpu_count(),
        "cores_usable": cores_usable(),
        "ram_gib": _mem_total_gib(),
        "mem_available_gib_start": round(mem_available_gib(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "rasterio": rasterio.__version__,
        "rasterio_gdal": rasterio.__gdal_version__,
        "pansharpen": _cmd_output([pansharpen_cmd, "--version"]),
        "repo_head": repo_head(),
        "loadavg_start": os.getloadavg(),
    }
    for m in extra_modules:
        info[m] = _version(m)
    if "torch" in extra_modules and info.get("torch"):
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
    return info


@dataclass
class Measured:
    """One child process: wall seconds around it, user+sys CPU, peak RSS (``ru_maxrss`` from ``wait4``)."""

    command: str
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    returncode: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    stderr_tail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_measured(cmd: list[str], log: Path, *, stdout: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float | None = None) -> Measured:
    """Run ``cmd`` as a child; its stderr goes to ``log`` (and stdout to ``stdout`` when given).

    Peak RSS is the child's ``ru_maxrss`` (KiB on Linux), which covers the child and any of its own
    children that it waited for (e.g. a process pool), i.e. the largest single process, not a sum.
    ``timeout``: the child is killed (SIGKILL) after that many seconds and the run reported failed.
    """
    load_before = os.getloadavg()
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        with open(log, "wb") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
            if timeout is None:
                _, status, ru = os.wait4(p.pid, 0)
            else:
                while True:
                    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                    if pid:
                        break
                    if time.perf_counter() - t0 > timeout:
                        p.kill()
                        _, status, ru = os.wait4(p.pid, 0)
                        break
                    time.sleep(0.2)
            wall = time.perf_counter() - t0
    finally:
        if stdout:
            out.close()  # type: ignore[union-attr]
    p.returncode = rc = os.waitstatus_to_exitcode(status)
    tail = log.read_text(errors="replace")[-800:] if rc else ""
    return Measured(shlex.join(cmd), round(wall, 3), round(ru.ru_utime + ru.ru_stime, 3), round(ru.ru_maxrss / 1024, 1),
                    rc, load_before, os.getloadavg(), tail)


def fmt_load(load: tuple[float, ...] | list[float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def pixel_sha256(path: str | Path, rows_per_read: int = 512) -> str:
    """SHA-256 of a raster's pixel data only (dtype, shape, then all bands strip by strip).

    Two files with the same pixels hash the same whatever their metadata, tags, compression or
    tiling. Reads ``rows_per_read`` rows of all bands at a time (bounded memory).
    """
    import rasterio
    from rasterio.windows import Window

    h = hashlib.sha256()
    with rasterio.open(path) as ds:
        h.update(f"{ds.dtypes[0]} {ds.count} {ds.height} {ds.width}".encode())
        for r0 in range(0, ds.height, rows_per_read):
            n = min(rows_per_read, ds.height - r0)
            h.update(ds.read(window=Window(0, r0, ds.width, n)).tobytes())
    return h.hexdigest()
