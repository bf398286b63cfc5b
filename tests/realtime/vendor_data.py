"""Paths of the real scanner exports in tests/data/pyneal (see its SOURCE.md)."""

from __future__ import annotations

import glob
import os

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "pyneal")
#: Siemens mosaic DICOMs, one per volume, in volume order.
SIEMENS = sorted(glob.glob(os.path.join(DATA, "siemens", "*.dcm")))
#: GE slice DICOMs, in instance-number order (18 per volume).
GE = sorted(glob.glob(os.path.join(DATA, "ge", "*")), key=lambda p: int(p.rsplit(".", 1)[1]))
#: Philips XTC dumps, one PAR/REC pair per volume, in volume order (the PAR files).
PHILIPS = sorted(glob.glob(os.path.join(DATA, "philips", "*.par")))
