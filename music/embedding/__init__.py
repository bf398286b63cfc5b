"""Music embeddings: the space the decoder predicts into."""

from .base import Embedder, Embedding
from .registry import DEFAULT_EMBEDDER, available_embedders, embedder_from_spec, get_embedder, register_embedder

__all__ = ["DEFAULT_EMBEDDER", "Embedder", "Embedding", "available_embedders", "embedder_from_spec", "get_embedder",
           "register_embedder"]
