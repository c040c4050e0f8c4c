"""Fusion methods by name. Each module registers its classes in :data:`METHODS`."""

from __future__ import annotations

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


__all__ = ["METHODS", "Method", "SceneInfo", "SceneWindows", "TileInput", "get_method", "register"]
