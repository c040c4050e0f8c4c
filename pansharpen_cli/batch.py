"""Batch pansharpening: many scenes, one command, a journal to resume from.

Library side of ``pansharpen batch`` (no typer, no rich). The pieces:

* :func:`plan_batch` turns the inputs (CSV/JSON-lines manifests, product paths or globs) into a list
  of :class:`Scene` objects with absolute paths and unique outputs; problems that make the command
  line unsatisfiable (bad manifest, duplicate outputs, unknown method/sensor, outputs that exist
  without ``--resume``/``--skip-existing``/``--overwrite``) raise :class:`~.errors.UsageError`
  before anything runs. A scene that merely fails to resolve (a product whose partner file is
  missing) is a *per-scene* failure instead.
* :func:`run_scene` is the per-scene task: a top-level, picklable function taking and returning
  plain dicts, which never raises for data errors (it returns ``status: failed`` and the one-line
  message). The same function runs inline (``--jobs 1``), in a ``ProcessPoolExecutor`` of spawned
  workers (``--jobs N``) or on a Dask ``distributed`` cluster (``--scheduler ADDRESS``).
* :func:`run_batch` coordinates: it writes the journal (``OUTDIR/batch-journal.jsonl``: an
  append-only, fsync'd JSON line per event, written only by the coordinating process, so workers
  need no shared file locks), keeps at most ``jobs`` scenes in flight, stops starting new scenes
  after the first failure unless ``continue_on_error``, and writes ``OUTDIR/batch-report.json``.

Outputs are published only when complete: the pipeline writes to a hidden temporary file beside
the destination and renames it at the end, so a killed batch leaves at most a stale
``.NAME.<pid>.partial.tif``, which the next run over that scene removes; a ``done`` journal line is
trusted on ``--resume`` only when the output is present and its SHA-256 matches the one recorded.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .errors import Cancelled, InputNotFoundError, PansharpenError, UsageError
from .runtime import THREAD_ENV_VARS

JOURNAL_NAME = "batch-journal.jsonl"
REPORT_NAME = "batch-report.json"
LOCK_NAME = ".batch.lock"
REPORT_SCHEMA = "pansharpen-batch-report/1"
JOURNAL_SCHEMA = 1
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
MANIFEST_COLUMNS = ("id", "pan", "ms", "scene", "out", "sensor", "model", "method", "adapt")
DEFAULT_SUFFIX = "_pansharpened.tif"
_GLOB_CHARS = frozenset("*?[")
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off", "none"})


# ----------------------------------------------------------------------------------------------
# configuration and plan
# ----------------------------------------------------------------------------------------------


@dataclass
class FuseOptions:
    """The ``fuse`` options applied to every scene (manifest columns override method/model/sensor)."""

    method: str | None = None
    model: str | None = None
    sensor: str | None = None
    tile: int = 512
    overlap: int | None = None
    extent: str = "intersection"
    bit_depth: int | None = None
    nodata: float | None = None
    dtype: str | None = None
    fmt: str = "GTiff"
    creation_options: dict[str, str] = field(default_factory=dict)
    overwrite: bool = False
    bands: str | None = None
    ratio: float | None = None
    #: test-time adaptation of the scene's network (``tailor``, ``swift``, ``full``), once per scene
    adapt: str | None = None


@dataclass
class BatchConfig:
    """What ``pansharpen batch`` was asked to do."""

    inputs: Sequence[str | Path]
    outdir: str | Path
    options: FuseOptions = field(default_factory=FuseOptions)
    #: local worker processes; with ``scheduler``: scenes in flight (default: the cluster's threads)
    jobs: int | None = None
    scheduler: str | None = None
    resume: bool = False
    skip_existing: bool = False
    continue_on_error: bool = False


@dataclass
class Scene:
    """One planned scene: absolute paths, its output and its per-scene settings."""

    id: str
    out: Path
    origin: str  # where it came from, for messages: "list.csv line 3", "data/scene1"
    pan: Path | None = None
    ms: tuple[Path, ...] = ()
    sensor: str | None = None
    method: str | None = None
    model: str | None = None
    #: adaptation mode; None: inherit ``FuseOptions.adapt``; "": the manifest said no adaptation
    adapt: str | None = None
    band_names: tuple[str, ...] | None = None
    product_nodata: float | None = None
    source: str | None = None
    #: set when the scene could not be resolved: it fails without running
    error: str | None = None

    def fingerprint(self, opts: FuseOptions) -> str:
        """A hash of everything that determines the output's bytes (not ``overwrite``, not threads)."""
        d = {"pan": str(self.pan), "ms": [str(p) for p in self.ms], "out": str(self.out), "sensor": self.sensor,
             "method": self.method, "model": self.model, "adapt": self.adapt or None,
             "band_names": self.band_names, "product_nodata": self.product_nodata, "tile": opts.tile,
             "overlap": opts.overlap,
             "extent": opts.extent, "bit_depth": opts.bit_depth, "nodata": opts.nodata, "dtype": opts.dtype,
             "fmt": opts.fmt, "co": sorted(opts.creation_options.items()), "ratio": opts.ratio}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class BatchPlan:
    outdir: Path
    scenes: list[Scene]
    notices: list[str] = field(default_factory=list)


def _abspath(p: str | Path, base: Path | None = None) -> Path:
    q = Path(p).expanduser()
    if not q.is_absolute() and base is not None:
        q = base / q
    return Path(os.path.normpath(os.path.abspath(q)))


def _scene_stem(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _is_manifest(path: Path) -> bool:
    return path.suffix.lower() in MANIFEST_SUFFIXES


def _expand(item: str | Path) -> list[Path]:
    s = str(item)
    if _GLOB_CHARS & set(s):
        hits = sorted(glob.glob(os.path.expanduser(s), recursive=True))
        if not hits:
            raise InputNotFoundError(f"no file or folder matches '{s}'", fix="check the pattern (quote it so that "
                                     "the shell does not expand it)")
        return [Path(h) for h in hits]
    p = Path(s).expanduser()
    if not p.exists():
        raise InputNotFoundError("no such file or folder", path=p,
                                 fix="give a manifest (.csv/.jsonl), product paths or globs")
    return [p]


@dataclass
class _Row:
    """A manifest row, paths still as written."""

    where: str
    base: Path
    values: dict[str, Any]


def _clean(v: Any) -> Any:
    if isinstance(v, str):
        v = v.strip()
        return v or None
    return v


def _read_csv(path: Path) -> Iterator[_Row]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        for cells in reader:
            if not cells or all(not c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip().lower() for c in cells]
                _check_columns(header, path)
                continue
            where = f"{path.name} line {reader.line_num}"
            if len(cells) > len(header):
                raise UsageError(f"{where}: {len(cells)} values for {len(header)} columns", path=path,
                                 fix="quote values that contain commas")
            yield _Row(where, path.parent, {k: _clean(v) for k, v in zip(header, cells, strict=False)})
    if header is None:
        raise UsageError("the manifest is empty", path=path, fix="the first line names the columns, e.g. pan,ms,out")


def _read_jsonl(path: Path) -> Iterator[_Row]:
    n = 0
    with path.open(encoding="utf-8-sig") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {i}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{where}: invalid JSON ({e.msg})", path=path,
                                 fix='one object per line, e.g. {"pan": "p.tif", "ms": "m.tif"}') from None
            if not isinstance(d, dict):
                raise UsageError(f"{where}: not a JSON object", path=path,
                                 fix='one object per line, e.g. {"pan": "p.tif", "ms": "m.tif"}')
            keys = [str(k).strip().lower() for k in d]
            _check_columns(keys, path, where)
            n += 1
            yield _Row(where, path.parent, {str(k).strip().lower(): _clean(v) for k, v in d.items()})
    if n == 0:
        raise UsageError("the manifest is empty", path=path, fix='one object per line, e.g. {"pan": "p.tif", ...}')


def _check_columns(cols: list[str], path: Path, where: str | None = None) -> None:
    unknown = [c for c in cols if c not in MANIFEST_COLUMNS]
    prefix = f"{where}: " if where else ""
    if unknown:
        raise UsageError(f"{prefix}unknown manifest column(s): {', '.join(unknown)}", path=path,
                         fix="allowed: " + ", ".join(MANIFEST_COLUMNS))
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        raise UsageError(f"{prefix}column(s) given twice: {', '.join(dup)}", path=path)
    if where is None and "scene" not in cols and not {"pan", "ms"} <= set(cols):
        raise UsageError("the manifest needs columns pan and ms, or scene", path=path,
                         fix="first line e.g. pan,ms,out")


def _text(row: _Row, key: str, path: Path) -> str | None:
    v = row.values.get(key)
    if v is None or isinstance(v, str):
        return v
    raise UsageError(f"{row.where}: '{key}' must be text", path=path)


#: the adaptation modes of :mod:`pansharpen_cli.adapt` (kept here: that module imports torch)
ADAPT_MODES = ("tailor", "swift", "full")
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def adapt_mode(value: object, *, where: str = "--adapt", path: Path | None = None) -> str:
    """An ``adapt`` value as a mode: ``""`` for none (empty, no, false, 0, off, none), ``tailor``
    for yes/true/1/on, else one of :data:`ADAPT_MODES`; anything else is a :class:`UsageError`."""
    if value is None or value is False:
        return ""
    if value is True:
        return "tailor"
    v = str(value).strip().lower()
    if v in _FALSE_WORDS:
        return ""
    if v in _TRUE_WORDS:
        return "tailor"
    if v in ADAPT_MODES:
        return v
    raise UsageError(f"{where}: unknown adaptation {value!r}", path=path,
                     fix="use " + ", ".join(ADAPT_MODES) + " (yes means tailor), or leave it empty")


def _adapt_value(row: _Row, path: Path) -> str | None:
    """The ``adapt`` column: None when the cell is empty (the scene inherits ``--adapt``), ``""``
    for an explicit no, else the mode."""
    v = row.values.get("adapt")
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    return adapt_mode(v, where=f"{row.where}: 'adapt'", path=path)


def _scene_from_row(row: _Row, path: Path, outdir: Path, opts: FuseOptions) -> Scene:
    pan, ms_raw, scene_s = _text(row, "pan", path), row.values.get("ms"), _text(row, "scene", path)
    if isinstance(ms_raw, list):
        if not all(isinstance(x, str) for x in ms_raw):
            raise UsageError(f"{row.where}: 'ms' must be a path or a list of paths", path=path)
        ms_items = [x.strip() for x in ms_raw if x.strip()]
    elif ms_raw is None or isinstance(ms_raw, str):
        ms_items = [x.strip() for x in (ms_raw or "").split(";") if x.strip()]
    else:
        raise UsageError(f"{row.where}: 'ms' must be a path or a list of paths", path=path)
    if scene_s and (pan or ms_items):
        raise UsageError(f"{row.where}: give either scene or pan and ms, not both", path=path)
    if not scene_s and not (pan and ms_items):
        missing = "pan" if not pan else "ms"
        raise UsageError(f"{row.where}: '{missing}' is empty", path=path,
                         fix="each row needs pan and ms (MS files separated by ';'), or scene")
    method, model = _text(row, "method", path), _text(row, "model", path)
    if method and model:
        raise UsageError(f"{row.where}: 'method' and 'model' are mutually exclusive", path=path)
    adapt = _adapt_value(row, path)
    sensor = _text(row, "sensor", path)
    if sensor:
        from .sensors import get_sensor

        try:
            sensor = get_sensor(sensor).key
        except UsageError as e:
            raise UsageError(f"{row.where}: {e.problem}", path=path, fix=e.fix) from None
    sc = Scene(id="", out=Path(), origin=row.where, sensor=sensor, method=method, model=model, adapt=adapt)
    if scene_s:
        _resolve_into(sc, _abspath(scene_s, row.base), opts)
        stem = _scene_stem(_abspath(scene_s, row.base))
    else:
        sc.pan = _abspath(pan or "", row.base)
        sc.ms = tuple(_abspath(m, row.base) for m in ms_items)
        stem = sc.pan.stem
    out = _text(row, "out", path)
    sc.out = _abspath(out or stem + DEFAULT_SUFFIX, outdir)
    sc.id = _text(row, "id", path) or _default_id(sc.out, outdir)
    return sc


def _default_id(out: Path, outdir: Path) -> str:
    try:
        return out.relative_to(outdir).as_posix()
    except ValueError:
        return str(out)


def _resolve_into(sc: Scene, path: Path, opts: FuseOptions) -> None:
    """Fill the scene's inputs as ``fuse SCENE`` would; a failure becomes the scene's error."""
    from .products import resolve_scene

    try:
        p = resolve_scene(path, bands=opts.bands)
    except PansharpenError as e:
        sc.error = e.one_line()
        return
    sc.pan, sc.ms = p.pan, tuple(p.ms)
    sc.band_names, sc.source, sc.product_nodata = p.band_names, p.source, p.nodata
    sc.sensor = sc.sensor or opts.sensor or p.sensor


def _check_options(opts: FuseOptions) -> None:
    from .raster import check_dtype

    if opts.tile < 16:
        raise UsageError(f"--tile {opts.tile} is too small", fix="use at least 16 (default 512)")
    if opts.overlap is not None and opts.overlap < 0:
        raise UsageError("--overlap must be >= 0")
    if opts.extent not in ("intersection", "union", "pan"):
        raise UsageError(f"unknown --extent '{opts.extent}'", fix="use intersection, union or pan")
    if opts.bit_depth is not None and not 1 <= opts.bit_depth <= 32:
        raise UsageError(f"--bit-depth {opts.bit_depth} is out of range", fix="use 1-32, e.g. 11 for WorldView")
    if opts.dtype:
        check_dtype(opts.dtype)
    if opts.fmt.upper() not in ("GTIFF", "COG"):
        raise UsageError(f"unknown output format '{opts.fmt}'", fix="use --of GTiff or --of COG")
    if opts.method and opts.model:
        raise UsageError("--model and --method are mutually exclusive",
                         fix="use --method for a classical method or --model for a deep network")
    if opts.sensor:
        from .sensors import get_sensor

        opts.sensor = get_sensor(opts.sensor).key


def _check_method_names(scenes: list[Scene]) -> None:
    from . import zoo
    from .errors import ModelError
    from .methods import HIDDEN, METHODS

    known = {**METHODS, **HIDDEN}
    for sc in scenes:
        if sc.model and not zoo.has_model(sc.model):
            try:
                zoo.get_model(sc.model)
            except ModelError as e:  # a name that cannot work is a usage error here: nothing has run
                raise UsageError(f"{sc.origin}: {e.problem}", fix=e.fix) from None
        if sc.method and sc.method.strip().lower() not in known and not zoo.has_model(sc.method):
            raise UsageError(f"{sc.origin}: unknown method '{sc.method}'",
                             fix="choose one of: " + ", ".join(sorted(METHODS)) + ", or a model with --model")


def plan_batch(config: BatchConfig) -> BatchPlan:
    """Resolve the inputs into scenes; :class:`UsageError` for anything that must stop the batch."""
    opts = config.options
    _check_options(opts)
    if config.jobs is not None and config.jobs < 1:
        raise UsageError(f"--jobs {config.jobs} must be at least 1")
    if not config.inputs:
        raise UsageError("no input given", fix="pass a manifest (.csv/.jsonl), product paths or globs")
    outdir = _abspath(config.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UsageError("the output folder is a file", path=outdir, fix="give a folder with -o")
    scenes: list[Scene] = []
    notices: list[str] = []
    seen_pairs: dict[tuple[str, ...], str] = {}
    for item in config.inputs:
        for path in _expand(item):
            if _is_manifest(path) and path.is_file():
                rows = _read_jsonl(path) if path.suffix.lower() in (".jsonl", ".ndjson") else _read_csv(path)
                scenes += [_scene_from_row(r, path, outdir, opts) for r in rows]
                continue
            ap = _abspath(path)
            sc = Scene(id="", out=_abspath(_scene_stem(ap) + DEFAULT_SUFFIX, outdir), origin=str(path))
            _resolve_into(sc, ap, opts)
            sc.id = _default_id(sc.out, outdir)
            if sc.pan is not None:
                # a glob that matches both files of a product (PAN and MS) reaches the pair twice
                key = (str(sc.pan), *map(str, sc.ms))
                if key in seen_pairs:
                    notices.append(f"{path} is the same scene as {seen_pairs[key]}: fused once")
                    continue
                seen_pairs[key] = str(path)
            scenes.append(sc)
    if not scenes:
        raise UsageError("the inputs list no scene", fix="check the manifest rows")
    for sc in scenes:
        sc.sensor = sc.sensor or opts.sensor
        if not sc.method and not sc.model:
            sc.method, sc.model = opts.method, opts.model
        if sc.adapt is None:
            sc.adapt = adapt_mode(opts.adapt)
    by_out: dict[str, Scene] = {}
    by_id: dict[str, Scene] = {}
    for sc in scenes:
        k = os.path.normcase(str(sc.out))
        if k in by_out:
            raise UsageError(f"duplicate output {sc.out}: written by both {by_out[k].origin} and {sc.origin}",
                             fix="give each scene its own 'out'")
        by_out[k] = sc
        if sc.id in by_id:
            raise UsageError(f"duplicate scene id '{sc.id}': {by_id[sc.id].origin} and {sc.origin}",
                             fix="give each scene its own 'id'")
        by_id[sc.id] = sc
        if sc.out.name in (JOURNAL_NAME, REPORT_NAME, LOCK_NAME):
            raise UsageError(f"{sc.origin}: output name {sc.out.name} is reserved for the batch files")
    _check_method_names(scenes)
    return BatchPlan(outdir=outdir, scenes=scenes, notices=notices)


# ----------------------------------------------------------------------------------------------
# the per-scene task (runs in workers)
# ----------------------------------------------------------------------------------------------


def scene_task(sc: Scene, opts: FuseOptions, *, overwrite: bool, threads: int | None) -> dict[str, Any]:
    """The picklable, JSON-able description of one scene that :func:`run_scene` executes."""
    return {
        "id": sc.id, "pan": str(sc.pan), "ms": [str(p) for p in sc.ms], "out": str(sc.out),
        "method": sc.method, "model": sc.model, "adapt": sc.adapt or None, "sensor": sc.sensor,
        "band_names": list(sc.band_names) if sc.band_names else None, "product_nodata": sc.product_nodata,
        "source": sc.source, "tile": opts.tile, "overlap": opts.overlap, "extent": opts.extent,
        "bit_depth": opts.bit_depth, "nodata": opts.nodata, "dtype": opts.dtype, "fmt": opts.fmt,
        "creation_options": dict(opts.creation_options), "ratio": opts.ratio, "overwrite": overwrite,
        "threads": threads,
    }


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _limit_threads(threads: int) -> None:
    """Cap this process's thread pools (env for libraries not loaded yet; GDAL and torch directly)."""
    from .runtime import set_threads

    set_threads(threads)


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when the batch process dies, so no orphan publishes late."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def _init_worker(threads: int) -> None:
    """ProcessPoolExecutor initializer: runs in a fresh (spawned) worker before numpy/torch load."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    _die_with_parent()


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def run_scene(task: dict[str, Any], *, progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Fuse one scene described by ``task`` (see :func:`scene_task`); never raises for data errors.

    Returns ``{"id", "status": "ok"|"failed", "output", "seconds", "mpx_per_s", "megapixels",
    "sha256", "error", "notices", "host", "pid"}``. ``KeyboardInterrupt`` propagates (the
    pipeline removes its temporary file first).
    """
    import socket

    t0 = time.perf_counter()
    notices: list[str] = []
    res: dict[str, Any] = {"id": task["id"], "status": "failed", "output": task["out"], "seconds": None,
                           "mpx_per_s": None, "megapixels": None, "sha256": None, "error": None,
                           "notices": notices, "host": socket.gethostname(), "pid": os.getpid()}
    try:
        threads = task.get("threads")
        if threads:
            _limit_threads(int(threads))
        from .pipeline import FuseRequest, default_choice_for, fuse

        out = Path(task["out"])
        req = FuseRequest(pan=task["pan"], ms=list(task["ms"]), out=out, method="wbrovey", sensor=task.get("sensor"),
                          band_names=task.get("band_names"), tile=task["tile"], overlap=task.get("overlap"),
                          extent=task["extent"], bit_depth=task.get("bit_depth"), nodata=task.get("nodata"),
                          dtype=task.get("dtype"), fmt=task["fmt"], creation_options=dict(task["creation_options"]),
                          overwrite=bool(task.get("overwrite")), ratio=task.get("ratio"),
                          product_nodata=task.get("product_nodata"), source=task.get("source"))
        method_name, model = task.get("method"), task.get("model")
        if not method_name and not model:  # as `fuse` does: the scene's default model, else bdsd-pc
            choice = default_choice_for(req)
            notices.append(choice.notice())
            res["method_choice"] = choice.to_dict()
            method_name, model = (None, choice.name) if choice.kind == "model" else (choice.name, None)
        adapt = task.get("adapt") or None
        if model:
            from . import zoo
            from .methods.network import NetworkMethod

            req.method = NetworkMethod(zoo.get_model(model), threads=threads, notify=notices.append, adapt=adapt)
        elif adapt:
            raise UsageError(f"adapt '{adapt}' applies to deep models, and this scene's method is '{method_name}'",
                             fix="give the scene a model (--model or the model column), or clear its adapt")
        else:
            req.method = method_name
        out.parent.mkdir(parents=True, exist_ok=True)
        summary = fuse(req, progress=progress, notice=notices.append)
        report = getattr(req.method, "adapt_report", None)
        if report is not None:  # what the adaptation did (`fuse --json`'s "adaptation", abridged)
            keep = ("mode", "used_adapted", "reason", "seconds", "patches", "before", "after")
            res["adaptation"] = {k: report.get(k) for k in keep if k in report}
        res.update(status="ok", mpx_per_s=summary.get("mpx_per_s"), megapixels=summary.get("megapixels"),
                   sha256=sha256_file(out))
    except PansharpenError as e:
        res["error"] = _one_line(e.one_line())
    except MemoryError:
        res["error"] = "out of memory - use a smaller --tile or fewer --jobs"
    except Exception as e:  # a bug or an unexpected library error: this scene fails, the batch goes on
        res["error"] = _one_line(f"internal error: {type(e).__name__}: {e}")
        if os.environ.get("PANSHARPEN_DEBUG"):
            import traceback

            res["traceback"] = traceback.format_exc()
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


def _failed(task_id: str, out: str | Path, message: str, seconds: float | None = None) -> dict[str, Any]:
    return {"id": task_id, "status": "failed", "output": str(out), "seconds": seconds, "mpx_per_s": None,
            "megapixels": None, "sha256": None, "error": _one_line(message), "notices": []}


# ----------------------------------------------------------------------------------------------
# runners: inline, local processes, Dask
# ----------------------------------------------------------------------------------------------


class _InlineHandle:
    def __init__(self, task: dict[str, Any]):
        self.task = task
        self.result: dict[str, Any] = {}


class _InlineRunner:
    """``--jobs 1``: scenes run in this process, one at a time (with a per-tile progress callback)."""

    def __init__(self, scene_progress: Callable[[], tuple[Any, Any]] | None):
        self.slots = 1
        self._scene_progress = scene_progress

    def submit(self, task: dict[str, Any]) -> Any:
        return _InlineHandle(task)

    def wait(self, handles: list[Any]) -> list[Any]:
        h = handles[0]
        cb, close = self._scene_progress() if self._scene_progress else (None, None)
        try:
            h.result = run_scene(h.task, progress=cb)
        finally:
            if close:
                close()
        return [h]

    def result(self, handle: Any) -> dict[str, Any]:
        return handle.result

    def close(self, cancel: bool) -> None:
        pass


class _PoolRunner:
    """``--jobs N``: spawned worker processes, each capped at ``cores // N`` threads."""

    def __init__(self, jobs: int, threads: int):
        self.slots = jobs
        self.threads = threads
        self._ex: Any = None
        self._broken = False
        self._start()

    def _start(self) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self._ex = ProcessPoolExecutor(max_workers=self.slots, mp_context=mp.get_context("spawn"),
                                       initializer=_init_worker, initargs=(self.threads,))
        self._broken = False

    def submit(self, task: dict[str, Any]) -> Any:
        if self._broken:  # a worker died (OOM killer...): the pool is unusable, start a new one
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._start()
        return self._ex.submit(run_scene, task)

    def wait(self, handles: list[Any]) -> list[Any]:
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def result(self, handle: Any) -> dict[str, Any]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return handle.result()
        except BrokenProcessPool:
            self._broken = True
            raise _WorkerLost("a worker process died (killed, or out of memory)") from None

    def close(self, cancel: bool) -> None:
        self._ex.shutdown(wait=True, cancel_futures=cancel)


class _WorkerLost(Exception):
    pass


class _DaskRunner:
    """``--scheduler ADDRESS``: the same task function on an existing Dask distributed cluster."""

    def __init__(self, address: str, jobs: int | None):
        try:
            import distributed
        except ImportError:
            raise UsageError("--scheduler needs Dask distributed, which is not installed",
                             fix='pip install "pansharpen[dask]"') from None
        self._distributed = distributed
        try:
            # connect timeout: Dask's distributed.comm.timeouts.connect (30 s unless configured)
            self._client = distributed.Client(address, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            raise UsageError(f"cannot connect to the Dask scheduler at {address}: {_one_line(str(e))}",
                             fix="check --scheduler tcp://HOST:PORT and that the scheduler is running") from None
        n = sum(self._client.nthreads().values())
        if n == 0:
            try:
                self._client.wait_for_workers(1, timeout=30)
            except TimeoutError:
                self._client.close()
                raise UsageError(f"the Dask scheduler at {address} has no workers",
                                 fix="start workers: dask worker " + address) from None
            n = sum(self._client.nthreads().values())
        self.slots = jobs or max(1, n)
        self.threads = self._threads_per_task()
        self._done = distributed.as_completed(loop=self._client.loop)

    def _threads_per_task(self) -> int | None:
        """Compute threads for each scene so that a host's CPUs are shared by the tasks it can run at
        once (its workers' threads) instead of every task's GDAL/torch using all of them."""
        try:
            workers = self._client.scheduler_info()["workers"]
            cpus = self._client.run(_worker_cpus)
        except Exception:  # an old or restricted scheduler: leave the workers' defaults
            return None
        slots: dict[str, int] = {}
        host_cpus: dict[str, int] = {}
        for addr, w in workers.items():
            host = str(w.get("host", addr))
            slots[host] = slots.get(host, 0) + int(w.get("nthreads", 1))
            if addr in cpus:
                host_cpus[host] = int(cpus[addr])
        per_host = [max(1, host_cpus[h] // max(1, s)) for h, s in slots.items() if h in host_cpus]
        return min(per_host) if per_host else None

    def submit(self, task: dict[str, Any]) -> Any:
        fut = self._client.submit(run_scene, task, key=f"pansharpen-{task['id']}-{uuid.uuid4().hex[:8]}",
                                  pure=False)
        self._done.add(fut)
        return fut

    def wait(self, handles: list[Any]) -> list[Any]:
        return [next(self._done)]

    def result(self, handle: Any) -> dict[str, Any]:
        try:
            return handle.result()
        except Exception as e:  # KilledWorker, CancelledError, communication errors
            raise _WorkerLost(f"the Dask task failed: {type(e).__name__}: {e}") from None

    def close(self, cancel: bool) -> None:
        with contextlib.suppress(Exception):
            if cancel:
                self._client.cancel(list(self._done.futures))
            self._client.close()


def _worker_cpus() -> int:
    """CPUs of the process it runs in (sent to Dask workers with ``Client.run``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# journal, lock, report
# ----------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_journal(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The journal's records by scene id, in order; a torn last line (killed mid-write) is ignored."""
    p = Path(path)
    out: dict[str, list[dict[str, Any]]] = {}
    if not p.is_file():
        return out
    with p.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("id"), str) and rec.get("state"):
                out.setdefault(rec["id"], []).append(rec)
    return out


class Journal:
    """Append-only JSON lines; each line is flushed and fsync'd before the call returns."""

    def __init__(self, path: Path, run_id: str):
        self.path = path
        self.run_id = run_id
        new = not path.exists()
        self._f: TextIO = path.open("a", encoding="utf-8")
        if not new and path.stat().st_size:
            with path.open("rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":  # a torn line from a killed run: do not glue onto it
                    self._f.write("\n")
        if new:
            _fsync_dir(path.parent)

    def write(self, scene_id: str, state: str, **fields: Any) -> None:
        rec = {"v": JOURNAL_SCHEMA, "time": _now(), "run": self.run_id, "id": scene_id, "state": state,
               **{k: v for k, v in fields.items() if v is not None}}
        self._f.write(json.dumps(rec, sort_keys=True, default=str) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _outdir_lock(outdir: Path) -> Iterator[None]:
    """One batch per output folder at a time (a kernel lock: released when the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(outdir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError("another pansharpen batch is running in this folder", path=outdir,
                             fix="wait for it to finish, or use another -o folder") from None
        yield
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _stale_temporaries(out: Path) -> list[Path]:
    """Hidden files the pipeline's writer leaves beside OUT when killed (``.OUT.<pid>.partial.tif`` ...)."""
    if not out.parent.is_dir():
        return []
    pats = (f".{glob.escape(out.name)}.*.partial.tif*", f".{glob.escape(out.name)}.*.cog.tif*")
    return sorted({q for pat in pats for q in out.parent.glob(pat)})


# ----------------------------------------------------------------------------------------------
# the coordinator
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchEvent:
    """What :func:`run_batch` tells its caller: ``notice``, ``start`` or ``finish`` (with the result)."""

    kind: str
    scene: str | None = None
    done: int = 0
    total: int = 0
    result: dict[str, Any] | None = None
    message: str | None = None


EventCallback = Callable[[BatchEvent], None]


def _entry(sc: Scene, status: str, res: dict[str, Any] | None = None, reason: str | None = None) -> dict[str, Any]:
    r = res or {}
    return {"id": sc.id, "status": status, "seconds": r.get("seconds"), "mpx_per_s": r.get("mpx_per_s"),
            "output": str(sc.out), "error": r.get("error") if status == "failed" else None, "reason": reason,
            "megapixels": r.get("megapixels"), "sha256": r.get("sha256"),
            "pan": str(sc.pan) if sc.pan else None, "ms": [str(p) for p in sc.ms],
            "method": sc.model or sc.method or (r.get("method_choice") or {}).get("name") or "default",
            "origin": sc.origin, **({"adaptation": r["adaptation"]} if r.get("adaptation") else {})}


def _decide(plan: BatchPlan, config: BatchConfig, journal: dict[str, list[dict[str, Any]]],
            notices: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, bool]]:
    """-> (skipped entries by id, overwrite flag by id of the scenes to run)."""
    opts = config.options
    skipped: dict[str, dict[str, Any]] = {}
    overwrite: dict[str, bool] = {}
    exists_blocking: list[Scene] = []
    changed = 0
    for sc in plan.scenes:
        recs = journal.get(sc.id, [])
        last = recs[-1] if recs else None
        exists = sc.out.is_file()
        if config.resume and last and last["state"] == "done" and exists:
            if last.get("config") not in (None, sc.fingerprint(opts)):
                changed += 1
            elif last.get("sha256") and sha256_file(sc.out) == last["sha256"]:
                skipped[sc.id] = _entry(sc, "skipped", {"sha256": last["sha256"]}, reason="done")
                continue
        if config.skip_existing and exists:
            skipped[sc.id] = _entry(sc, "skipped", reason="exists")
            continue
        ours = config.resume and bool(recs)  # an output of an earlier batch that did not finish cleanly
        overwrite[sc.id] = opts.overwrite or (exists and ours)
        if exists and not overwrite[sc.id] and sc.error is None:
            exists_blocking.append(sc)
    if changed:
        notices.append(f"{changed} scene(s) finished earlier with other settings: running them again")
    if exists_blocking:
        first = exists_blocking[0]
        more = f" and {len(exists_blocking) - 1} more" if len(exists_blocking) > 1 else ""
        raise UsageError(f"output exists: {first.out}{more}",
                         fix="pass --resume to finish an interrupted batch, --skip-existing to keep existing "
                             "outputs, or --overwrite to replace them")
    return skipped, overwrite


def run_batch(config: BatchConfig, *, on_event: EventCallback | None = None,
              scene_progress: Callable[[], tuple[Any, Any]] | None = None,
              plan: BatchPlan | None = None) -> dict[str, Any]:
    """Run the batch and return the report (also written to ``OUTDIR/batch-report.json``).

    ``report["exit_code"]`` is 0 when every scene succeeded or was skipped, 1 when any failed.
    Raises :class:`UsageError` (nothing ran) and :class:`Cancelled` on Ctrl-C (the report of what
    finished is written first; ``--resume`` finishes the rest).
    """
    t_start, started_at = time.perf_counter(), _now()
    plan = plan or plan_batch(config)
    emit = on_event or (lambda ev: None)
    for n in plan.notices:
        emit(BatchEvent("notice", message=n))
    outdir = plan.outdir
    outdir.mkdir(parents=True, exist_ok=True)
    opts = config.options
    with _outdir_lock(outdir):
        journal_path = outdir / JOURNAL_NAME
        notices: list[str] = []
        skipped, overwrite = _decide(plan, config, read_journal(journal_path), notices)
        to_run = [sc for sc in plan.scenes if sc.id not in skipped]
        if config.resume and not journal_path.exists():
            notices.append(f"no {JOURNAL_NAME} in {outdir}: nothing to resume, running every scene")
        stale = [q for sc in to_run for q in _stale_temporaries(sc.out)]
        for q in stale:
            with contextlib.suppress(FileNotFoundError):
                q.unlink()
        if stale:
            notices.append(f"removed {len(stale)} temporary file(s) left by an interrupted run")
        for n in notices:
            emit(BatchEvent("notice", message=n))
        jobs = config.jobs
        runner: Any
        if config.scheduler:
            runner = _DaskRunner(config.scheduler, jobs)
            threads = runner.threads
        elif (jobs or 1) > 1 and (runnable := sum(s.error is None for s in to_run)) > 1:
            n_workers = min(jobs or 1, runnable)
            threads = max(1, cpu_count() // n_workers)
            runner = _PoolRunner(n_workers, threads)
        else:
            runner = _InlineRunner(scene_progress)
            threads = None
        run_id = uuid.uuid4().hex[:12]
        journal = Journal(journal_path, run_id)
        results: dict[str, dict[str, Any]] = dict(skipped)
        pending = list(to_run)
        inflight: dict[Any, Scene] = {}
        order: list[Any] = []
        stop = False
        total, done = len(to_run), 0
        interrupted = False

        def finish(sc: Scene, res: dict[str, Any]) -> None:
            nonlocal done, stop
            done += 1
            ok = res["status"] == "ok"
            results[sc.id] = _entry(sc, "ok" if ok else "failed", res)
            journal.write(sc.id, "done" if ok else "failed", output=str(sc.out), sha256=res.get("sha256"),
                          seconds=res.get("seconds"), error=res.get("error"), config=sc.fingerprint(opts))
            emit(BatchEvent("finish", sc.id, done, total, results[sc.id] | {"notices": res.get("notices", [])}))
            if not ok and not config.continue_on_error:
                stop = True

        try:
            while (pending and not stop) or inflight:
                while pending and not stop and len(inflight) < runner.slots:
                    sc = pending.pop(0)
                    journal.write(sc.id, "started", output=str(sc.out), config=sc.fingerprint(opts))
                    emit(BatchEvent("start", sc.id, done, total))
                    if sc.error is not None:
                        finish(sc, _failed(sc.id, sc.out, sc.error, 0.0))
                        continue
                    h = runner.submit(scene_task(sc, opts, overwrite=overwrite[sc.id], threads=threads))
                    inflight[h] = sc
                    order.append(h)
                if not inflight:
                    continue
                for h in runner.wait(order):
                    sc = inflight.pop(h)
                    order.remove(h)
                    try:
                        res = runner.result(h)
                    except _WorkerLost as e:
                        res = _failed(sc.id, sc.out, str(e))
                    finish(sc, res)
        except KeyboardInterrupt:
            interrupted = True
            for sc in inflight.values():
                results[sc.id] = _entry(sc, "failed", {"error": "interrupted"})
        finally:
            runner.close(cancel=True)
            journal.close()
        why = "interrupted" if interrupted else "the batch stopped after a failure (use --continue-on-error)"
        for sc in pending:
            results[sc.id] = _entry(sc, "skipped", reason=f"not started: {why}")
        # (a scene caught by Ctrl-C between its "started" line and its submission is in neither list)
        entries = [results.get(sc.id) or _entry(sc, "failed", {"error": "interrupted"}) for sc in plan.scenes]
        counts = {s: sum(e["status"] == s for e in entries) for s in ("ok", "failed", "skipped")}
        report = {
            "schema": REPORT_SCHEMA, "pansharpen": __version__, "outdir": str(outdir), "run": run_id,
            "started": started_at, "finished": _now(), "seconds": round(time.perf_counter() - t_start, 3),
            "jobs": runner.slots, "scheduler": config.scheduler, "resume": config.resume,
            "continue_on_error": config.continue_on_error, "interrupted": interrupted,
            "counts": {**counts, "total": len(entries)},
            "exit_code": 130 if interrupted else (1 if counts["failed"] else 0),
            "scenes": entries,
        }
        _write_json_atomic(outdir / REPORT_NAME, report)
    if interrupted:
        raise Cancelled("interrupted; finished scenes are kept", path=outdir,
                        fix="run the same command with --resume to finish the batch")
    return report


__all__ = ["BatchConfig", "BatchEvent", "BatchPlan", "FuseOptions", "JOURNAL_NAME", "REPORT_NAME", "Scene",
           "plan_batch", "read_journal", "run_batch", "run_scene", "scene_task", "sha256_file"]
