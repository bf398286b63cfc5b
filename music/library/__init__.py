"""The music library: building it, opening it, searching it."""

from .build import (BuildResult, Unit, build_library, check_library_out, discover_sources, generated_units,
                    generator_point)
from .index import FAISS_THRESHOLD, ExactIndex, FaissHNSWIndex, make_index, normalize_rows
from .store import Library

__all__ = ["FAISS_THRESHOLD", "BuildResult", "ExactIndex", "FaissHNSWIndex", "Library", "Unit",
           "build_library", "check_library_out", "discover_sources", "generated_units", "generator_point",
           "make_index", "normalize_rows"]
