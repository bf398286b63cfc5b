"""Render one music21 corpus work to a WAV with the soundfont (for `b2m library search --like`).

Usage: .venv/bin/python tools/render_music21.py bach/bwv3.6 OUT.wav
"""

import os
import sys

import pretty_midi
from music21 import converter, corpus

from music.audio import write_audio
from music.render import render_midi

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    score = converter.parse(str(corpus.getWork(sys.argv[1])))
    midi = score.write("midi")
    pm = pretty_midi.PrettyMIDI(midi)
    os.remove(midi)
    write_audio(sys.argv[2], render_midi(pm, sr=22050), 22050)
    print(sys.argv[2])
