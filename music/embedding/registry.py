"""Finding embedders by name, so other models plug in without code changes here.

``get_embedder("musicnn-msd")`` gives the default. Other embedders plug in by
:func:`register_embedder`, by a ``module:factory`` import path (e.g. a CLAP
wrapper loading a local checkpoint through ``transformers``), or by an
entry point in the ``brain2music_rt.embedders`` group of an installed package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

from .base import Embedder

__all__ = ["DEFAULT_EMBEDDER", "register_embedder", "get_embedder", "embedder_from_spec", "available_embedders"]

DEFAULT_EMBEDDER = "musicnn-msd"
ENTRY_POINT_GROUP = "brain2music_rt.embedders"


def _musicnn(model: str) -> Callable[..., Embedder]:
    def make(**kwargs) -> Embedder:
        from .musicnn import MusicnnEmbedder

        return MusicnnEmbedder(model=model, **kwargs)

    return make


_REGISTRY: dict[str, Callable[..., Embedder]] = {
    "musicnn-msd": _musicnn("msd"),
    "musicnn-mtt": _musicnn("mtt"),
}


def register_embedder(name: str, factory: Callable[..., Embedder]) -> None:
    """Make ``get_embedder(name)`` call ``factory(**kwargs)``."""
    _REGISTRY[name] = factory


def available_embedders() -> list[str]:
    """Registered names plus installed entry points."""
    names = set(_REGISTRY)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_embedder(spec: str = DEFAULT_EMBEDDER, **kwargs) -> Embedder:
    """An embedder from a registered name, an entry point, or ``module:factory``.

    Raises
    ------
    ValueError
        If nothing by that name exists; lists what does.
    """
    if spec in _REGISTRY:
        factory = _REGISTRY[spec]
    else:
        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if eps:
            factory = eps[0].load()
        elif ":" in spec:
            mod, _, attr = spec.partition(":")
            try:
                factory = getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"embedder {spec!r}: cannot import {attr} from {mod} ({e})") from None
        else:
            raise ValueError(f"unknown embedder {spec!r}; available: {', '.join(available_embedders())}, "
                             "or give a 'module:factory' import path")
    emb = factory(**kwargs)
    if not isinstance(emb, Embedder):
        raise ValueError(f"embedder {spec!r} returned a {type(emb).__name__}, not a music.embedding.Embedder")
    # How to make this embedder again (threads and batch size do not change outputs).
    emb.spec = {"name": spec, "kwargs": {k: v for k, v in kwargs.items() if k not in ("threads", "batch")}}
    return emb


def embedder_from_spec(spec: dict, **kwargs) -> Embedder:
    """Recreate an embedder from the ``embedder_spec`` a manifest recorded."""
    return get_embedder(spec["name"], **{**spec.get("kwargs", {}), **kwargs})
