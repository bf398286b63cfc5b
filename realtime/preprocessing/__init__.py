"""Per-TR preprocessing, shared by the live session and offline training.

Motion correction (:mod:`.motion`): rigid-body realignment to a reference
volume, framewise displacement, and reslicing of the voxels the model needs.
The parameter convention is documented in :mod:`._rigid`.
"""

from ._rigid import framewise_displacement, params_from_matrix, params_from_spm, params_to_spm, rigid_matrix
from .motion import (
    MotionConfig,
    MotionCorrector,
    MotionReference,
    MotionResult,
    RunMotion,
    realign_run,
    reslice,
)

__all__ = [
    "rigid_matrix",
    "params_from_matrix",
    "framewise_displacement",
    "params_from_spm",
    "params_to_spm",
    "MotionConfig",
    "MotionReference",
    "MotionResult",
    "MotionCorrector",
    "RunMotion",
    "realign_run",
    "reslice",
]
