"""Deep pansharpening networks (pure torch): DLPan-Toolbox baselines and ADWM/BWNet.

Every network follows the interface of :class:`~.base.PansharpenNet`
(``forward(pan, lms, ms)``, ``features``/``head``); :data:`ARCHITECTURES` describes them and
:func:`load_model` turns a checkpoint into a ready network. See ``base.py`` for the conventions.
"""

from __future__ import annotations

from .base import INPUT_CONVENTIONS, ArchSpec, PansharpenNet
from .registry import (
    ARCHITECTURES,
    build,
    clean_state_dict,
    detect_architecture,
    load_checkpoint_file,
    load_model,
    resolve_arch,
)

__all__ = [
    "ARCHITECTURES",
    "INPUT_CONVENTIONS",
    "ArchSpec",
    "PansharpenNet",
    "build",
    "clean_state_dict",
    "detect_architecture",
    "load_checkpoint_file",
    "load_model",
    "resolve_arch",
]
