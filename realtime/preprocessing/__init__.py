"""Per-TR preprocessing, shared by the live session and offline training.

motion correction (:mod:`.motion`) -> mask -> causal detrending
(:mod:`.detrend`) -> normalisation (:mod:`.normalize`) -> delay stack
(:mod:`.delays`), chained by :mod:`.pipeline`. Offline training calls the same
:class:`OnlinePreprocessor` through :func:`preprocess_run`, so a model is
trained on exactly what the live session computes. The motion parameter
convention is documented in :mod:`._rigid`.
"""

from ._rigid import framewise_displacement, params_from_matrix, params_from_spm, params_to_spm, rigid_matrix
from .delays import DelayStack, stack_delays
from .detrend import (CausalDetrender, EmaDetrender, dct_basis, detrend_run, detrend_run_offline, drift_basis,
                      ema_detrend_run, median_filter_detrend)
from .motion import (ALIGN_MATCH, Alignment, MotionConfig, MotionCorrector, MotionReference, MotionResult, RunMotion,
                     realign_run, reslice)
from .normalize import RunningNormalizer, normalize_run, zscore_run
from .pipeline import (GeometryError, OnlinePreprocessor, PreprocessConfig, RunPreprocessed, StepResult,
                       causal_detrender, check_geometry, preprocess_run)

__all__ = [
    "CausalDetrender",
    "DelayStack",
    "EmaDetrender",
    "GeometryError",
    "MotionConfig",
    "Alignment",
    "ALIGN_MATCH",
    "MotionCorrector",
    "MotionReference",
    "MotionResult",
    "OnlinePreprocessor",
    "PreprocessConfig",
    "RunMotion",
    "RunPreprocessed",
    "RunningNormalizer",
    "StepResult",
    "causal_detrender",
    "check_geometry",
    "dct_basis",
    "detrend_run",
    "detrend_run_offline",
    "drift_basis",
    "ema_detrend_run",
    "framewise_displacement",
    "median_filter_detrend",
    "normalize_run",
    "params_from_matrix",
    "params_from_spm",
    "params_to_spm",
    "preprocess_run",
    "realign_run",
    "reslice",
    "rigid_matrix",
    "stack_delays",
    "zscore_run",
]
