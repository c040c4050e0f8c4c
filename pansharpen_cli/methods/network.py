"""A deep network of the model zoo as a fusion :class:`~.base.Method` run through the tiling engine.

The engine hands each tile over in float32 digital numbers: ``pan`` (H, W) and ``ms_up`` (B, H, W),
the MS interpolated onto the PAN grid with the 23-tap interpolator, which is exactly the DLPan
``lms`` input. This module:

* normalises by the model's ``scale`` from its manifest (2047 for 11-bit training data): a
  scene-wide constant, never a per-tile statistic, so tiles agree; the output is multiplied back;
* feeds the network according to its input convention (see ``models/base.py``):

  - ``lms``: ``lms = ms_up``;
  - ``lr`` (ADWM/BWNet) and ``highpass`` (PanNet, which needs both): the low-resolution ``ms`` is
    **approximated** inside the tile as ``interpolate(ms_up, scale_factor=1/ratio, mode="area")``.
    This is not the scene's original LR MS: the 23-tap interpolation followed by a box average is a
    slightly blurred version of it, and the box grid starts at the tile's read window, whose phase
    relative to the original MS pixels varies from tile to tile, so these networks are not exactly
    tile-invariant. An exact version needs the engine to pass the LR MS of the tile (and its
    phase) in :class:`~.base.TileInput`;

* pads every tile by reflection (bottom/right) to the next multiple of ``ArchSpec.size_multiple``
  and crops the result back; the receptive-field context the engine adds around every tile makes
  the padded pixels irrelevant to the core;
* runs under ``torch.inference_mode()`` in channels-last memory format, on ``auto|cpu|cuda``, in
  ``fp32`` (default), ``bf16`` (autocast; CPUs with bf16 support, or CUDA) or ``fp16`` (CUDA only).
  ``torch.set_num_threads`` is respected (only the ``threads`` option changes it);
* batches same-shaped tiles (``batch``; by default 1 on the CPU and, on CUDA, as many as fit in the
  free GPU memory by an estimate from the architecture, halved on an out-of-memory error) and, on
  CUDA, stages them in page-locked (pinned) host memory with non-blocking copies both ways.

Default precision: fp32 on every device, chosen by measurement on this project's 2-core AMD EPYC
(AVX512-BF16, oneDNN bf16 supported), DLPan WorldView-2 FusionNet, real GRIP WV2 pixels:

* one 532x532 tile (512 + context), channels-last: bf16 autocast 0.068 s vs fp32 0.128 s per
  forward (2 threads), 0.127 s vs 0.236 s through :meth:`NetworkMethod.fuse_tile` (1 thread): ~1.9x;
* the whole 1280x1280 scene with ``pansharpen fuse``: 2.7 s vs 5.6 s;
* but bf16 is far from fp32: on the tile's 512x512 core max |diff| 67 DN, mean 0.93 DN, 99th
  percentile 6.5 DN; on the whole scene's uint16 11-bit output max 127 DN, mean 1.1 DN, 59 % of the
  values change and 10 % by more than 2 DN. That is not float rounding, so bf16 is opt-in
  (``--precision bf16``). fp16 (CUDA only) is opt-in too; CUDA timings were not measured here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import runtime, zoo
from ..errors import ModelError, UsageError
from .base import Method, SceneInfo, TileInput

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION = "fp32"


def cpu_supports_bf16() -> bool:
    """Whether oneDNN can run bf16 convolutions natively on this CPU (AVX512-BF16/AMX...)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def resolve_device(device: str | None, notices: list[str] | None = None) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU (with a notice); ``cuda`` without a GPU -> error."""
    d = (device or "auto").strip().lower()
    if d not in DEVICES and not d.startswith("cuda:"):
        raise UsageError(f"unknown --device '{device}'", fix="use auto, cpu or cuda")
    if d == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if notices is not None:
            notices.append(f"no CUDA GPU available: running the network on the CPU ({torch.get_num_threads()} "
                           "threads)")
        return torch.device("cpu")
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise UsageError(f"--device {d} but no CUDA GPU is available ({why})", fix="use --device cpu or auto")
        try:
            dev = torch.device(d)
        except RuntimeError:
            raise UsageError(f"unknown --device '{device}'", fix="use auto, cpu, cuda or cuda:N") from None
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UsageError(f"--device {d}: there is no CUDA device {dev.index} ({n} visible)",
                             fix=f"use cuda:0 to cuda:{n - 1}" if n > 1 else "use --device cuda")
        return dev
    return torch.device("cpu")


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """Check ``fp32|bf16|fp16`` against the device; None -> :data:`DEFAULT_PRECISION`."""
    p = (precision or DEFAULT_PRECISION).strip().lower()
    if p not in PRECISIONS:
        raise UsageError(f"unknown --precision '{precision}'", fix="use fp32, bf16 or fp16")
    if p == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA GPU", fix="use fp32 (or bf16) on the CPU, or --device cuda")
    if p == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16():
            raise UsageError("--precision bf16: this CPU (or torch build) has no native bf16 support",
                             fix="use --precision fp32")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--precision bf16: this GPU has no bf16 support", fix="use fp16 or fp32")
    return p


# -- GPU memory and batch size --------------------------------------------------------------------------

#: share of the usable GPU memory that one forward pass may plan for (the rest: cuDNN workspaces,
#: allocator fragmentation, the output copies, other processes)
GPU_MEMORY_FRACTION = 0.6
#: most tiles per forward pass chosen automatically (beyond that a GPU is saturated anyway and the
#: host copies of a pass only grow)
MAX_AUTO_BATCH = 32
#: core tile side the automatic batch is planned for (the default ``--tile``); the context around it
#: is added from the model's receptive field, and larger tiles are split into smaller passes
AUTO_BATCH_TILE = 512


def activation_bytes_per_pixel(net: torch.nn.Module, in_channels: int, out_channels: int, precision: str) -> int:
    """Estimated peak bytes of one forward pass per input pixel (weights not counted).

    From the architecture: the fp32 input and output planes, plus four live feature maps of the
    widest convolution (a residual block holds its input, two convolution outputs and their sum)
    in the compute precision (2 bytes under bf16/fp16 autocast, else 4); doubled for cuDNN
    workspaces and the caching allocator's rounding. FusionNet (32 channels), fp32: 2 x (9 x 4 +
    4 x 32 x 4) = 1096 B/px for 4 bands, i.e. about 330 MiB for a 552x552 tile.
    """
    widest = max([out_channels, in_channels] + [c for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)
                                                for c in (m.in_channels, m.out_channels)])
    elt = 4 if precision == "fp32" else 2
    return 2 * ((in_channels + out_channels) * 4 + 4 * widest * elt)


def gpu_usable_bytes(device: torch.device) -> int:
    """Memory a forward pass on ``device`` can use: the driver's free memory plus what torch's caching
    allocator holds reserved but unused (``torch.cuda.mem_get_info`` alone would shrink after the
    first pass, whose blocks stay cached)."""
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free) + max(0, int(cached))


def auto_batch_size(usable_bytes: int, tile_bytes: int, *, fraction: float = GPU_MEMORY_FRACTION,
                    cap: int = MAX_AUTO_BATCH) -> int:
    """Tiles of ``tile_bytes`` per forward pass that fit in ``fraction`` of ``usable_bytes``: 1 to ``cap``."""
    if tile_bytes <= 0:
        return cap
    return max(1, min(cap, int(usable_bytes * fraction) // int(tile_bytes)))


def _host_empty(shape: Sequence[int], pinned: bool) -> torch.Tensor:
    """An uninitialised float32 host tensor; page-locked (pinned) for asynchronous copies to and from a GPU."""
    return torch.empty(tuple(shape), dtype=torch.float32, pin_memory=pinned)


#: the exception torch raises when a CUDA allocation fails (``torch.OutOfMemoryError`` since 2.5)
_CUDA_OOM: type[BaseException] = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


class NetworkMethod(Method):
    """Runs a zoo model (``pansharpen models list``) on every tile; see the module docstring.

    Args:
        model: the model's name (``fusionnet.wv3``) or its :class:`~pansharpen_cli.zoo.ModelEntry`.
        device: ``auto`` (default), ``cpu`` or ``cuda``.
        precision: ``fp32`` (default), ``bf16`` or ``fp16``.
        batch: tiles per forward pass in :meth:`fuse_tiles` (the engine hands over this many tiles at
            a time); None (default): 1 on the CPU, chosen from free GPU memory on CUDA (:attr:`batch`).
        threads: if given, ``torch.set_num_threads(threads)``.
        notify: called with each notice as it arises (the CLI prints them); all notices are also
            kept in :attr:`notices`.
        adapt: ``tailor``, ``swift`` or ``full``: adapt the network to each scene, once, in
            :meth:`fit` (:mod:`pansharpen_cli.scene_adapt`, :mod:`pansharpen_cli.adapt`); the
            original network is kept when the do-no-harm check rejects the adaptation. The report
            is :attr:`adapt_report` and the decision is recorded in :attr:`provenance`.
        adapt_seed, adapt_steps, adapt_patches, adapt_lr: the adaptation's seed (patch selection,
            split, initialisation), Adam steps, number of patches and learning rate (defaults: the
            mode's, see :mod:`pansharpen_cli.adapt`).
        adapter: a saved adapter file (:func:`pansharpen_cli.adapt.save_adapter`) to apply to the
            network instead of adapting; it must have been made for this model's weights.
    """

    description = "a deep network of the model zoo (see `pansharpen models list`)"

    def __init__(self, model: str | zoo.ModelEntry, *, device: str | None = "auto", precision: str | None = None,
                 batch: int | None = None, threads: int | None = None, notify: Callable[[str], None] | None = None,
                 adapt: str | None = None, adapt_seed: int = 0, adapt_steps: int | None = None,
                 adapt_patches: int | None = None, adapt_lr: float | None = None, adapter: str | Path | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        self.notices: list[str] = []
        self.notify = notify
        self._sent = 0
        self._check_adapt_options(adapt, adapt_seed, adapt_steps, adapt_patches, adapt_lr, adapter)
        entry = zoo.get_model(model) if isinstance(model, str) else model
        if batch is not None and int(batch) < 1:
            raise UsageError(f"--batch {batch} must be at least 1")
        if threads is not None:
            if int(threads) < 1:
                raise UsageError(f"threads={threads} must be at least 1")
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device, self.notices)
        self.precision = resolve_precision(precision, self.device)
        self.batch = batch  # None: automatic (see the `batch` property)
        net, spec, entry = zoo.load_network(entry)  # size + SHA-256 verified before deserialising
        self.entry = entry
        self.spec = spec
        self.name = entry.name  # type: ignore[misc]  # per-instance name: the model's
        self.scale = float(entry.scale)
        self.ratio = int(entry.ratio)
        self.needs_lr = spec.input_convention in ("lr", "highpass")
        # the area decimation of ms_up adds up to `ratio` pixels of support on top of the network's
        self.receptive_field = spec.receptive_field + (self.ratio if self.needs_lr else 0)
        self.net = net.to(self.device).to(memory_format=torch.channels_last).eval()
        self.options.update(device=self.device.type, precision=self.precision)
        if self.batch > 1:
            self.options["batch"] = self.batch
        self.provenance = {"model": entry.name, "arch": entry.arch, "weights_sha256": entry.sha256,
                           "precision": self.precision}
        if entry.base_model:  # an adapted model of the zoo (`pansharpen adapt`)
            self.provenance.update(base_model=entry.base_model, base_sha256=entry.base_sha256)
        if adapter is not None:
            self._apply_adapter_file(Path(adapter))
        # an adapted network (zoo model, adapter file, or --adapt tailor: decided in fit, after the
        # tiles are planned) sees further than its base: tiles need that much more context to agree
        extra = getattr(self.net, "extra_receptive_field", 0)
        if self.adapt_mode == "tailor":
            from ..adapt import DEFAULT_TAILOR, tailor_receptive_field

            extra += tailor_receptive_field(DEFAULT_TAILOR)
        self.receptive_field += int(extra)
        #: the network every scene's adaptation starts from (never the previous scene's adaptation)
        self._base_net = self.net
        #: the last adaptation's report (:func:`pansharpen_cli.scene_adapt.summarize`), or None
        self.adapt_report: dict[str, Any] | None = None
        # a convolutional network's output pixel depends only on its receptive field: cropped context
        # makes tiles exact (default overlap 0); tile-wide statistics (global pooling, attention over
        # the tile) do not, and get the default cross-fade
        self.exact_tiles = not spec.global_context
        if spec.global_context:
            self._notice(f"{entry.name} uses statistics of the whole tile: results depend on --tile; use large "
                         "tiles (e.g. --tile 1024)", send=False)
        if self.needs_lr:
            self._notice(f"{entry.name} takes the low-resolution MS: approximated per tile by area-averaging "
                         "the interpolated MS", send=False)
        self.flush_notices()

    # -- notices ---------------------------------------------------------------------------------

    def _notice(self, msg: str, *, send: bool = True) -> None:
        self.notices.append(msg)
        if send:
            self.flush_notices()

    def flush_notices(self) -> None:
        """Send the notices not sent yet to :attr:`notify` (each one once)."""
        if self.notify is None:
            return
        while self._sent < len(self.notices):
            self._sent += 1
            self.notify(self.notices[self._sent - 1])

    # -- Method interface ------------------------------------------------------------------------

    def check_scene(self, n_bands: int, ratio: float) -> None:
        """:class:`ModelError` (listing the models that fit) unless the scene suits the model."""
        zoo.check_fit(self.entry, n_bands, ratio)

    def fit(self, scene: SceneInfo) -> None:
        self.check_scene(scene.n_bands, scene.ratio)
        if scene.bit_depth != self.entry.bit_depth:
            self._notice(f"{self.name} was trained on {self.entry.bit_depth}-bit data (divided by "
                         f"{self.scale:g}); this scene is {scene.bit_depth}-bit")
        if self.adapt_mode is not None:
            self._adapt_to_scene(scene)

    # -- test-time adaptation ------------------------------------------------------------------

    def _check_adapt_options(self, adapt: str | None, seed: int, steps: int | None, patches: int | None,
                             lr: float | None, adapter: str | Path | None) -> None:
        from ..adapt import MODES
        from ..scene_adapt import check_options

        mode = adapt.strip().lower() if isinstance(adapt, str) else adapt
        if mode is not None and mode not in MODES:
            raise UsageError(f"unknown --adapt '{adapt}'", fix="use " + ", ".join(MODES))
        if mode is None:
            given = [n for n, v in (("--adapt-steps", steps), ("--adapt-patches", patches), ("--adapt-lr", lr))
                     if v is not None]
            if given:
                raise UsageError(f"{', '.join(given)} without --adapt", fix="add --adapt tailor (or swift, full)")
        if mode is not None and adapter is not None:
            raise UsageError("--adapt and --adapter are mutually exclusive",
                             fix="--adapt adapts to the scene; --adapter applies a saved adaptation")
        check_options(steps=steps, patches=patches, lr=lr)
        self.adapt_mode: str | None = mode
        self.adapt_seed = int(seed)
        self.adapt_steps = steps
        self.adapt_patches = patches
        self.adapt_lr = lr
        if mode is not None:
            self.options.update(adapt=mode, adapt_seed=int(seed),
                                **{k: v for k, v in (("adapt_steps", steps), ("adapt_patches", patches),
                                                     ("adapt_lr", lr)) if v is not None})

    def _apply_adapter_file(self, path: Path) -> None:
        """Put a saved adapter on :attr:`net` (hashed; checked against the base weights)."""
        import hashlib

        from ..adapt import load_adapter_bytes
        from ..errors import InputNotFoundError

        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputNotFoundError(f"cannot read the adapter ({exc.strerror or exc})", path=path,
                                     fix="pass the .safetensors file `pansharpen_cli.adapt.save_adapter` wrote") \
                from None
        try:
            net = load_adapter_bytes(self.net, data, where=str(path))
        except (ValueError, KeyError, RuntimeError) as exc:
            msg = str(exc)
            raise ModelError(msg[len(str(path)) + 2:] if msg.startswith(f"{path}: ") else msg, path=path,
                             fix=f"use an adapter made for {self.entry.name} (same weights)") from None
        self.net = net.to(self.device).to(memory_format=torch.channels_last).eval()
        self.options["adapter"] = path.name
        self.provenance.update(adapter=path.name, adapter_sha256=hashlib.sha256(data).hexdigest())

    def _adapt_to_scene(self, scene: SceneInfo) -> None:
        """Adapt the network to this scene, once (never per tile), from patches read through
        ``scene.windows``; keep the original when the do-no-harm check says so."""
        from ..adapt import adapt
        from ..scene_adapt import provenance, sample_scene_patches, summarize

        windows = scene.windows
        if windows is None:
            raise UsageError("adaptation needs the scene's windows",
                             fix="run the method through pansharpen_cli.pipeline (fuse, fuse_arrays)")
        base = self._base_net
        patches, sampling = sample_scene_patches(
            windows, scale=self.scale, sensor=scene.sensor, area_ms=self.needs_lr, n_patches=self.adapt_patches,
            seed=self.adapt_seed)
        assert self.adapt_mode is not None
        res = adapt(base, patches, scene.sensor, max(1, int(windows.ratio)), mode=self.adapt_mode,  # type: ignore[arg-type]
                    steps=self.adapt_steps, lr=self.adapt_lr, seed=self.adapt_seed,
                    phase=windows.phase if windows.phase in ("toolbox", "corner") else "toolbox",
                    base_name=self.entry.name, base_sha256=self.entry.sha256)
        if not patches and sampling.problem:
            res.report["reason"] = f"no patch to adapt on ({sampling.problem}): the original is kept"
        self.net = res.model.to(self.device).to(memory_format=torch.channels_last).eval() if res.used_adapted \
            else base
        self.adapt_report = summarize(res.report, sampling)
        self.provenance.update(provenance(self.adapt_report))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        return self.fuse_tiles([tile])[0]

    # -- batch size and host memory -----------------------------------------------------------

    @property
    def batch(self) -> int:
        """Tiles per forward pass: ``--batch`` when given; else 1 on the CPU (the behaviour before
        automatic batching) and, on CUDA, as many default-sized tiles (``AUTO_BATCH_TILE`` plus the
        context) as fit in ``GPU_MEMORY_FRACTION`` of the usable GPU memory (:func:`auto_batch_size`).
        :meth:`fuse_tiles` re-plans each pass for the real tile size."""
        if self._batch is None:
            self._batch = 1
            if self.device.type == "cuda":
                side = AUTO_BATCH_TILE + 4 * self.receptive_field + max(1, self.spec.size_multiple)
                self._batch = self._cuda_pass_size(side, side)
        return self._batch

    @batch.setter
    def batch(self, value: int | None) -> None:
        self.batch_auto = value is None
        self._batch = None if value is None else int(value)
        self._oom_cap: int | None = None

    @property
    def pin_memory(self) -> bool:
        """Host buffers are page-locked and copies non-blocking: on CUDA only."""
        return self.device.type == "cuda"

    def _cuda_pass_size(self, h: int, w: int) -> int:
        """Tiles of h x w per forward pass on the GPU, from its usable memory and the architecture."""
        in_channels = self.entry.bands + 1 + (self.entry.bands if self.needs_lr else 0)
        per_px = activation_bytes_per_pixel(self.net, in_channels, self.entry.bands, self.precision)
        n = auto_batch_size(gpu_usable_bytes(self.device), per_px * h * w)
        return min(n, self._oom_cap) if self._oom_cap else n

    def _pass_size(self, h: int, w: int) -> int:
        if self.batch_auto and self.device.type == "cuda":
            return self._cuda_pass_size(h, w)
        return min(self.batch, self._oom_cap) if self._oom_cap else self.batch

    def fuse_tiles(self, tiles: Sequence[TileInput]) -> list[np.ndarray]:
        """Fuse several tiles, same-shaped tiles together, up to :attr:`batch` per forward pass (on CUDA
        with an automatic batch: as many as the free GPU memory takes for their size); (B, H, W)
        float32 each. A pass that runs out of GPU memory is split in halves, and later passes are kept
        at the size that worked."""
        out: list[np.ndarray | None] = [None] * len(tiles)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(tiles):
            groups.setdefault(t.ms_up.shape, []).append(i)
        for shape, idx in groups.items():
            n = self._pass_size(shape[1], shape[2])
            for k in range(0, len(idx), n):
                part = idx[k:k + n]
                res = self._forward_fitting([tiles[i] for i in part])
                for j, i in enumerate(part):
                    out[i] = res[j]
        return [o for o in out if o is not None]

    def _forward_fitting(self, tiles: Sequence[TileInput]) -> np.ndarray:
        """:meth:`_forward`, halving the pass on a CUDA out-of-memory error."""
        if self.device.type != "cuda":
            return self._forward(tiles)
        try:
            return self._forward(tiles)
        except _CUDA_OOM:
            torch.cuda.empty_cache()
            if len(tiles) == 1:
                h, w = tiles[0].pan.shape
                raise ModelError(f"the GPU ran out of memory on one {h}x{w} tile of {self.name}",
                                 fix="use a smaller --tile, or --device cpu") from None
        half = (len(tiles) + 1) // 2
        self._oom_cap = half if self._oom_cap is None else min(self._oom_cap, half)
        self._notice(f"GPU out of memory with {len(tiles)} tiles per pass: continuing with {half}")
        return np.concatenate([self._forward_fitting(tiles[:half]), self._forward_fitting(tiles[half:])])

    # -- the forward pass -----------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Reduced precision by autocast (weights stay fp32): fp16 (CUDA) and bf16 (CUDA, or CPUs with
        native bf16); nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _forward(self, tiles: Sequence[TileInput]) -> np.ndarray:
        """(N, B, H, W) float32 DN for same-shaped tiles.

        The tiles are normalised straight into one host buffer (page-locked on CUDA, so the copy to
        the GPU is asynchronous: ``non_blocking``), padded to the size multiple on the device, run
        in channels-last layout under :meth:`_autocast`, and copied back into a page-locked buffer
        (non-blocking, then one stream synchronisation) whose numpy view is returned.
        """
        b, h, w = tiles[0].ms_up.shape
        if b != self.entry.bands:
            zoo.check_fit(self.entry, b, self.ratio)
        if self.device.type == "cpu":
            runtime.tune_malloc()
        pinned = self.pin_memory
        xt = _host_empty((len(tiles), b + 1, h, w), pinned)
        x = xt.numpy()
        inv = np.float32(1.0 / self.scale)
        for i, t in enumerate(tiles):
            np.multiply(t.pan, inv, out=x[i, 0])
            np.multiply(t.ms_up, inv, out=x[i, 1:])
        # the engine fills invalid pixels; NaN would still spread through a whole global-context tile
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        xt = xt.to(self.device, non_blocking=pinned)
        m = max(1, self.spec.size_multiple)
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            xt = F.pad(xt, (0, pw, 0, ph), mode=mode)
        with torch.inference_mode():
            pan = xt[:, :1].contiguous(memory_format=torch.channels_last)
            lms = xt[:, 1:].contiguous(memory_format=torch.channels_last)
            ms = None
            if self.needs_lr:
                ms = F.interpolate(lms, scale_factor=1.0 / self.ratio, mode="area")
                ms = ms.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                y = self.net(pan, None if self.spec.input_convention == "lr" else lms, ms)
            y = (y[:, :, :h, :w].float() * self.scale).contiguous()
            if not pinned:
                return y.cpu().numpy()
            host = _host_empty(y.shape, True)
            host.copy_(y, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return host.numpy()

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "origin": self.entry.origin, **self.options, **self.provenance}


__all__ = ["DEFAULT_PRECISION", "DEVICES", "PRECISIONS", "NetworkMethod", "cpu_supports_bf16", "resolve_device",
           "resolve_precision"]
