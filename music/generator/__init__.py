"""A procedural music generator for the 10 GTZAN genres of ds003720.

Each genre is a region of a parameter space (tempo, key and mode, chord
progression, General MIDI instrumentation, drum pattern, bass line, note
density, register and dynamics) sampled per track: see :mod:`.styles`.
``(genre, track, seed)`` determines a clip bit for bit.

- :func:`generate_clip` composes, renders, fades and normalises one clip.
- :func:`gtzan_standin` gives a 30 s stand-in for a GTZAN track name such as
  ``"blues.00098"`` (the names in ds003720's events).
- :class:`GeneratorStream` continues a piece chunk by chunk for realtime use.
- :func:`sample_params` and :func:`compose` expose the two stages.

Modules: ``styles`` (the genre regions), ``harmony`` (scales and chords),
``drums`` (drum patterns), ``parts`` (what the part writers share), ``bass``,
``chords`` (comping and pads) and ``melody`` (the part writers), ``compose``
(bars -> PrettyMIDI -> audio) and ``stream`` (incremental mode).
"""

from .compose import Composer, compose, generate_clip, gtzan_standin, parse_gtzan_name
from .stream import GeneratorStream
from .styles import GENRES, SHARED_PROGRAMS, STYLES, Params, Style, sample_params

__all__ = [
    "GENRES",
    "SHARED_PROGRAMS",
    "STYLES",
    "Style",
    "Params",
    "sample_params",
    "Composer",
    "compose",
    "generate_clip",
    "gtzan_standin",
    "parse_gtzan_name",
    "GeneratorStream",
]
