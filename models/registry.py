"""The architectures, building them, and reading their checkpoints.

* :data:`ARCHITECTURES` ``{name: ArchSpec}`` and :func:`build`;
* :func:`load_checkpoint_file` reads a state dict safely (``torch.load(weights_only=True)`` or
  safetensors; never arbitrary pickles);
* :func:`clean_state_dict` unwraps containers, strips ``module.``-style prefixes and drops the
  duplicate aliases some checkpoints carry, so that ``load_state_dict(strict=True)`` works;
* :func:`detect_architecture` names the architecture and band count from keys and shapes alone;
* :func:`load_model` does all of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ModelError
from .adwm import build_bwnet_fusionnet, build_bwnet_lagconv, build_bwnet_lgpnet
from .base import ArchSpec, PansharpenNet, state_signature
from .dicnn import build_dicnn
from .drpnn import build_drpnn
from .fusionnet import build_fusionnet
from .msdcnn import build_msdcnn
from .pannet import build_pannet
from .pnn import build_pnn
from .premix import build_premix

_SPECS = [
    ArchSpec(
        "pnn",
        build_pnn,
        "lms",
        receptive_field=8,
        size_multiple=1,
        tailor_point="conv3 (last 5x5 conv, 32->B; feat = relu(conv2))",
        band_key="conv3.weight",
        aliases=("pnn",),
        reference="Masi et al., Remote Sensing 2016",
    ),
    ArchSpec(
        "pannet",
        build_pannet,
        "highpass",
        receptive_field=24,
        size_multiple=4,
        tailor_point="conv3 (3x3, 32->B, then + lms; feat = residual backbone output)",
        band_key="conv3.weight",
        aliases=("panet",),
        reference="Yang et al., ICCV 2017",
    ),
    ArchSpec(
        "dicnn",
        build_dicnn,
        "lms",
        receptive_field=3,
        size_multiple=1,
        tailor_point="conv3 (3x3, 64->B, then + lms; feat = relu(conv2))",
        band_key="conv3.weight",
        aliases=("dicnn1",),
        reference="He et al., IEEE JSTARS 2019",
    ),
    ArchSpec(
        "msdcnn",
        build_msdcnn,
        "lms",
        receptive_field=12,
        size_multiple=1,
        tailor_point="conv5 + shallow3 (5x5 convs of the deep and shallow branches, summed, "
        "ReLU; feat = cat(deep 30 ch, shallow 32 ch))",
        band_key="conv5.weight",
        reference="Yuan et al., IEEE JSTARS 2018",
    ),
    ArchSpec(
        "drpnn",
        build_drpnn,
        "lms",
        receptive_field=33,
        size_multiple=1,
        tailor_point="conv3 (7x7, B+1->B; feat = cat(lms, pan) + conv2(...))",
        band_key="conv3.weight",
        reference="Wei et al., IEEE GRSL 2017",
    ),
    ArchSpec(
        "fusionnet",
        build_fusionnet,
        "lms",
        receptive_field=10,
        size_multiple=1,
        tailor_point="conv3 (3x3, 32->B, then + lms; feat = residual backbone output)",
        band_key="conv3.weight",
        reference="Deng et al., IEEE TGRS 2021",
    ),
    ArchSpec(
        "bwnet_fusionnet",
        build_bwnet_fusionnet,
        "lr",
        receptive_field=18,
        size_multiple=4,
        tailor_point="to_output.0 (3x3 conv, 32->B, then + bicubic MS; feat = ADWM fused feature)",
        global_context=True,
        band_key="to_output.0.weight",
        aliases=("adwm_fusionnet",),
        reference="Huang et al., CVPR 2025 (ADWM)",
    ),
    ArchSpec(
        "bwnet_lagconv",
        build_bwnet_lagconv,
        "lr",
        receptive_field=22,
        size_multiple=4,
        tailor_point="to_output.0 (LAGConv 3x3, 48->B, then + bicubic MS; feat = ADWM fused feature)",
        global_context=True,
        band_key="to_output.0.weight",
        aliases=("adwm_lagconv",),
        reference="Huang et al., CVPR 2025 (ADWM); Jin et al., AAAI 2022 (LAGConv)",
    ),
    ArchSpec(
        "bwnet_lgpnet",
        build_bwnet_lgpnet,
        "lr",
        receptive_field=34,
        size_multiple=4,
        tailor_point="to_output (three LGPConv layers 32->16->B->B, then + bicubic MS; feat = ADWM fused feature)",
        global_context=True,
        band_key="to_output.2.weight",
        aliases=("adwm_lgpnet",),
        reference="Huang et al., CVPR 2025 (ADWM); Zhao et al., IJCAI 2023 (LGPConv)",
    ),
    ArchSpec(
        "premix",
        build_premix,
        "lms",
        receptive_field=17,
        size_multiple=1,
        tailor_point="pf_ms.conv + pf_pan.conv (per-pixel kernel predictors, then filtering of lms and pan; "
        "feat = cat(f_ms, f_pan))",
        band_key="blocks.0.enc_ms.0.weight",
        band_dim=1,
        reference="Cui et al., ISPRS J. 2025 (own single-scale version; no published weights)",
    ),
]

#: The architectures by name.
ARCHITECTURES: dict[str, ArchSpec] = {s.name: s for s in _SPECS}

_ALIASES: dict[str, str] = {a: s.name for s in _SPECS for a in s.aliases}


def resolve_arch(arch: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``arch`` (a name or alias, case-insensitive, ``-`` = ``_``)."""
    key = arch.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in ARCHITECTURES:
        raise ModelError(f"unknown architecture '{arch}'", fix="choose --arch from " + ", ".join(ARCHITECTURES))
    return ARCHITECTURES[key]


def build(arch: str, n_bands: int, **kw: Any) -> PansharpenNet:
    """A freshly initialised network ``arch`` for ``n_bands`` bands (``kw`` go to the builder)."""
    spec = resolve_arch(arch)
    if int(n_bands) != n_bands or n_bands < 1:
        raise ModelError(f"invalid band count {n_bands!r} for '{spec.name}'")
    return spec.builder(int(n_bands), **kw)


# -- state dicts ----------------------------------------------------------------------------------

#: Keys under which training scripts nest the state dict.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "params", "generator")
#: Prefixes added by wrappers (DataParallel, torch.compile, Lightning modules).
_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
#: Duplicate aliases: ``pattern -> canonical`` (DLPan FusionNet/PanNet store their residual
#: blocks both as ``resN`` attributes and inside the ``backbone`` Sequential).
_ALIAS_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^res([1-9])\.(conv2[01]\.(?:weight|bias))$"), "backbone.{i}.{rest}"),
]


def _unwrap(obj: Any) -> Mapping[str, Any]:
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return obj
        obj = inner
    if not isinstance(obj, Mapping):
        raise ModelError(
            f"checkpoint holds a {type(obj).__name__}, not a state dict",
            fix="save the model's state_dict() instead of the module",
        )
    return obj


def clean_state_dict(sd: Mapping[str, Any]) -> dict[str, Tensor]:
    """A flat ``{key: tensor}`` ready for ``load_state_dict(strict=True)``.

    Unwraps ``{"state_dict": ...}``-style containers, drops non-tensor entries, strips a prefix
    shared by all keys (``module.``, ``_orig_mod.``, ``model.``, ``net.``) and resolves duplicate
    aliases (``res1.*`` of DLPan FusionNet/PanNet = ``backbone.0.*``): an alias equal to its
    canonical key is dropped, an alias without one is renamed, and an alias that differs from its
    canonical key raises :class:`ModelError`.
    """
    flat = {str(k): v for k, v in _unwrap(sd).items() if isinstance(v, Tensor)}
    changed = True
    while changed and flat:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in flat):
                flat = {k[len(p) :]: v for k, v in flat.items()}
                changed = True
    out: dict[str, Tensor] = {}
    aliases: dict[str, tuple[str, Tensor]] = {}
    for k, v in flat.items():
        for pat, template in _ALIAS_RULES:
            m = pat.match(k)
            if m:
                aliases[template.format(i=int(m.group(1)) - 1, rest=m.group(2))] = (k, v)
                break
        else:
            out[k] = v
    for canon, (k, v) in aliases.items():
        if canon in out:
            c = out[canon]
            if c.shape != v.shape or not torch.equal(c, v):
                raise ModelError(
                    f"state dict keys '{k}' and '{canon}' should hold the same tensor but differ",
                    fix="the checkpoint is inconsistent; re-export it",
                )
        else:
            out[canon] = v
    return out


def load_checkpoint_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``path``: safetensors, or a PyTorch file read with ``weights_only=True``.

    Returns the (unwrapped, not yet cleaned) ``{key: tensor}``. Raises :class:`ModelError` when
    the file is missing, unreadable, or holds pickled objects other than tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError("checkpoint not found", path=p, fix="check the path given to --weights")
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is reported the same way
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise ModelError(
                "checkpoint contains pickled objects other than tensors; it is not loaded for safety",
                path=p,
                fix="re-save it with torch.save(model.state_dict(), ...) or as .safetensors",
            ) from exc
        raise ModelError(f"cannot read checkpoint ({msg})", path=p) from exc
    flat = _unwrap(obj)
    tensors = {str(k): v for k, v in flat.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ModelError("checkpoint holds no tensors", path=p)
    return tensors


# -- detection ------------------------------------------------------------------------------------


def _matches(spec: ArchSpec, sig: dict[str, tuple[int, ...]]) -> int | None:
    """The band count for which ``spec`` has exactly the signature ``sig``, else None."""
    shape = sig.get(spec.band_key)
    if not shape or len(shape) <= spec.band_dim:
        return None
    n_bands = shape[spec.band_dim]
    try:
        with torch.device("meta"):
            model = spec.builder(n_bands)
    except Exception:  # noqa: BLE001 - a band count the builder rejects is simply no match
        return None
    return n_bands if state_signature(model.state_dict()) == sig else None


def detect_architecture(state_dict: Mapping[str, Any]) -> tuple[str, int]:
    """``(arch, n_bands)`` of a state dict, from its keys and tensor shapes alone.

    The state dict is cleaned (:func:`clean_state_dict`) and compared, key by key and shape by
    shape, with every registered architecture at the band count its ``band_key`` implies. Raises
    :class:`ModelError` asking for ``--arch`` when no architecture or more than one matches.
    """
    sig = state_signature(clean_state_dict(state_dict))
    found = [(s.name, n) for s in _SPECS if (n := _matches(s, sig)) is not None]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(f"{a} ({n} bands)" for a, n in found)
        raise ModelError(f"the checkpoint matches several architectures: {names}", fix="say which with --arch")
    raise ModelError(
        "the checkpoint matches no known architecture (keys/shapes differ)",
        fix="give --arch (one of " + ", ".join(ARCHITECTURES) + ") if it is a variant of one",
    )


def load_model(
    source: str | Path | Mapping[str, Any], arch: str | None = None, n_bands: int | None = None, **kw: Any
) -> tuple[PansharpenNet, ArchSpec, int]:
    """Build the network a checkpoint (path or state dict) holds and load it strictly, in eval mode.

    ``arch``/``n_bands`` override detection. Returns ``(model, spec, n_bands)``.
    """
    raw = load_checkpoint_file(source) if isinstance(source, (str, Path)) else source
    path = source if isinstance(source, (str, Path)) else None
    sd = clean_state_dict(raw)
    if arch is None:
        try:
            name, nb = detect_architecture(sd)
        except ModelError as exc:
            raise ModelError(exc.problem, path=path, fix=exc.fix) from None
        spec = ARCHITECTURES[name]
    else:
        spec = resolve_arch(arch)
        t = sd.get(spec.band_key)
        nb = int(t.shape[spec.band_dim]) if t is not None and t.dim() > spec.band_dim else None
    if n_bands is not None:
        if nb is not None and nb != n_bands:
            raise ModelError(f"the checkpoint is for {nb} bands, not {n_bands}", path=path)
        nb = n_bands
    if nb is None:
        raise ModelError(
            f"cannot tell the band count of this '{spec.name}' checkpoint",
            path=path,
            fix="it lacks the key " + spec.band_key,
        )
    model = spec.builder(nb, **kw)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelError(
            f"the checkpoint does not fit '{spec.name}' with {nb} bands "
            f"({first[1].strip() if len(first) > 1 else first[0]})",
            path=path,
            fix="check --arch, or omit it to detect the architecture",
        ) from None
    model.eval()
    return model, spec, nb
