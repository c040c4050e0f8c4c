"""Benchmark ``pansharpen fuse --method wbrovey`` against GDAL's ``gdal_pansharpen`` on large scenes.

For each scene size it generates (or reuses) a real-pixel PAN/MS pair (see ``make_scenes.py``)
in a scratch folder outside the repository, then runs, interleaved, ``--repeat`` times:

- ``pansharpen``    : ``pansharpen fuse --pan P --ms M -o OUT --method wbrovey --quiet --overwrite``
                      (default output: tiled 512 GeoTIFF, DEFLATE, predictor 2, NUM_THREADS=<CPUs>);
- ``gdal``          : ``gdal_pansharpen`` with the same output options, the same thread count and the
                      same (equal) weights;
- ``gdal-defaults`` : ``gdal_pansharpen`` with its defaults (striped, uncompressed, 1 thread), for
                      reference.

Each run is a child process; wall time is measured around it and peak RSS is the child's
``ru_maxrss`` from ``wait4`` (the number ``/usr/bin/time -v`` prints as "Maximum resident set
size"). Throughput is output PAN-grid pixels per wall second. GDAL is skipped, with a note, when
its utility is not installed (``apt-get install gdal-bin python3-gdal``).

Usage::

    python benchmarks/bench_fuse.py --sizes 4096 8192            # results table on stdout
    python benchmarks/bench_fuse.py --sizes 4096 --repeat 2 --no-gdal
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_scenes import Scene, load_base_tile, make_scene  # noqa: E402

# GDAL's threads: the number of CPUs, given explicitly (it ran faster here than with ALL_CPUS,
# 6.7 s vs 7.1-7.9 s at 8192²; pansharpen's defaults use the same number)
THREADS = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
GDAL_CO = ["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "COMPRESS=DEFLATE", "PREDICTOR=2",
           f"NUM_THREADS={THREADS}"]
MS_BANDS = 4
TOOLS = ("pansharpen", "gdal", "gdal-defaults")


@dataclass
class Run:
    tool: str
    size: int
    repeat: int
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    returncode: int
    load_before: float
    mpx_per_s: float
    stderr_tail: str = ""


@dataclass
class Summary:
    tool: str
    size: int
    command: str
    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.returncode == 0]

    def best(self) -> Run | None:
        return min(self.ok, key=lambda r: r.wall_s) if self.ok else None

    def row(self) -> dict[str, Any]:
        b = self.best()
        if b is None:
            return {"tool": self.tool, "size": self.size, "failed": True, "command": self.command}
        walls = [r.wall_s for r in self.ok]
        rss = [r.peak_rss_mib for r in self.ok]
        return {"tool": self.tool, "size": self.size, "runs": len(self.ok), "best_wall_s": b.wall_s,
                "worst_wall_s": max(walls), "best_mpx_per_s": b.mpx_per_s,
                "worst_mpx_per_s": min(r.mpx_per_s for r in self.ok),
                "peak_rss_mib_max": max(rss), "peak_rss_mib_min": min(rss),
                "cpu_util": round(b.cpu_s / b.wall_s, 2),
                "load_avg": round(sum(r.load_before for r in self.ok) / len(self.ok), 2), "command": self.command}


# ---------------------------------------------------------------------------------------------
# machine and versions
# ---------------------------------------------------------------------------------------------


def _cpuinfo() -> str:
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k in ("model name", "cpu family", "model") and k not in fields:
                fields[k] = v.strip()
    except OSError:
        return platform.processor() or "unknown"
    return f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def _cmd_output(cmd: list[str], *, any_rc: bool = False) -> str | None:
    """First line the command prints (None if it fails; ``any_rc``: whatever its exit status)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text and (out.returncode == 0 or any_rc) else None


def gdal_version(gdal_cmd: str) -> str | None:
    """``gdal_pansharpen --version`` prints the version but exits 255 (GDAL 3.6)."""
    v = _cmd_output([gdal_cmd, "--version"], any_rc=True)
    return v if v and v.startswith("GDAL") else None


def repo_head() -> str | None:
    """The commit the repository's HEAD points at, read from .git (no git command is run)."""
    git = Path(__file__).resolve().parents[1] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        pass
    return None


def machine_info(gdal_cmd: str | None, pansharpen_cmd: str) -> dict[str, Any]:
    import numpy
    import rasterio
    import scipy

    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpuinfo(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "rasterio": rasterio.__version__,
        "rasterio_gdal": rasterio.__gdal_version__,
        "pansharpen": _cmd_output([pansharpen_cmd, "--version"]),
        "repo_head": repo_head(),
        "gdal_pansharpen": gdal_cmd,
        "system_gdal": gdal_version(gdal_cmd) if gdal_cmd else None,
        "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------------
# running one command
# ---------------------------------------------------------------------------------------------


def run_measured(cmd: list[str], log: Path) -> tuple[float, float, float, int, str]:
    """Run ``cmd``; -> (wall s, user+sys CPU s, peak RSS MiB, return code, stderr tail)."""
    with open(log, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    tail = log.read_text(errors="replace")[-600:]
    # ru_maxrss is in KiB on Linux
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, p.returncode, tail


def find_gdal_pansharpen() -> str | None:
    for name in ("gdal_pansharpen", "gdal_pansharpen.py"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if path and gdal_version(path):
            return path
    return None


def find_pansharpen() -> str:
    local = Path(sys.executable).parent / "pansharpen"
    return str(local) if local.is_file() else (shutil.which("pansharpen") or "pansharpen")


def commands(scene: Scene, out_dir: Path, pansharpen_cmd: str, gdal_cmd: str | None) -> dict[str, list[str]]:
    n = scene.size
    cmds = {"pansharpen": [pansharpen_cmd, "fuse", "--pan", str(scene.pan), "--ms", str(scene.ms), "-o",
                           str(out_dir / f"out_{n}_pansharpen.tif"), "--method", "wbrovey", "--quiet",
                           "--overwrite"]}
    if gdal_cmd:
        weights = [a for _ in range(MS_BANDS) for a in ("-w", str(1 / MS_BANDS))]
        cmds["gdal"] = [gdal_cmd, str(scene.pan), str(scene.ms), str(out_dir / f"out_{n}_gdal.tif"), *weights,
                        "-r", "cubic", "-threads", THREADS, *[a for co in GDAL_CO for a in ("-co", co)], "-q"]
        cmds["gdal-defaults"] = [gdal_cmd, str(scene.pan), str(scene.ms), str(out_dir / f"out_{n}_gdal-defaults.tif"),
                                 "-q"]
    return cmds


def compare_outputs(a: Path, b: Path, size: int) -> dict[str, float] | None:
    """Agreement of two outputs on a central 1024 x 1024 window (both use Keys cubic on the MS)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    if not (a.is_file() and b.is_file()):
        return None
    w = min(1024, size)
    win = Window((size - w) // 2, (size - w) // 2, w, w)
    with rasterio.open(a) as da, rasterio.open(b) as db:
        x = da.read(window=win).astype(np.float64)
        y = db.read(window=win).astype(np.float64)
    rel = np.abs(x - y).mean() / max(float(np.abs(y).mean()), 1e-9)
    corr = min(float(np.corrcoef(x[i].ravel(), y[i].ravel())[0, 1]) for i in range(x.shape[0]))
    return {"mean_abs_rel_diff": round(float(rel), 5), "min_band_corr": round(corr, 5)}


# ---------------------------------------------------------------------------------------------
# startup overhead
# ---------------------------------------------------------------------------------------------


def byte_compile() -> str:
    """Byte-compile the installed ``pansharpen_cli`` package, as ``pip install`` does for a regular
    (non-editable) install. An editable install compiles on first import, unless
    ``PYTHONDONTWRITEBYTECODE`` is set (as on the development machine): then every run would
    compile the package's sources again (~45 ms), a cost no installed tool pays."""
    import pansharpen_cli

    pkg = Path(pansharpen_cli.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(pkg)], check=True, stdout=subprocess.DEVNULL)
    return str(pkg)


def startup_overhead(pansharpen_cmd: str, repeat: int, scene: Scene | None = None) -> dict[str, float]:
    """Best wall seconds of: ``pansharpen --version`` (CLI only), importing the fuse pipeline, and
    ``fuse --dry-run`` on ``scene`` (start-up, parsing and planning: the fixed cost of a run)."""
    py = sys.executable
    probes = {"pansharpen --version": [pansharpen_cmd, "--version"],
              "python -c 'import pansharpen_cli.pipeline'": [py, "-c", "import pansharpen_cli.pipeline"],
              "python -c 'import rasterio'": [py, "-c", "import rasterio"],
              "python -c 'import scipy.signal'": [py, "-c", "import scipy.signal"]}
    if scene is not None:
        probes[f"pansharpen fuse --dry-run ({scene.size}²)"] = [
            pansharpen_cmd, "fuse", "--pan", str(scene.pan), "--ms", str(scene.ms),
            "-o", str(scene.pan.parent / "dry_run.tif"), "--method", "wbrovey", "--quiet", "--overwrite", "--dry-run"]
    out: dict[str, float] = {}
    for name, cmd in probes.items():
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            best = min(best, time.perf_counter() - t0)
        out[name] = round(best, 3)
    return out


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def markdown(info: dict[str, Any], rows: list[dict[str, Any]], startup: dict[str, float],
             agreement: dict[int, Any]) -> str:
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, Linux {info['kernel']}; "
        f"date {info['date_utc']}; load average at start {', '.join(f'{x:.2f}' for x in info['loadavg_start'])}.",
        f"Versions: {info['pansharpen']} (HEAD {info.get('repo_head')}; the working tree may differ), "
        f"Python {info['python']}, numpy {info['numpy']}, "
        f"scipy {info['scipy']}, rasterio {info['rasterio']} (GDAL {info['rasterio_gdal']}); "
        f"gdal_pansharpen: {info['system_gdal'] or 'not installed'}.",
        "",
        "| scene (PAN px) | tool | Mpx/s best (worst) | wall s best (worst) | peak RSS MiB | CPU util | runs "
        "| load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['size']}² | {r['tool']} | failed | | | | | |")
            continue
        rss = (f"{r['peak_rss_mib_max']:.0f}" if r["peak_rss_mib_max"] - r["peak_rss_mib_min"] < 1
               else f"{r['peak_rss_mib_min']:.0f}-{r['peak_rss_mib_max']:.0f}")
        lines.append(f"| {r['size']}² | {r['tool']} | {r['best_mpx_per_s']:.2f} ({r['worst_mpx_per_s']:.2f}) | "
                     f"{r['best_wall_s']:.2f} ({r['worst_wall_s']:.2f}) | {rss} | {r['cpu_util']:.2f} | "
                     f"{r['runs']} | {r.get('load_avg', float('nan')):.1f} |")
    lines += ["", "Commands (N = scene size):", ""]
    seen: set[str] = set()
    for r in rows:
        if r["tool"] not in seen:
            seen.add(r["tool"])
            cmd = r["command"].replace(f"_{r['size']}.", "_{N}.").replace(f"_{r['size']}_", "_{N}_")
            lines.append(f"- `{r['tool']}`: `{cmd}`")
    if agreement:
        lines += ["", "Output agreement, pansharpen vs gdal (central 1024² window; both interpolate the MS "
                  "with Keys cubic): " + "; ".join(f"{n}²: {v}" for n, v in agreement.items())]
    if startup:
        lines += ["", "Startup: " + "; ".join(f"`{k}` {v:.2f} s" for k, v in startup.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="PAN sizes (square), pixels")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/psbench"),
                    help="scenes and outputs go here (outside the repo; never commit them)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool and size (best and worst are reported)")
    ap.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    ap.add_argument("--no-gdal", action="store_true", help="do not run gdal_pansharpen even if installed")
    ap.add_argument("--json", type=Path, default=None, help="write all runs as JSON here "
                    "(default: SCRATCH/bench_fuse.json)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the markdown report here")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the fused outputs in SCRATCH")
    args = ap.parse_args(argv)

    scratch: Path = args.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    ps_cmd = find_pansharpen()
    gdal_cmd = None if args.no_gdal else find_gdal_pansharpen()
    if gdal_cmd is None and not args.no_gdal:
        print("note: gdal_pansharpen not found (apt-get install gdal-bin python3-gdal): GDAL runs skipped",
              file=sys.stderr)
    info = machine_info(gdal_cmd, ps_cmd)
    info["byte_compiled"] = byte_compile()
    print(json.dumps(info, default=str), file=sys.stderr)

    base = None
    summaries: list[Summary] = []
    agreement: dict[int, Any] = {}
    first_scene: Scene | None = None
    for n in args.sizes:
        scene_paths = (scratch / f"pan_{n}.tif", scratch / f"ms_{n}.tif")
        if not all(p.is_file() for p in scene_paths):
            base = base or load_base_tile()
        scene = make_scene(n, scratch, base)
        first_scene = first_scene or scene
        cmds = {k: v for k, v in commands(scene, scratch, ps_cmd, gdal_cmd).items() if k in args.tools}
        sums = {k: Summary(k, n, shlex.join(v)) for k, v in cmds.items()}
        for rep in range(args.repeat):
            for tool, cmd in cmds.items():  # interleaved, so that load changes hit every tool alike
                out = Path(cmd[cmd.index("-o") + 1] if "-o" in cmd else cmd[3])
                out.unlink(missing_ok=True)
                load = os.getloadavg()[0]
                wall, cpu, rss, rc, tail = run_measured(cmd, scratch / f"{tool}_{n}.log")
                run = Run(tool, n, rep, round(wall, 3), round(cpu, 3), round(rss, 1), rc, load,
                          round(n * n / 1e6 / wall, 3), tail if rc else "")
                sums[tool].runs.append(run)
                print(f"{n}² {tool:<14} run {rep + 1}: {wall:7.2f} s  {run.mpx_per_s:7.2f} Mpx/s  "
                      f"peak RSS {rss:7.1f} MiB  cpu {cpu / wall:4.2f}  load {load:.2f}"
                      + (f"  FAILED rc={rc}: {tail.strip()[-200:]}" if rc else ""), file=sys.stderr, flush=True)
        if "pansharpen" in cmds and "gdal" in cmds:
            agreement[n] = compare_outputs(scratch / f"out_{n}_pansharpen.tif", scratch / f"out_{n}_gdal.tif", n)
        if not args.keep_outputs:
            for tool in cmds:
                (scratch / f"out_{n}_{tool}.tif").unlink(missing_ok=True)
        summaries += sums.values()

    startup = startup_overhead(ps_cmd, args.repeat, first_scene)
    rows = [s.row() for s in summaries]
    info["loadavg_end"] = os.getloadavg()
    report = markdown(info, rows, startup, agreement)
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    json_path = args.json or scratch / "bench_fuse.json"
    json_path.write_text(json.dumps({"machine": info, "summary": rows, "startup_s": startup,
                                     "agreement": {str(k): v for k, v in agreement.items()},
                                     "runs": [asdict(r) for s in summaries for r in s.runs]}, indent=2,
                                    default=str))
    print(f"\nall runs: {json_path}", file=sys.stderr)
    _check_goals(rows)
    return 0


def _check_goals(rows: list[dict[str, Any]]) -> None:
    ours = {r["size"]: r for r in rows if r["tool"] == "pansharpen" and not r.get("failed")}
    gdal = {r["size"]: r for r in rows if r["tool"] == "gdal" and not r.get("failed")}
    for n, r in sorted(ours.items()):
        msg = f"goal check {n}²: peak RSS {r['peak_rss_mib_max']:.0f} MiB " \
              f"({'under' if r['peak_rss_mib_max'] < 1024 else 'OVER'} 1 GiB)"
        if n in gdal:
            ratio = r["best_mpx_per_s"] / gdal[n]["best_mpx_per_s"]
            msg += f"; throughput {ratio:.2f}x GDAL's ({'met' if ratio >= 1 else 'MISSED'})"
        print(msg, file=sys.stderr)
    if len(ours) >= 2:
        lo, hi = min(ours), max(ours)
        growth = ours[hi]["peak_rss_mib_max"] / ours[lo]["peak_rss_mib_max"]
        print(f"goal check: peak RSS {hi}² / {lo}² = {growth:.2f}x for {(hi / lo) ** 2:.0f}x the pixels",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
