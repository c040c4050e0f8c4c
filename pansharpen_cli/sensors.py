"""Sensor presets: band names and order, bit depth, resolution ratio, MTF gains at Nyquist.

Pure data. The MTF gains of the VHR sensors are those of the Pansharpening Toolbox
(Vivone et al., "A new benchmark based on recent advances in multispectral pansharpening",
IEEE GRSM 2021: ``MTF.m`` / ``MTF_PAN.m``); sensors the toolbox does not list use its generic
value (0.29 for MS, 0.15 for PAN) and say so in ``notes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UsageError

GENERIC_MS_GNYQ = 0.29
GENERIC_PAN_GNYQ = 0.15


@dataclass(frozen=True)
class Band:
    name: str
    #: common name ("blue", "green", "red", "nir", "coastal", "yellow", "rededge", "nir2", ...)
    common: str
    #: MTF gain at the Nyquist frequency of the MS grid
    gnyq: float
    #: weight of this band in the synthetic PAN (weighted Brovey default)
    pan_weight: float


@dataclass(frozen=True)
class Sensor:
    key: str
    name: str
    bands: tuple[Band, ...]
    bit_depth: int
    ratio: int
    pan_gnyq: float
    aliases: tuple[str, ...] = ()
    notes: str = ""
    #: alternative band subsets a product may deliver (e.g. Landsat with or without NIR)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    @property
    def gnyq(self) -> list[float]:
        return [b.gnyq for b in self.bands]

    @property
    def pan_weights(self) -> list[float]:
        return [b.pan_weight for b in self.bands]

    def rgb_indices(self) -> tuple[int, int, int] | None:
        """0-based indices of the red, green and blue bands, if the sensor has them."""
        common = [b.common for b in self.bands]
        try:
            return common.index("red"), common.index("green"), common.index("blue")
        except ValueError:
            return None

    def subset(self, n: int) -> Sensor:
        """The preset restricted to its first ``n`` bands (products that deliver fewer)."""
        if n == self.n_bands:
            return self
        if n > self.n_bands or n < 1:
            raise UsageError(
                f"sensor {self.key} has {self.n_bands} bands, the MS has {n}",
                fix="pass the right --sensor, or none to use generic settings",
            )
        return Sensor(self.key, self.name, self.bands[:n], self.bit_depth, self.ratio, self.pan_gnyq,
                      self.aliases, self.notes)


def _bands(names, commons, gnyq, weights) -> tuple[Band, ...]:
    return tuple(Band(n, c, float(g), float(w)) for n, c, g, w in zip(names, commons, gnyq, weights, strict=True))


_VNIR8 = ("Coastal", "Blue", "Green", "Yellow", "Red", "RedEdge", "NIR1", "NIR2")
_VNIR8_C = ("coastal", "blue", "green", "yellow", "red", "rededge", "nir", "nir2")
# Synthetic-PAN weights for 8-band VHR: the PAN (450-800 nm) covers blue to NIR1.
_VNIR8_W = (0.005, 0.142, 0.209, 0.144, 0.166, 0.173, 0.161, 0.0)
_BGRN = ("Blue", "Green", "Red", "NIR")
_BGRN_C = ("blue", "green", "red", "nir")
_BGRN_W = (0.25, 0.25, 0.25, 0.25)

_generic = "MTF gains not in the toolbox: generic values (MS 0.29, PAN 0.15) are used"

SENSORS: dict[str, Sensor] = {}


def _register(s: Sensor) -> None:
    SENSORS[s.key] = s


_register(Sensor("WV2", "WorldView-2", _bands(_VNIR8, _VNIR8_C, [0.35] * 7 + [0.27], _VNIR8_W),
                 11, 4, 0.11, aliases=("worldview2", "worldview-2")))
_register(Sensor("WV3", "WorldView-3", _bands(_VNIR8, _VNIR8_C,
                 [0.325, 0.355, 0.360, 0.350, 0.365, 0.360, 0.335, 0.315], _VNIR8_W),
                 11, 4, 0.14, aliases=("worldview3", "worldview-3")))
_register(Sensor("WV4", "WorldView-4", _bands(_BGRN, _BGRN_C, [0.23] * 4, _BGRN_W), 11, 4, 0.16,
                 aliases=("worldview4", "worldview-4")))
_register(Sensor("QB", "QuickBird", _bands(_BGRN, _BGRN_C, [0.34, 0.32, 0.30, 0.22], _BGRN_W), 11, 4, 0.15,
                 aliases=("quickbird",)))
_register(Sensor("GE1", "GeoEye-1", _bands(_BGRN, _BGRN_C, [0.23] * 4, _BGRN_W), 11, 4, 0.16,
                 aliases=("geoeye1", "geoeye-1", "ge01")))
_register(Sensor("IKONOS", "IKONOS", _bands(_BGRN, _BGRN_C, [0.26, 0.28, 0.29, 0.28], _BGRN_W), 11, 4, 0.17,
                 aliases=("ik",)))
_register(Sensor("PLEIADES", "Pleiades-1A/1B", _bands(_BGRN, _BGRN_C, [GENERIC_MS_GNYQ] * 4, _BGRN_W), 12, 4,
                 GENERIC_PAN_GNYQ, aliases=("phr", "pleiades1a", "pleiades1b"), notes=_generic))
_register(Sensor("SPOT6", "SPOT-6/7", _bands(_BGRN, _BGRN_C, [GENERIC_MS_GNYQ] * 4, _BGRN_W), 12, 4,
                 GENERIC_PAN_GNYQ, aliases=("spot7", "spot-6", "spot-7"), notes=_generic))
_register(Sensor("GF1", "GaoFen-1", _bands(_BGRN, _BGRN_C, [GENERIC_MS_GNYQ] * 4, _BGRN_W), 10, 4,
                 GENERIC_PAN_GNYQ, aliases=("gaofen1", "gaofen-1"), notes=_generic))
_register(Sensor("GF2", "GaoFen-2", _bands(_BGRN, _BGRN_C, [GENERIC_MS_GNYQ] * 4, _BGRN_W), 10, 4,
                 GENERIC_PAN_GNYQ, aliases=("gaofen2", "gaofen-2"), notes=_generic))
# Landsat: PAN B8 (OLI 503-676 nm; ETM+ 520-900 nm). Default MS for pansharpening is blue, green,
# red (the PAN's coverage); NIR is the optional fourth band.
_register(Sensor("L8", "Landsat-8 OLI", _bands(("B2", "B3", "B4", "B5"), _BGRN_C, [GENERIC_MS_GNYQ] * 4,
                 (0.1, 0.45, 0.45, 0.0)), 16, 2, GENERIC_PAN_GNYQ,
                 aliases=("landsat8", "landsat-8", "lc08", "oli"), notes=_generic))
_register(Sensor("L9", "Landsat-9 OLI-2", _bands(("B2", "B3", "B4", "B5"), _BGRN_C, [GENERIC_MS_GNYQ] * 4,
                 (0.1, 0.45, 0.45, 0.0)), 16, 2, GENERIC_PAN_GNYQ,
                 aliases=("landsat9", "landsat-9", "lc09"), notes=_generic))
_register(Sensor("L7", "Landsat-7 ETM+", _bands(("B1", "B2", "B3", "B4"), _BGRN_C, [GENERIC_MS_GNYQ] * 4,
                 (0.05, 0.3, 0.3, 0.35)), 8, 2, GENERIC_PAN_GNYQ,
                 aliases=("landsat7", "landsat-7", "le07", "etm"), notes=_generic))
# Sentinel-2 has no PAN: the 10 m bands (B2, B3, B4, B8) or one of them serve as the
# high-resolution band for the 20 m bands. The preset describes the 10 m VNIR set.
_register(Sensor("S2", "Sentinel-2 MSI", _bands(("B2", "B3", "B4", "B8"), _BGRN_C, [GENERIC_MS_GNYQ] * 4,
                 _BGRN_W), 16, 2, GENERIC_PAN_GNYQ, aliases=("sentinel2", "sentinel-2", "s2a", "s2b", "msi"),
                 notes=_generic + "; Sentinel-2 has no PAN band"))


def get_sensor(name: str) -> Sensor:
    """Look a sensor up by key or alias, case-insensitively."""
    key = name.strip().lower().replace("_", "-")
    for s in SENSORS.values():
        if key == s.key.lower() or key in s.aliases:
            return s
    raise UsageError(
        f"unknown sensor '{name}'",
        fix="run `pansharpen sensors` for the list (" + ", ".join(SENSORS) + ")",
    )


def generic_sensor(n_bands: int, bit_depth: int, ratio: int) -> Sensor:
    """Settings for data of no known sensor: generic MTF gains, equal PAN weights."""
    names = tuple(f"Band {i + 1}" for i in range(n_bands))
    commons = ("",) * n_bands
    return Sensor("generic", "generic", _bands(names, commons, [GENERIC_MS_GNYQ] * n_bands,
                  [1.0 / n_bands] * n_bands), bit_depth, ratio, GENERIC_PAN_GNYQ, notes=_generic)
