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
  ``torch.set_num_threads`` is respected (only the ``threads`` option changes it).

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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import runtime, zoo
from ..errors import UsageError
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
        return torch.device(d)
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


class NetworkMethod(Method):
    """Runs a zoo model (``pansharpen models list``) on every tile; see the module docstring.

    Args:
        model: the model's name (``fusionnet.wv3``) or its :class:`~pansharpen_cli.zoo.ModelEntry`.
        device: ``auto`` (default), ``cpu`` or ``cuda``.
        precision: ``fp32`` (default), ``bf16`` or ``fp16``.
        batch: tiles per forward pass in :meth:`fuse_tiles` (the engine currently calls
            :meth:`fuse_tile`, one tile at a time).
        threads: if given, ``torch.set_num_threads(threads)``.
        notify: called with each notice as it arises (the CLI prints them); all notices are also
            kept in :attr:`notices`.
    """

    description = "a deep network of the model zoo (see `pansharpen models list`)"

    def __init__(self, model: str | zoo.ModelEntry, *, device: str | None = "auto", precision: str | None = None,
                 batch: int = 1, threads: int | None = None, notify: Callable[[str], None] | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        self.notices: list[str] = []
        self.notify = notify
        self._sent = 0
        entry = zoo.get_model(model) if isinstance(model, str) else model
        if int(batch) < 1:
            raise UsageError(f"--batch {batch} must be at least 1")
        if threads is not None:
            if int(threads) < 1:
                raise UsageError(f"threads={threads} must be at least 1")
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device, self.notices)
        self.precision = resolve_precision(precision, self.device)
        self.batch = int(batch)
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

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        return self.fuse_tiles([tile])[0]

    def fuse_tiles(self, tiles: Sequence[TileInput]) -> list[np.ndarray]:
        """Fuse several tiles, ``batch`` same-shaped tiles per forward pass; (B, H, W) float32 each."""
        out: list[np.ndarray | None] = [None] * len(tiles)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(tiles):
            groups.setdefault(t.ms_up.shape, []).append(i)
        for idx in groups.values():
            for k in range(0, len(idx), self.batch):
                part = idx[k:k + self.batch]
                res = self._forward([tiles[i] for i in part])
                for j, i in enumerate(part):
                    out[i] = res[j]
        return [o for o in out if o is not None]

    # -- the forward pass -----------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _forward(self, tiles: Sequence[TileInput]) -> np.ndarray:
        """(N, B, H, W) float32 DN for same-shaped tiles."""
        b, h, w = tiles[0].ms_up.shape
        if b != self.entry.bands:
            zoo.check_fit(self.entry, b, self.ratio)
        if self.device.type == "cpu":
            runtime.tune_malloc()
        x = np.empty((len(tiles), b + 1, h, w), dtype=np.float32)
        inv = np.float32(1.0 / self.scale)
        for i, t in enumerate(tiles):
            # the engine fills invalid pixels; NaN would still spread through a whole global-context tile
            np.multiply(np.nan_to_num(t.pan, nan=0.0, posinf=0.0, neginf=0.0), inv, out=x[i, 0])
            np.multiply(np.nan_to_num(t.ms_up, nan=0.0, posinf=0.0, neginf=0.0), inv, out=x[i, 1:])
        xt = torch.from_numpy(x)
        m = max(1, self.spec.size_multiple)
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            xt = F.pad(xt, (0, pw, 0, ph), mode=mode)
        xt = xt.to(self.device, non_blocking=True)
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
        return y.cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "origin": self.entry.origin, **self.options, **self.provenance}


__all__ = ["DEFAULT_PRECISION", "DEVICES", "PRECISIONS", "NetworkMethod", "cpu_supports_bf16", "resolve_device",
           "resolve_precision"]
