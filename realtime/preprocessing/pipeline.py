"""The whole per-TR preprocessing chain, and the same chain over a run.

motion correction -> mask -> detrend -> normalise -> delay stack

:class:`OnlinePreprocessor` does one volume per :meth:`~OnlinePreprocessor.process`
call. :func:`preprocess_run` feeds a whole run through the same object when
the configuration is causal, so offline training sees exactly what the live
session will compute. Non-causal configurations (whole-run regression,
Brain2Music's 240 s median filter, whole-run z-score) exist for comparison
only and are refused for realtime bundles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from .delays import DelayStack, stack_delays
from .detrend import CausalDetrender, EmaDetrender, detrend_run_offline, median_filter_detrend, step_run
from .motion import MotionConfig, MotionCorrector, MotionResult, realign_run
from .normalize import RunningNormalizer, zscore_run
from .qc import Dvars, RunningTsnr, tsnr

__all__ = ["PreprocessConfig", "GeometryError", "check_geometry", "causal_detrender", "OnlinePreprocessor",
           "StepResult", "RunPreprocessed", "preprocess_run"]

DETREND_MODES = ("causal", "ema", "none", "offline", "median240")
NORM_MODES = ("running", "baseline", "bundle", "none", "psc", "zscore_run")


class GeometryError(ValueError):
    """The model's mask does not fit the incoming volumes."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that defines the preprocessing; stored in every model bundle.

    Attributes
    ----------
    motion : bool
        Rigid-body motion correction before masking.
    motion_config : MotionConfig
    detrend : {"causal", "ema", "none", "offline", "median240"}
        ``causal``: incremental GLM on volumes so far (realtime).
        ``ema`` (the default): minus an exponential moving average of the
        volumes so far (realtime; :class:`.detrend.EmaDetrender`). On the
        simulated subjects it kept about 1.5x the encoding R^2 of the causal
        GLM (``offline_training/EXPERIMENTS.md``, session 13).
        ``offline``: the polynomial regressors fit on the whole run; ``median240``:
        Brain2Music's 240 s running median (both need the future).
    poly_order : int
        Polynomial drift order of the GLM (``causal`` and ``offline``).
    ema_tau_s : float
        Time constant of the ``ema`` high-pass, seconds.
    motion_regressors : bool
        Add the 6 motion parameters to the GLM.
    normalize : {"running", "baseline", "bundle", "none", "psc", "zscore_run"}
        See :mod:`realtime.preprocessing.normalize`; ``zscore_run`` is offline
        only; ``psc`` (percent signal change of the EMA baseline) needs
        ``detrend="ema"``.
    n_baseline : int
        Baseline window for ``normalize="baseline"``, volumes.
    delays : tuple of int
        Delay stack in TRs.
    """

    motion: bool = True
    motion_config: MotionConfig = field(default_factory=MotionConfig)
    detrend: Literal["causal", "ema", "none", "offline", "median240"] = "ema"
    poly_order: int = 2
    ema_tau_s: float = 60.0
    motion_regressors: bool = False
    normalize: Literal["running", "baseline", "bundle", "none", "psc", "zscore_run"] = "running"
    n_baseline: int = 20
    delays: tuple = (2, 3, 4)

    def __post_init__(self):
        if self.detrend not in DETREND_MODES:
            raise ValueError(f"detrend must be one of {DETREND_MODES}, got {self.detrend!r}")
        if self.normalize not in NORM_MODES:
            raise ValueError(f"normalize must be one of {NORM_MODES}, got {self.normalize!r}")
        if self.motion_regressors and not self.motion:
            raise ValueError("motion_regressors needs motion=True")
        if self.motion_regressors and self.detrend not in ("causal", "offline"):
            raise ValueError(f"motion_regressors needs detrend='causal' or 'offline' (a GLM to carry them); "
                             f"got detrend={self.detrend!r}")
        if self.normalize == "psc" and self.detrend != "ema":
            raise ValueError(f"normalize='psc' is the percent change of the EMA baseline; it needs "
                             f"detrend='ema', got detrend={self.detrend!r}")
        if not (np.isfinite(self.ema_tau_s) and self.ema_tau_s > 0):
            raise ValueError(f"ema_tau_s must be a positive number of seconds; got {self.ema_tau_s!r}")
        object.__setattr__(self, "delays", tuple(int(d) for d in self.delays))

    @property
    def causal(self) -> bool:
        """True if every step uses only past and present volumes (deployable live)."""
        return self.detrend in ("causal", "ema", "none") and self.normalize != "zscore_run"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["motion_config"] = self.motion_config.to_dict()
        d["delays"] = list(self.delays)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        d = dict(d)
        d["motion_config"] = MotionConfig(**d.get("motion_config", {}))
        d["delays"] = tuple(d.get("delays", (2, 3, 4)))
        return cls(**d)

    def offline_variant(self) -> "PreprocessConfig":
        """The non-causal counterpart (whole-run regression and z-score), for comparison."""
        return replace(self, detrend="offline", normalize="zscore_run")


def check_geometry(mask_shape, mask_affine, shape, affine, *, atol_mm: float = 1e-3, what: str = "run") -> None:
    """Refuse, with a clear message, a mask that does not fit the volumes.

    Raises
    ------
    GeometryError
        If the grids differ in shape or the affines by more than ``atol_mm``.
    """
    if tuple(mask_shape) != tuple(shape[:3]):
        raise GeometryError(f"the model's mask has shape {tuple(mask_shape)} but the {what}'s volumes are "
                            f"{tuple(shape[:3])}: this model was trained on another acquisition grid")
    diff = np.abs(np.asarray(mask_affine, float) - np.asarray(affine, float)).max()
    if diff > atol_mm:
        raise GeometryError(f"the model's mask affine differs from the {what}'s by up to {diff:.4g} mm: the "
                            "volumes are on another grid (different FOV or slice prescription); use a model "
                            "trained on this grid")


@dataclass
class StepResult:
    """One volume through the chain.

    Attributes
    ----------
    t : int
        0-based volume count within the run.
    x : ndarray of shape (len(delays) * n_voxels,), float32, or None
        The decoder input (a reused buffer), None until the delay stack is full.
    values : ndarray of shape (n_voxels,), float32
        This volume after normalisation (a reused buffer).
    motion : MotionResult or None
    dvars_pct : float
        DVARS of the motion-corrected voxel values from the previous volume,
        percent of their mean (:mod:`.qc`; 0 for the first volume).
    """

    t: int
    x: np.ndarray | None
    values: np.ndarray
    motion: MotionResult | None
    dvars_pct: float = 0.0


def causal_detrender(config: PreprocessConfig, n_voxels: int, n_volumes: int, tr_s: float | None = None):
    """The per-volume detrender of a causal ``config``: a fresh :class:`.detrend.CausalDetrender` (``"causal"``,
    with the 6 motion parameters as extra regressors if ``motion_regressors``), :class:`.detrend.EmaDetrender`
    (``"ema"``; needs ``tr_s``, as its time constant is in seconds), or None (``"none"``)."""
    if config.detrend == "causal":
        return CausalDetrender(n_voxels, n_volumes, config.poly_order, 6 if config.motion_regressors else 0)
    if config.detrend == "ema":
        if tr_s is None or not tr_s > 0:
            raise ValueError(f"detrend='ema' needs the TR in seconds (tr_s) for its {config.ema_tau_s:g} s "
                             f"time constant; got tr_s={tr_s!r}")
        return EmaDetrender(n_voxels, config.ema_tau_s / tr_s)
    if config.detrend == "none":
        return None
    raise ValueError(f"detrend={config.detrend!r} needs the whole run; it has no per-volume detrender")


class OnlinePreprocessor:
    """The per-TR chain for one run.

    Parameters
    ----------
    mask : ndarray of bool, shape (nx, ny, nz)
        The voxels the model needs. Voxel order everywhere is C order of the
        mask (``np.argwhere(mask)``, ``volume[mask]``).
    affine : ndarray of shape (4, 4)
        The mask's (and the runs') voxel -> mm matrix.
    config : PreprocessConfig
        Must be causal.
    n_volumes : int
        Expected run length (time axis of the drift basis).
    reference : ndarray of shape (nx, ny, nz), optional
        Motion reference; default the run's first volume. A model bundle
        carries the training reference so live runs are aligned to the mask,
        even from another session: with a reference and motion correction,
        :meth:`check` accepts volumes on another grid (another day's slice
        prescription), and the run's first volume is searched for
        (:meth:`.motion.MotionCorrector.align`) if it lies far from the
        reference.
    norm_mean, norm_std : ndarray of shape (n_voxels,), optional
        Training statistics for ``normalize="bundle"``.
    tr_s : float, optional
        TR in seconds; needed by ``detrend="ema"`` (its time constant is in
        seconds).
    """

    def __init__(self, mask: np.ndarray, affine: np.ndarray, config: PreprocessConfig, n_volumes: int,
                 reference: np.ndarray | None = None, norm_mean=None, norm_std=None, tr_s: float | None = None):
        if not config.causal:
            raise ValueError(f"realtime preprocessing must be causal; detrend={config.detrend!r}, "
                             f"normalize={config.normalize!r} need the whole run")
        self.mask = np.asarray(mask, dtype=bool)
        self.affine = np.asarray(affine, dtype=np.float64)
        self.config = config
        self.n_voxels = int(self.mask.sum())
        self.n_volumes = n_volumes
        self._motion: MotionCorrector | None = None
        self._reference = reference
        self.grid: tuple | None = None  # the volumes' (shape, affine), when not the mask's
        if config.motion and reference is not None:
            self._make_motion(reference)
        self._raw = np.empty(self.n_voxels, np.float32)
        self._detrend = causal_detrender(config, self.n_voxels, n_volumes, tr_s)
        self._norm = RunningNormalizer(self.n_voxels, config.normalize, norm_mean, norm_std, config.n_baseline)
        self._stack = DelayStack(self.n_voxels, config.delays)
        self._dvars = Dvars(self.n_voxels)
        #: the run's temporal SNR so far (:class:`.qc.RunningTsnr`): ``tsnr.median()``, ``tsnr.voxels()``
        self.tsnr = RunningTsnr(self.n_voxels)
        self.t = 0

    def _make_motion(self, reference, grid=None, *, given: bool = True) -> None:
        """``given``: the reference came with the model (another session), not from this run's first volume."""
        check_geometry(self.mask.shape, self.affine, np.shape(reference), self.affine, what="reference")
        self._motion = MotionCorrector(reference, self.affine, config=self.config.motion_config,
                                       reslice_mask=self.mask, grid=grid, align_first=given)

    @property
    def alignment(self):
        """The run's first volume found against the reference (:class:`.motion.Alignment`), or None."""
        return None if self._motion is None else self._motion.alignment

    def check(self, shape, affine) -> None:
        """Check a run's geometry against the mask before its first volume.

        Volumes on another grid are accepted when they can be aligned to the
        reference (motion correction on, a reference given): they are then
        registered and resliced onto the mask's grid.

        Raises
        ------
        GeometryError
            If the grids differ and nothing can align them.
        """
        try:
            check_geometry(self.mask.shape, self.affine, shape, affine)
        except GeometryError as e:
            if not (self.config.motion and self._reference is not None):
                raise GeometryError(f"{e} (a model with motion correction and a reference volume aligns "
                                    "another grid; this one has none)") from None
            self.grid = (tuple(int(n) for n in shape[:3]), np.asarray(affine, np.float64))
            self._make_motion(self._reference, self.grid)

    def process(self, volume: np.ndarray, *, stand_in: bool = False) -> StepResult:
        """Run one volume of shape (nx, ny, nz) (any real dtype) through the chain.

        ``stand_in``: the volume repeats an earlier one in place of a missing
        volume (the live session's rule). It goes through the filters, so the
        delays stay in step, but it is no measurement: it leaves the tSNR and
        DVARS as they were (its DVARS is NaN), since a repeated volume would
        lower the variance they measure.
        """
        expected = self.mask.shape if self.grid is None else self.grid[0]
        if volume.shape[:3] != expected:
            raise GeometryError(f"volume shape {volume.shape} does not match the run's grid {expected}")
        motion = None
        if self.config.motion:
            if self._motion is None:
                self._make_motion(volume, given=False)
            motion = self._motion.update(volume, out=self._raw)
            values = self._raw
        else:
            values = self._raw
            np.copyto(values, volume[self.mask], casting="unsafe")
        # on the corrected voxels, before the filters change them
        dvars = float("nan") if stand_in else self._dvars.step(values)
        if self._detrend is not None:
            values = self._detrend.step(values, motion.params if self.config.motion_regressors else None)
        if not stand_in:
            self.tsnr.step(self._raw, values)  # before normalisation, which may work in place
        values = self._norm.step(values, self._detrend.baseline if self.config.normalize == "psc" else None)
        x = self._stack.push(values)
        self.t += 1
        return StepResult(t=self.t - 1, x=x, values=values, motion=motion, dvars_pct=dvars)


@dataclass
class RunPreprocessed:
    """A run through the chain.

    Attributes
    ----------
    x : ndarray of shape (n_volumes, len(delays) * n_voxels), float32, or None
        Decoder inputs; row t decodes the moment ``t - max(delays)``; rows
        before that moment lies in the run are NaN. None if not requested.
    values : ndarray of shape (n_volumes, n_voxels), float32
        Normalised voxel values per volume.
    motion_params : ndarray of shape (n_volumes, 6) or None
    fd : ndarray of shape (n_volumes,) or None
    flagged : ndarray of shape (n_volumes,), bool
    tsnr : ndarray of shape (n_voxels,), float64
        Each voxel's temporal SNR over the run (:func:`.qc.tsnr`, the running
        figure at the run's last volume for a causal chain).
    tsnr_curve : ndarray of shape (n_volumes,), float64, or None
        With ``tsnr_curve=True`` (causal chains): the running median a live
        session reports at each volume (:meth:`.qc.RunningTsnr.median`; NaN
        for the first volumes).
    """

    x: np.ndarray | None
    values: np.ndarray
    motion_params: np.ndarray | None
    fd: np.ndarray | None
    flagged: np.ndarray
    tsnr: np.ndarray | None = None
    tsnr_curve: np.ndarray | None = None


def preprocess_run(data, affine, mask: np.ndarray, config: PreprocessConfig, *, tr_s: float | None = None,
                   reference: np.ndarray | None = None, norm_mean=None, norm_std=None,
                   stack: bool = True, progress=None, tsnr_curve: bool = False) -> RunPreprocessed:
    """Preprocess a whole run.

    Causal configurations call :class:`OnlinePreprocessor` volume by volume
    (the live code); non-causal ones use the whole-run variants.

    Parameters
    ----------
    data : array-like of shape (nx, ny, nz, n_volumes)
        The run (a nibabel ``dataobj`` works: it is read sequentially, once).
    tr_s : float, optional
        TR in seconds; needed by ``detrend="ema"`` and ``"median240"`` (both
        are defined in seconds).
    stack : bool
        Also build the delay-stacked inputs (``x``); skip for large voxel sets
        when the stack is built later on a selected subset (the same rows:
        stacking is only indexing).
    progress : callable, optional
        ``progress(done, total)`` per volume.
    tsnr_curve : bool
        Also keep the running median tSNR of every volume (causal chains only).
    """
    from ..nifti_io import iter_volumes  # a .nii.gz proxy is read once, not once per volume

    shape = tuple(data.shape)
    check_geometry(mask.shape, affine, shape, affine)
    n = shape[3]
    if config.detrend == "median240" and not (tr_s is not None and tr_s > 0):
        raise ValueError(f"detrend='median240' is defined in seconds: pass the run's TR as tr_s (got {tr_s!r})")
    if config.causal:
        pre = OnlinePreprocessor(mask, affine, config, n, reference, norm_mean, norm_std, tr_s=tr_s)
        n_vox = pre.n_voxels
        x = np.full((n, len(config.delays) * n_vox), np.nan, np.float32) if stack else None
        values = np.empty((n, n_vox), np.float32)
        params = np.empty((n, 6)) if config.motion else None
        fd = np.empty(n) if config.motion else None
        flagged = np.zeros(n, bool)
        curve = np.full(n, np.nan) if tsnr_curve else None
        for t, vol in enumerate(iter_volumes(data)):
            r = pre.process(vol)
            values[t] = r.values
            if curve is not None:
                curve[t] = pre.tsnr.median()
            if r.x is not None and x is not None:
                x[t] = r.x
            if progress is not None:
                progress(t + 1, n)
            if r.motion is not None:
                params[t], fd[t], flagged[t] = r.motion.params, r.motion.fd, r.motion.flagged
        return RunPreprocessed(x=x, values=values, motion_params=params, fd=fd, flagged=flagged,
                               tsnr=pre.tsnr.voxels(), tsnr_curve=curve)
    if tsnr_curve:
        raise ValueError("tsnr_curve is the live session's running figure: it needs a causal configuration")
    # non-causal comparison path
    if config.motion:
        rm = realign_run(data, affine, config=config.motion_config, reslice_mask=mask, reference=reference)
        values, params, fd, flagged = rm.values, rm.params, rm.fd, rm.flagged
    else:
        values = np.stack([vol[mask] for vol in iter_volumes(data)]).astype(np.float32)
        params = fd = None
        flagged = np.zeros(n, bool)
    extra = params if (config.motion_regressors and params is not None) else None
    raw = values
    if config.detrend == "offline":
        values = detrend_run_offline(values, config.poly_order, extra)
    elif config.detrend == "median240":
        values = median_filter_detrend(values, tr_s, 240.0)
    elif config.detrend in ("causal", "ema"):  # the live detrenders, before a whole-run normalisation
        values = step_run(causal_detrender(config, values.shape[1], n, tr_s), values, extra)
    per_voxel = tsnr(raw, values)
    if config.normalize == "zscore_run":
        values = zscore_run(values)
    elif config.normalize != "none":
        from .normalize import normalize_run

        values = normalize_run(values, config.normalize, norm_mean, norm_std, config.n_baseline)
    return RunPreprocessed(x=stack_delays(values, config.delays) if stack else None, values=values,
                           motion_params=params, fd=fd, flagged=flagged, tsnr=per_voxel)
