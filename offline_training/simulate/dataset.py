"""Write a simulated ds003720-style BIDS dataset and its ground truth.

Layout (``DS`` is the output folder)::

    DS/dataset_description.json  README  CHANGES  participants.tsv  participants.json
    DS/stimuli/<genre>.<track:05d>.wav                      stand-in GTZAN tracks
    DS/sub-XXX/func/sub-XXX_task-{Training,Test}_run-NN_bold.nii.gz
    DS/sub-XXX/func/sub-XXX_task-{Training,Test}_run-NN_bold.json    ds003720's, byte for byte
    DS/sub-XXX/func/sub-XXX_task-{Training,Test}_run-NN_events.tsv   ds003720's, byte for byte
    DS/derivatives/simulation/
        dataset_description.json  config.json  calibration.json
        features/task-<task>_run-NN_features.tsv           stimulus features per TR
        sub-XXX/sub-XXX_desc-{brain,auditory}_mask.nii.gz  sub-XXX_desc-{strength,s0,bias}_map.nii.gz
        sub-XXX/sub-XXX_tuning.tsv                          one row per responsive voxel
        sub-XXX/sub-XXX_simulation.json                     head placement, anatomy, noise maps
        sub-XXX/sub-XXX_task-<task>_run-NN_motion.tsv       true motion per volume (+ FD)
        sub-XXX/sub-XXX_task-<task>_run-NN_desc-response.npy noise-free response, (n_volumes, n_voxels)
        sub-XXX/sub-XXX_task-<task>_run-NN_physio.json      cardiac and respiratory rates

The BOLD images are streamed to disk one volume at a time (a ds003720-size run
is 513 MB of int16; nothing holds it whole): a NIfTI-1 header, then each
volume as int16 in Fortran order through gzip (level 1, no time stamp, no file
name). Every byte depends only on the configuration and the seed.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from music.features import FEATURE_NAMES
from offline_training.bids import RunFiles, find_runs, read_events, read_sidecar

from .auditory import AuditoryRegion, auditory_region
from .geometry import GRID_PRESETS, Anatomy, Grid, build_anatomy, make_grid, sample_head_placement
from .noise import MOTION_PRESETS, NoiseConfig, RunNoise, build_noise_maps, move_volume, simulate_motion
from .response import GENRES, Tuning, sample_tuning, voxel_responses
from .stimulus import RunStimulus, run_stimulus, stimulus_names, write_stimuli

__all__ = [
    "SIMULATOR_VERSION",
    "DEFAULT_GAIN_PCT",
    "SimulationConfig",
    "SimulatedRun",
    "SimulationResult",
    "default_metadata_dir",
    "read_simulation_config",
    "simulate_dataset",
    "slice_times_for_grid",
]

#: The ground-truth configuration, relative to the dataset root; written last, so it marks a finished simulation.
SIMULATION_CONFIG = Path("derivatives") / "simulation" / "config.json"
#: Version of the generative model; part of every dataset's description.
SIMULATOR_VERSION = "1.0"
#: Default response gain, percent signal change per unit drive at strength 1
#: (calibrated: see :mod:`.calibration`).
DEFAULT_GAIN_PCT = 1.6
_N_VOLUMES = 410
_TR_S = 1.5
_TASK_RUNS = {"Training": 12, "Test": 6}
_GZIP_LEVEL = 1
_INT16_MAX = 32767

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that determines a simulated dataset (with the stimuli, which are fixed).

    Attributes
    ----------
    grid : {"full", "small", "tiny"}
        Acquisition grid (:data:`.geometry.GRID_PRESETS`).
    subjects : int
        Number of participants (``sub-001`` ...).
    seed : int
        Master seed; each subject, run and component draws from its own
        stream keyed by (seed, subject, run, component), so a subset of runs
        is identical to the same runs of the full dataset.
    train_runs, test_runs : int
        Simulate Training runs 1..train_runs and Test runs 1..test_runs.
    motion : {"none", "typical", "bad"}
        Head-motion preset (:data:`.noise.MOTION_PRESETS`).
    noise : NoiseConfig
        Noise settings, including the median temporal SNR.
    gain_pct : float
        Response gain (percent signal change per unit drive at strength 1).
    genre_share : float
        Share of the genre-category component in the drive.
    interp_order : int
        Spline order used to move the head (1 = trilinear).
    n_volumes : int or None
        Volumes per run; None means ds003720's 410. Fewer is for tests only
        (the events, copied verbatim, still describe 615 s).
    """

    grid: Literal["full", "small", "tiny"] = "full"
    subjects: int = 1
    seed: int = 0
    train_runs: int = 12
    test_runs: int = 6
    motion: Literal["none", "typical", "bad"] = "typical"
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    gain_pct: float = DEFAULT_GAIN_PCT
    genre_share: float = 0.3
    interp_order: int = 1
    n_volumes: int | None = None

    def __post_init__(self):
        def whole(name, lo, hi=None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
                rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                raise ValueError(f"{name} must be a whole number {rng}; got {v!r}")

        if self.grid not in GRID_PRESETS:
            raise ValueError(f"grid must be one of {', '.join(map(repr, GRID_PRESETS))}; got {self.grid!r}")
        if self.motion not in MOTION_PRESETS:
            raise ValueError(f"motion must be one of {', '.join(map(repr, MOTION_PRESETS))}; got {self.motion!r}")
        whole("subjects", 1, 999)
        whole("seed", 0)
        whole("train_runs", 0, _TASK_RUNS["Training"])
        whole("test_runs", 0, _TASK_RUNS["Test"])
        whole("interp_order", 0, 5)
        if self.train_runs + self.test_runs == 0:
            raise ValueError("nothing to simulate: train_runs and test_runs are both 0")
        if self.n_volumes is not None:
            whole("n_volumes", 2, _N_VOLUMES)
        if not (math.isfinite(self.gain_pct) and self.gain_pct >= 0):
            raise ValueError(f"gain_pct must be a finite number >= 0; got {self.gain_pct!r}")

    @property
    def volumes(self) -> int:
        return _N_VOLUMES if self.n_volumes is None else int(self.n_volumes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["noise"] = self.noise.to_dict()
        d["motion_preset"] = asdict(MOTION_PRESETS[self.motion])
        return d


@dataclass(frozen=True)
class SimulatedRun:
    """One written run (paths relative to the dataset root)."""

    subject: str
    task: str
    run: int
    bold: str
    n_volumes: int
    fd_mean_mm: float
    fd_max_mm: float
    n_spikes: int  # volumes with framewise displacement > 0.5 mm


@dataclass
class SimulationResult:
    """What :func:`simulate_dataset` wrote.

    Attributes
    ----------
    root : Path
    config : SimulationConfig
    runs : list of SimulatedRun
    subjects : list of str
    n_responsive : dict of str to int
        Responsive voxels per subject.
    stimuli : list of str
        GTZAN names of the stand-ins written.
    run_stimuli : dict
        ``(task, run) -> RunStimulus``, kept for the calibration.
    """

    root: Path
    config: SimulationConfig
    runs: list[SimulatedRun]
    subjects: list[str]
    n_responsive: dict[str, int]
    stimuli: list[str]
    run_stimuli: dict = field(repr=False, default_factory=dict)


def default_metadata_dir() -> Path:
    """Where ds003720's real metadata is read from.

    ``$B2M_DS003720`` if set, else the copy that ships in this package
    (``offline_training/simulate/ds003720``, CC0; see its PROVENANCE.md).
    """
    env = os.environ.get("B2M_DS003720")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "ds003720"


def read_simulation_config(ds: os.PathLike | str) -> dict | None:
    """How ``ds`` was simulated: its ``derivatives/simulation/config.json``.

    Parameters
    ----------
    ds : path-like
        A dataset root.

    Returns
    -------
    dict or None
        ``{"simulator_version", "config": SimulationConfig.to_dict(), "feature_names", "genres"}``;
        None if ``b2m simulate`` did not write ``ds`` or did not finish it (the
        file is written last, atomically).

    Raises
    ------
    ValueError
        If the file exists but is not a JSON object (names the file).
    """
    path = Path(ds) / SIMULATION_CONFIG
    if not path.is_file():
        return None
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); simulate the dataset again with b2m simulate") from None
    if not isinstance(conf, dict) or not isinstance(conf.get("config"), dict):
        raise ValueError(f"{path}: expected an object with a 'config' object; simulate the dataset again "
                         "with b2m simulate")
    return conf


def slice_times_for_grid(slice_timing_s, grid: Grid) -> np.ndarray:
    """Acquisition time of each grid slice within the TR, seconds, shape (Z,).

    The sidecar's ``SliceTiming`` describes ds003720's 68 slices of 2 mm; a
    coarser grid slice takes the time of the 2 mm slice containing its centre.
    """
    st = np.asarray(slice_timing_s, dtype=np.float64)
    nz = grid.shape[2]
    if st.shape[0] == nz:
        return st
    centre = (np.arange(nz) + 0.5) * grid.voxel_mm * st.shape[0] / (nz * grid.voxel_mm)
    return st[np.clip(np.floor(centre).astype(int), 0, st.shape[0] - 1)]


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, key)]))


_TASK_ID = {"Training": 1, "Test": 2}
_COMP = {"placement": 1, "anatomy": 2, "auditory": 3, "tuning": 4, "noise_maps": 5, "motion": 6, "run_noise": 7}


class _NiftiStream:
    """Write a 4-D int16 NIfTI-1 (.nii.gz) volume by volume, deterministically and atomically."""

    def __init__(self, path: Path, grid: Grid, n_volumes: int, tr_s: float, descrip: str):
        hdr = nib.Nifti1Header()
        hdr.set_data_shape(grid.shape + (n_volumes,))
        hdr.set_data_dtype(np.int16)
        hdr.set_qform(grid.affine, code=1)
        hdr.set_sform(grid.affine, code=1)
        hdr.set_zooms((grid.voxel_mm,) * 3 + (tr_s,))
        hdr.set_xyzt_units("mm", "sec")
        hdr.set_dim_info(freq=0, phase=1, slice=2)
        hdr.set_slope_inter(1.0, 0.0)
        hdr["descrip"] = descrip.encode()[:79]
        hdr["vox_offset"] = 352
        self.path, self.n_volumes, self.shape = path, n_volumes, grid.shape
        self.tmp = path.with_name(f".{path.name}.tmp")
        self._raw = open(self.tmp, "wb")
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=_GZIP_LEVEL, mtime=0)
        buf = io.BytesIO()
        hdr.write_to(buf)
        if buf.tell() != 352:
            raise RuntimeError(f"NIfTI header is {buf.tell()} bytes, expected 352")
        self._gz.write(buf.getvalue())
        self.written = 0

    def write(self, volume: np.ndarray) -> None:
        if volume.shape != self.shape or volume.dtype != np.int16:
            raise ValueError(f"volume must be int16 of shape {self.shape}; got {volume.dtype} {volume.shape}")
        self._gz.write(volume.tobytes(order="F"))
        self.written += 1

    def close(self) -> None:
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        if self.written != self.n_volumes:
            os.unlink(self.tmp)
            raise RuntimeError(f"{self.path}: wrote {self.written} of {self.n_volumes} volumes")
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._gz.close()
            self._raw.close()
        finally:
            if self.tmp.exists():
                os.unlink(self.tmp)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _fmt(x) -> str:
    if isinstance(x, (str, np.str_)):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return repr(float(x))


def _write_tsv(path: Path, header: list[str], rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([_fmt(v) for v in row])
    _write_text(path, buf.getvalue())


def _save_nifti(path: Path, data: np.ndarray, grid: Grid) -> None:
    img = nib.Nifti1Image(data, grid.affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(grid.affine, code=1)
    img.header.set_sform(grid.affine, code=1)
    nib.save(img, str(path))


def _select_runs(metadata_dir: Path, config: SimulationConfig) -> list[RunFiles]:
    if not metadata_dir.is_dir():
        raise FileNotFoundError(
            f"{metadata_dir}: ds003720 metadata not found. b2m simulate copies the real events.tsv and "
            "bold.json of OpenNeuro ds003720 (sub-001); point $B2M_DS003720 (or metadata_dir) at a folder "
            "holding sub-001/func/sub-001_task-*_run-*_{events.tsv,bold.json}")
    runs = find_runs(metadata_dir, "001", require_bold=False)
    want = {"Training": config.train_runs, "Test": config.test_runs}
    chosen = [r for r in runs if r.run <= want[r.task]]
    for task, n in want.items():
        have = sorted(r.run for r in chosen if r.task == task)
        if have != list(range(1, n + 1)):
            raise FileNotFoundError(f"{metadata_dir}: expected {task} runs 1..{n} of sub-001, found {have}")
    return chosen


def _dataset_files(root: Path, config: SimulationConfig, subjects: list[str], n_resp: dict) -> None:
    desc = {
        "Name": "Music Genre fMRI Dataset (ds003720) - SIMULATED participants",
        "BIDSVersion": "1.8.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["brain2music-rt b2m simulate"],
        "HowToAcknowledge": "Simulated data. The design, events and sidecars are those of Nakai, Koide-Majima "
                            "and Nishimoto (2021), Brain and Behavior 11(1), e01936 (OpenNeuro ds003720).",
        "ReferencesAndLinks": [
            "Nakai, Koide-Majima, and Nishimoto (2021). Correspondence of categorical and feature-based "
            "representations of music in the human brain. Brain and Behavior. 11(1), e01936. "
            "https://doi.org/10.1002/brb3.1936"],
        "GeneratedBy": [{"Name": "brain2music-rt b2m simulate", "Version": SIMULATOR_VERSION,
                         "Description": "Simulated BOLD of music-responsive auditory cortex with realistic noise "
                                        "and head motion; see derivatives/simulation."}],
        "SourceDatasets": [{"DOI": "10.18112/openneuro.ds003720.v1.0.0",
                            "URL": "https://openneuro.org/datasets/ds003720"}],
    }
    _write_json(root / "dataset_description.json", desc)
    shape, vox = GRID_PRESETS[config.grid]
    readme = f"""SIMULATED stand-in for the Music Genre fMRI Dataset (OpenNeuro ds003720)

Nothing in this folder was measured. The BOLD images were written by
`b2m simulate` (brain2music-rt, simulator version {SIMULATOR_VERSION}); the file layout, the
events.tsv files and the bold.json sidecars are those of ds003720 (sub-001's,
copied byte for byte for every simulated subject, but for SliceTiming on a
coarser grid; the events are the same for all five real subjects).

- Grid: {config.grid}, {shape[0]}x{shape[1]}x{shape[2]} voxels at {vox:g} mm, int16, TR 1.5 s,
  {config.volumes} volumes per run.
- Subjects: {", ".join("sub-" + s for s in subjects)}; seed {config.seed}.
- Runs: Training 1-{config.train_runs}, Test 1-{config.test_runs} (of 12 and 6).
- Motion preset: {config.motion}; median temporal SNR: {config.noise.tsnr:g}.
- stimuli/: procedural stand-ins for the GTZAN tracks named in the events
  (30 s, 22050 Hz, 16-bit mono, named as GTZAN's files), not the GTZAN audio.
  Each event plays [start, end) of its track with 2 s linear fades at -20 dBFS RMS.
- derivatives/simulation/: the ground truth (tuning, HRFs, masks, true head
  motion, noise-free responses, stimulus features, configuration) and the
  calibration of the simulation against published encoding accuracies.

ds003720's SliceTiming lists its 68 slices of 2 mm; on a coarser grid each
slice was acquired at the time of the 2 mm slice containing its centre, and
the sidecars' SliceTiming gives those times, one per slice written.

Events columns (from the ds003720 README): onset, duration (s), genre, track
(GTZAN index), start and end (offsets of the 15 s excerpt within the 30 s track).
"""
    _write_text(root / "README", readme)
    _write_text(root / "CHANGES", f"1.0.0\n  - Simulated by brain2music-rt b2m simulate {SIMULATOR_VERSION}.\n")
    _write_tsv(root / "participants.tsv", ["participant_id", "group", "n_responsive_voxels"],
               [[f"sub-{s}", "simulated", n_resp[s]] for s in subjects])
    for task in ("Training", "Test"):  # the columns of ds003720's events, as its README describes them
        _write_json(root / f"task-{task}_events.json", {
            "genre": {"Description": "the excerpt's GTZAN genre"},
            "track": {"Description": "the GTZAN track's index within its genre"},
            "start": {"Description": "where the 15 s excerpt starts in the 30 s track", "Units": "s"},
            "end": {"Description": "where the excerpt ends in the track", "Units": "s"}})
    _write_json(root / "participants.json", {
        "participant_id": {"Description": "Simulated participant"},
        "group": {"Description": "Always 'simulated'"},
        "n_responsive_voxels": {"Description": "Music-responsive voxels in the ground truth "
                                               "(derivatives/simulation/sub-XXX/sub-XXX_tuning.tsv)"}})
    deriv = root / "derivatives" / "simulation"
    _write_json(deriv / "dataset_description.json", {
        "Name": "Ground truth of the simulation", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "brain2music-rt b2m simulate", "Version": SIMULATOR_VERSION}]})
    _write_json(root / SIMULATION_CONFIG, {"simulator_version": SIMULATOR_VERSION, "config": config.to_dict(),
                                          "feature_names": list(FEATURE_NAMES), "genres": list(GENRES)})


def _subject_truth(deriv: Path, label: str, anatomy: Anatomy, region: AuditoryRegion, tuning: Tuning,
                   noise_maps, grid: Grid) -> None:
    d = deriv / f"sub-{label}"
    d.mkdir(parents=True, exist_ok=True)
    _save_nifti(d / f"sub-{label}_desc-brain_mask.nii.gz", anatomy.brain.astype(np.uint8), grid)
    _save_nifti(d / f"sub-{label}_desc-auditory_mask.nii.gz", region.mask(grid.shape).astype(np.uint8), grid)
    strength = np.zeros(grid.n_voxels, dtype=np.float32)
    strength[region.index] = region.strength
    _save_nifti(d / f"sub-{label}_desc-strength_map.nii.gz", strength.reshape(grid.shape), grid)
    _save_nifti(d / f"sub-{label}_desc-s0_map.nii.gz", anatomy.s0, grid)
    _save_nifti(d / f"sub-{label}_desc-bias_map.nii.gz", anatomy.bias, grid)
    ijk = np.stack(np.unravel_index(region.index, grid.shape), axis=1)
    header = (["i", "j", "k", "mni_x", "mni_y", "mni_z", "hemisphere", "nearest_roi", "strength", "amplitude_pct",
               "hrf_peak_s", "hrf_undershoot_s", "hrf_ratio"]
              + [f"w_{n}" for n in FEATURE_NAMES] + [f"u_{g}" for g in GENRES])
    h = tuning.hrf
    rows = ([*ijk[v], *region.mni_mm[v], region.hemisphere[v], region.nearest_roi[v], region.strength[v],
             tuning.amplitude_pct[v], h.peak_s[v], h.undershoot_s[v], h.ratio[v],
             *tuning.acoustic[:, v], *tuning.genre[:, v]] for v in range(region.n_voxels))
    _write_tsv(d / f"sub-{label}_tuning.tsv", header, rows)
    _write_json(d / f"sub-{label}_simulation.json", {
        "anatomy": anatomy.to_dict(),
        "auditory": {"n_voxels": region.n_voxels, "centres_mni_mm": region.centres_mni.tolist(),
                     "roi_gain": region.roi_gain.tolist(),
                     "source": "nilearn fetch_coords_seitzman_2018, network 'Auditory'"},
        "tuning": {"genre_share": tuning.genre_share, "gain_pct": float(tuning.amplitude_pct.max()
                                                                        / max(region.strength.max(), 1e-12))},
        "noise": noise_maps.to_dict(),
        "voxel_order": "rows of sub-XXX_tuning.tsv = columns of *_desc-response.npy; (i, j, k) grid indices"})


def simulate_dataset(out: os.PathLike | str, config: SimulationConfig | None = None, *,
                     metadata_dir: os.PathLike | str | None = None,
                     stimuli_from: os.PathLike | str | None = None,
                     progress: ProgressFn | None = None) -> SimulationResult:
    """Simulate participants and write a ds003720-style BIDS dataset with its ground truth.

    Parameters
    ----------
    out : path-like
        Output folder; must not exist or be empty.
    config : SimulationConfig or None
        Defaults to ``SimulationConfig()`` (one subject, full grid, all 18 runs).
    metadata_dir : path-like or None
        ds003720's real metadata (``sub-001/func/*_{events.tsv,bold.json}``);
        default :func:`default_metadata_dir`.
    stimuli_from : path-like or None
        A folder of stand-ins written before (e.g. another simulated dataset's
        ``stimuli/``): tracks found there are copied, not generated again.
        The stand-ins do not depend on the seed, so the bytes are the same.
    progress : callable (stage, done, total) or None
        Called as work advances; stages ``"stimuli"``, ``"features"``, ``"volumes"``.

    Returns
    -------
    SimulationResult

    Raises
    ------
    FileExistsError
        If ``out`` is a non-empty folder.
    FileNotFoundError
        If the ds003720 metadata is missing.
    """
    config = config or SimulationConfig()
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not an empty folder; choose a new --out folder "
                              "(a simulation never overwrites files)")
    meta = Path(metadata_dir) if metadata_dir is not None else default_metadata_dir()
    runs = _select_runs(meta, config)
    events = {(r.task, r.run): read_events(r.events) for r in runs}
    sidecars = {(r.task, r.run): read_sidecar(r.sidecar) for r in runs}
    tr_s = float(sidecars[(runs[0].task, runs[0].run)]["RepetitionTime"])
    n_vol = config.volumes
    progress = progress or (lambda stage, done, total: None)
    root.mkdir(parents=True, exist_ok=True)
    grid = make_grid(config.grid)
    deriv = root / "derivatives" / "simulation"

    names = stimulus_names([ev for evs in events.values() for ev in evs])
    write_stimuli(names, root / "stimuli", source_dir=stimuli_from, progress=lambda d, t: progress("stimuli", d, t))

    run_stim: dict[tuple[str, int], RunStimulus] = {}
    for i, r in enumerate(runs):
        stim = run_stimulus(events[(r.task, r.run)], root / "stimuli", n_vol, tr_s)
        run_stim[(r.task, r.run)] = stim
        _write_tsv(deriv / "features" / f"task-{r.task}_run-{r.run:02d}_features.tsv",
                   ["onset", "duration", *FEATURE_NAMES, *(f"genre_{g}" for g in GENRES)],
                   ([k * tr_s, tr_s, *stim.features_tr[k], *stim.genres_tr[k]] for k in range(n_vol)))
        progress("features", i + 1, len(runs))

    subjects = [f"{s:03d}" for s in range(1, config.subjects + 1)]
    n_resp: dict[str, int] = {}
    written: list[SimulatedRun] = []
    total_vols = len(subjects) * len(runs) * n_vol
    done_vols = 0
    for s_idx, label in enumerate(subjects, start=1):
        seed = config.seed
        placement = sample_head_placement(grid, _rng(seed, s_idx, 0, 0, _COMP["placement"]))
        anatomy = build_anatomy(grid, placement, _rng(seed, s_idx, 0, 0, _COMP["anatomy"]))
        region = auditory_region(anatomy, _rng(seed, s_idx, 0, 0, _COMP["auditory"]))
        tuning = sample_tuning(region, _rng(seed, s_idx, 0, 0, _COMP["tuning"]), gain_pct=config.gain_pct,
                               genre_share=config.genre_share)
        maps = build_noise_maps(anatomy, config.noise, _rng(seed, s_idx, 0, 0, _COMP["noise_maps"]))
        n_resp[label] = region.n_voxels
        _subject_truth(deriv, label, anatomy, region, tuning, maps, grid)
        func = root / f"sub-{label}" / "func"
        func.mkdir(parents=True, exist_ok=True)
        for r in runs:
            key = (r.task, r.run)
            stem = f"sub-{label}_task-{r.task}_run-{r.run:02d}"
            shutil.copyfile(r.events, func / f"{stem}_events.tsv")
            _write_sidecar(r.sidecar, func / f"{stem}_bold.json", sidecars[key], grid)
            res = _simulate_run(func / f"{stem}_bold.nii.gz", deriv / f"sub-{label}" / stem, grid, anatomy,
                                region, tuning, maps, run_stim[key], sidecars[key], config, tr_s,
                                _rng(seed, s_idx, _TASK_ID[r.task], r.run, _COMP["motion"]),
                                _rng(seed, s_idx, _TASK_ID[r.task], r.run, _COMP["run_noise"]),
                                lambda k: progress("volumes", done_vols + k, total_vols))
            done_vols += n_vol
            written.append(SimulatedRun(subject=label, task=r.task, run=r.run,
                                        bold=str((func / f"{stem}_bold.nii.gz").relative_to(root)), **res))
    _dataset_files(root, config, subjects, n_resp)
    return SimulationResult(root=root, config=config, runs=written, subjects=subjects, n_responsive=n_resp,
                            stimuli=names, run_stimuli=run_stim)


def _write_sidecar(source: Path, dest: Path, sidecar: dict, grid: Grid) -> None:
    """ds003720's sidecar, byte for byte on its own grid; on a coarser one ``SliceTiming`` gives the time each
    simulated slice was acquired at (:func:`slice_times_for_grid`), one per slice of the images written."""
    st = sidecar.get("SliceTiming")
    if st is None or len(st) == grid.shape[2]:
        shutil.copyfile(source, dest)
        return
    _write_json(dest, {**sidecar, "SliceTiming": [float(t) for t in slice_times_for_grid(st, grid)]})


def _simulate_run(bold_path: Path, truth_stem: Path, grid: Grid, anatomy: Anatomy, region: AuditoryRegion,
                  tuning: Tuning, maps, stim: RunStimulus, sidecar: dict, config: SimulationConfig, tr_s: float,
                  rng_motion: np.random.Generator, rng_noise: np.random.Generator,
                  progress: Callable[[int], None]) -> dict:
    from realtime.preprocessing import framewise_displacement

    n_vol = config.volumes
    st = slice_times_for_grid(sidecar.get("SliceTiming", [0.0] * grid.shape[2]), grid)
    noise = RunNoise(maps, config.noise, grid.shape, n_vol, tr_s, st, anatomy.bias, rng_noise)
    motion = simulate_motion(n_vol, tr_s, config.motion, rng_motion, resp_hz=noise.resp_hz)
    fd = framewise_displacement(motion)
    k_slice = np.unravel_index(region.index, grid.shape)[2]
    times = np.arange(n_vol)[:, None] * tr_s + st[k_slice][None, :]
    resp = voxel_responses(stim.regressors_fine, tuning, times)
    np.save(f"{truth_stem}_desc-response.npy", resp)
    _write_tsv(Path(f"{truth_stem}_motion.tsv"), ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                                                  "framewise_displacement"],
               ([*motion[n], fd[n]] for n in range(n_vol)))
    _write_json(Path(f"{truth_stem}_physio.json"), {
        "CardiacFrequencyHz": noise.cardiac_hz, "RespiratoryFrequencyHz": noise.resp_hz,
        "MotionUnits": {"trans": "mm", "rot": "rad"},
        "MotionConvention": "realtime.preprocessing.rigid_matrix: M = T @ Rx @ Ry @ Rz about the world origin, "
                            "maps the reference head (volume 0) to the current one; FD of Power et al. 2012, "
                            "50 mm sphere"})

    s0 = anatomy.s0
    flat_idx = region.index
    tissue = np.empty(grid.shape, dtype=np.float32)
    moved = np.empty(grid.shape, dtype=np.float32)
    fluct = np.empty(grid.shape, dtype=np.float32)
    gain = np.empty(grid.shape, dtype=np.float32)
    vol16 = np.empty(grid.shape, dtype=np.int16)
    s0_resp = s0.ravel()[flat_idx]
    writer = _NiftiStream(bold_path, grid, n_vol, tr_s, f"b2m simulate {SIMULATOR_VERSION}; simulated BOLD")
    try:
        for n in range(n_vol):
            np.copyto(tissue, s0)
            tissue.reshape(-1)[flat_idx] = s0_resp * (1.0 + resp[n] / np.float32(100.0))
            if np.any(motion[n] != 0):
                move_volume(tissue, motion[n], grid.affine, order=config.interp_order, out=moved)
                img = moved
            else:
                img = tissue
            noise.fluctuation(n, out=fluct)
            fluct += np.float32(1.0)
            img *= fluct
            img *= noise.scanner_gain(n, out=gain)
            noise.thermal(img)
            np.rint(img, out=img)
            np.clip(img, 0, _INT16_MAX, out=img)
            vol16[...] = img
            writer.write(vol16)
            progress(n + 1)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return {"n_volumes": n_vol, "fd_mean_mm": float(fd[1:].mean()) if n_vol > 1 else 0.0,
            "fd_max_mm": float(fd.max()), "n_spikes": int((fd > 0.5).sum())}
