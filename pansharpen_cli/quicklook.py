"""Quicklook PNG for ``pansharpen eval --quicklook``: PAN, EXP and every candidate side by side.

Pure numpy (no Pillow): the PNG is written with :mod:`zlib` and :mod:`struct`, labels are drawn with a
built-in 5x7 bitmap font (upper case; lower-case letters are drawn as capitals).

Layout (all sizes in PNG pixels; :func:`layout_size` computes them):

- panels are the images reduced by an integer factor ``f = ceil(max(H, W) / panel)`` (block mean),
  i.e. ``ph x pw = H // f x W // f``; RGB bands from the sensor preset, every RGB panel on the same
  2-98 % stretch computed once from the EXP image (the PAN panel on its own 2-98 % stretch);
- with ``zoom``, each panel has a second image under it: the central ``ph//2 x pw//2`` pixels at full
  resolution, enlarged 2x (nearest);
- a label strip under each panel, a title strip on top, ``columns`` panels per row, ``GAP`` pixels
  between everything.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["GAP", "QuicklookBuilder", "layout_size", "render_text", "stretch_limits", "write_png"]

GAP = 6
BACKGROUND = (32, 32, 32)
FOREGROUND = (235, 235, 235)

# 5x7 glyphs, one int per row (bit 4 = leftmost column)
_FONT: dict[str, tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F), "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E), "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11), "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11), "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A), "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04), "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    "-": (0, 0, 0, 0x1F, 0, 0, 0), "_": (0, 0, 0, 0, 0, 0, 0x1F), ".": (0, 0, 0, 0, 0, 0x0C, 0x0C),
    ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08), ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02), ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "[": (0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E), "]": (0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E),
    "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0), "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0),
    "=": (0, 0, 0x1F, 0, 0x1F, 0, 0), "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    "#": (0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A), "*": (0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0),
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04), "!": (0x04, 0x04, 0x04, 0x04, 0, 0, 0x04),
    "<": (0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02), ">": (0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08),
    "'": (0x0C, 0x04, 0x08, 0, 0, 0, 0),
}


def _scale_for(width: int) -> int:
    return 2 if width >= 256 else 1


def _label_height(scale: int) -> int:
    return 7 * scale + 6


def render_text(text: str, scale: int = 1, max_width: int | None = None) -> np.ndarray:
    """``(7*scale, n*6*scale)`` bool mask of ``text`` (unknown characters as ``?``), cut to ``max_width``."""
    adv = 6 * scale
    if max_width is not None and len(text) * adv > max_width:
        keep = max(1, max_width // adv - 1)
        text = text[:keep] + "*"
    out = np.zeros((7 * scale, max(1, len(text) * adv)), dtype=bool)
    for i, ch in enumerate(text):
        rows = _FONT.get(ch) or _FONT.get(ch.upper()) or _FONT["?"]
        g = np.array([[(r >> (4 - b)) & 1 for b in range(5)] for r in rows], dtype=bool)
        g = np.kron(g, np.ones((scale, scale), dtype=bool))
        out[:, i * adv:i * adv + 5 * scale] = g
    return out


def stretch_limits(img: np.ndarray, lo: float = 2.0, hi: float = 98.0) -> np.ndarray:
    """Per-band ``(B, 2)`` percentiles of the finite values of ``img`` ``(B, H, W)``."""
    out = np.zeros((img.shape[0], 2))
    for b, band in enumerate(img):
        v = band[np.isfinite(band)]
        if v.size:
            out[b] = np.percentile(v, [lo, hi])
        if out[b, 1] <= out[b, 0]:
            out[b, 1] = out[b, 0] + 1.0
    return out


def _to_uint8(img: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """(3, H, W) float -> (H, W, 3) uint8 with per-channel ``limits`` (3, 2)."""
    lo, hi = limits[:, 0][:, None, None], limits[:, 1][:, None, None]
    x = np.clip((np.nan_to_num(img.astype(np.float64), nan=0.0) - lo) / (hi - lo), 0.0, 1.0)
    return np.rint(x * 255.0).astype(np.uint8).transpose(1, 2, 0)


def _reduce(img: np.ndarray, f: int) -> np.ndarray:
    """Block mean by ``f`` on the last two axes (trailing partial blocks dropped)."""
    if f == 1:
        return img
    b, h, w = img.shape
    h2, w2 = h // f, w // f
    return img[:, :h2 * f, :w2 * f].reshape(b, h2, f, w2, f).mean(axis=(2, 4))


def layout_size(n_panels: int, ph: int, pw: int, *, zoom: bool = False, columns: int = 4) -> tuple[int, int]:
    """(width, height) of the quicklook PNG for ``n_panels`` panels of ``ph x pw``."""
    cols = max(1, min(columns, n_panels))
    rows = math.ceil(n_panels / cols)
    lab = _label_height(_scale_for(pw))
    cell_h = ph + (GAP + ph if zoom else 0) + lab
    return cols * pw + (cols + 1) * GAP, lab + rows * cell_h + (rows + 1) * GAP


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` uint8 image as an 8-bit RGB PNG (atomically: temp file, then rename)."""
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {a.shape}")
    h, w, _ = a.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), a.reshape(h, w * 3)], axis=1).tobytes()  # filter 0 rows

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.partial")
    try:
        tmp.write_bytes(png)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


class QuicklookBuilder:
    """Collects panels (reduced RGB images, optional zoom crops) and writes them as one PNG.

    ``pan`` ``(H, W)`` and ``exp`` ``(B, H, W)`` are on one grid, as is every image given to
    :meth:`add`; only the small panels are kept, so many candidates cost little memory.
    """

    def __init__(self, pan: np.ndarray, exp: np.ndarray, rgb: Sequence[int], *, panel: int = 512, zoom: bool = False,
                 columns: int = 4, reference: np.ndarray | None = None, pan_label: str | None = None,
                 exp_label: str = "EXP"):
        self.rgb = [int(i) for i in rgb]
        h, w = exp.shape[1:]
        self.f = max(1, math.ceil(max(h, w) / panel))
        self.shape = (h // self.f, w // self.f)
        self.zoom = zoom
        self.columns = columns
        self.limits = stretch_limits(exp[self.rgb])  # one stretch for every RGB panel
        self.panels: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        p3 = np.broadcast_to(np.asarray(pan, dtype=np.float64)[None], (3, h, w))
        self._add(pan_label or ("PAN (degraded)" if reference is not None else "PAN"), p3,
                  np.repeat(stretch_limits(np.asarray(pan, dtype=np.float64)[None]), 3, axis=0))
        self.add(exp_label, exp)
        if reference is not None:
            self.add("REF (original MS)", reference)

    def add(self, label: str, img: np.ndarray) -> None:
        """Add a ``(B, H, W)`` image on the stretch of the EXP image."""
        self._add(label, np.asarray(img)[self.rgb].astype(np.float64), self.limits)

    def _add(self, label: str, img3: np.ndarray, limits: np.ndarray) -> None:
        ph, pw = self.shape
        small = _to_uint8(_reduce(img3, self.f)[:, :ph, :pw], limits)
        crop = None
        if self.zoom:
            zh, zw = max(1, ph // 2), max(1, pw // 2)
            h, w = img3.shape[1:]
            r0, c0 = (h - zh) // 2, (w - zw) // 2
            z = _to_uint8(img3[:, r0:r0 + zh, c0:c0 + zw], limits)
            z = np.repeat(np.repeat(z, 2, axis=0), 2, axis=1)
            crop = np.empty((ph, pw, 3), np.uint8)
            crop[:] = BACKGROUND
            crop[:z.shape[0], :z.shape[1]] = z[:ph, :pw]
        self.panels.append((label, small, crop))

    def render(self, title: str = "") -> np.ndarray:
        ph, pw = self.shape
        n = len(self.panels)
        width, height = layout_size(n, ph, pw, zoom=self.zoom, columns=self.columns)
        scale = _scale_for(pw)
        lab = _label_height(scale)
        img = np.empty((height, width, 3), np.uint8)
        img[:] = BACKGROUND
        fg = np.array(FOREGROUND, np.uint8)

        def text(s: str, y: int, x: int, max_w: int) -> None:
            m = render_text(s, scale, max_w)
            hh, ww = m.shape
            img[y:y + hh, x:x + ww][m] = fg

        text(title, 3, GAP, width - 2 * GAP)
        cols = max(1, min(self.columns, n))
        cell_h = ph + (GAP + ph if self.zoom else 0) + lab
        for i, (label, small, crop) in enumerate(self.panels):
            y = lab + GAP + (i // cols) * (cell_h + GAP)
            x = GAP + (i % cols) * (pw + GAP)
            img[y:y + ph, x:x + pw] = small
            if crop is not None:
                img[y + ph + GAP:y + 2 * ph + GAP, x:x + pw] = crop
            text(label, y + cell_h - lab + 3, x, pw)
        return img

    def save(self, path: str | Path, title: str = "") -> str:
        """Write the PNG; returns its path."""
        return str(write_png(path, self.render(title)))
