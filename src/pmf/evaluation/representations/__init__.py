"""Representation spaces, one registry: frozen feature extractors that map images in [-1, 1] to feature
vectors, shared by evaluation (Frechet distances, precision/recall, the memorisation check) and by losses
that backpropagate through them.

``get_representation(name, device=..., **options)``: ``offline`` (option ``dataset``, default mnist-5k),
``inception`` (option ``weights``), ``pixels`` (option ``size``), the timm aliases of ``ALIASES`` and any
timm model name with a pretrained tag (options ``weights``, ``model_kwargs``). Unknown names and missing
weights are one PMFError line each; no entry ever runs on random weights."""

from __future__ import annotations

from ...errors import PMFError
from .base import Representation, extract, from_uint8
from .inception import InceptionRepresentation
from .offline import OfflineRepresentation, PixelRepresentation
from .timm_models import ALIASES, TimmRepresentation, TimmSpec

BUILT = ("offline", "inception", "pixels")


def representation_names() -> list[str]:
    """The registry's names (any timm model name with a pretrained tag works too)."""
    return [*BUILT, *ALIASES]


def get_representation(name: str, *, device=None, **options) -> Representation:
    """The frozen representation ``name`` on ``device`` (eval mode, no parameter requires grad)."""
    from .inception import inception
    from .offline import offline, pixels
    from .timm_models import spec_of, timm_representation

    builders = {"offline": offline, "inception": inception, "pixels": pixels}
    if name in builders:
        build = builders[name]
    elif spec_of(name) is not None:
        def build(**kw):
            return timm_representation(name, **kw)
    else:
        raise PMFError(f"unknown representation {name!r}: use one of {', '.join(representation_names())} or a "
                       "timm model name with its pretrained tag (e.g. vit_large_patch14_dinov2.lvd142m)")
    try:
        return build(device=device, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise PMFError(f"representation {name!r} does not take these options: {sorted(options)}") from None
        raise


__all__ = ["ALIASES", "InceptionRepresentation", "OfflineRepresentation", "PixelRepresentation", "Representation",
           "TimmRepresentation", "TimmSpec", "extract", "from_uint8", "get_representation", "representation_names"]
