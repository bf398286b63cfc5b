"""A simulated participant for the ds003720 music-listening design (``b2m simulate``).

The simulator writes a BIDS dataset with ds003720's exact layout, events and
sidecars (12 Training + 6 Test runs of 410 volumes at TR 1.5 s, int16) and
keeps every piece of ground truth under ``derivatives/simulation/``. It is
read back by :mod:`offline_training.bids` with no special case.

The generative model
--------------------
For voxel ``x`` and volume ``n`` (acquired at ``t = n TR + SliceTiming[slice]``)::

    Y_n(x) = | move(S0 (1 + r_n / 100), P_n)(x) (1 + F_n(x)) B(x) (1 + D_n(x)) + N_th |

Anatomy (:mod:`.geometry`)
    ``S0``: the MNI152 brain (nilearn's packaged templates) placed in the
    scanner with per-subject scaling (~0.93), rotation (pitch s.d. 4 deg) and
    shift; T2*-weighted contrast GM 1.0, WM 0.75, CSF 1.5, scalp 0.3, with
    susceptibility dropout (orbitofrontal, temporal poles); base intensity
    650-950 (Siemens-like int16). ``B``: smooth receive-coil bias (fixed to the
    scanner), mean 1 over the brain.
Responsive voxels (:mod:`.auditory`)
    Grey matter within 12 mm of the 12 Seitzman (2018) "Auditory" ROI centres,
    both hemispheres (about 5,000 voxels at 2 mm), with graded strength
    ``s_v`` (Gaussian fall-off from the centres x ROI gains x a smooth field,
    99th percentile 1, compressed as ``s ** 0.6``).
Response (:mod:`.response`)
    ``r_v(t) = g s_v (h_v * d_v)(t)`` percent signal change, with
    ``d_v = sqrt(1 - gamma) w_v . z_a(t) + sqrt(gamma) u_v . z_g(t)``:
    ``z_a`` the 34 z-scored acoustic features of :mod:`music.features`
    (loudness, onset rate, spectral centroid, brightness, spectro-temporal and
    temporal modulation energies) of the audio played, ``z_g`` the 10 genre
    indicators; ``w_v``, ``u_v`` unit-length, low-rank and spatially smooth;
    ``gamma = 0.3``; ``h_v`` a double-gamma HRF with peak 4-6 s, undershoot
    ratio 0.1-0.5; gain ``g`` = 1.6 % (calibrated). The tuning is not in
    musicnn's space: decoding musicnn embeddings faces a model mismatch.
Noise (:mod:`.noise`)
    ``F_n``: spatially smooth AR(1) noise (phi 0.35), aliased cardiac
    (~1.1 Hz) and respiratory (~0.27 Hz) oscillations sampled at slice times,
    and a global fluctuation; ``D_n``: slow drift (cosines, ~1 %) and a linear
    trend; ``N_th``: complex thermal noise (Rician magnitude). Variance shares
    0.35 thermal / 0.40 AR / 0.20 physiological / 0.05 global, scaled so the
    median brain tSNR equals ``--tsnr`` (40).
Motion (:mod:`.noise`)
    ``P_n``: rigid, 6 parameters per volume in :mod:`realtime.preprocessing`'s
    convention: slow drift, AR(1) jitter, respiration-induced apparent motion
    and spikes (``typical``: mean FD ~0.13 mm, a few 0.5-1 mm spikes per run);
    applied by resampling the head image (trilinear).

Calibration (:mod:`.calibration`): a plain ridge encoding model on the true
feature space, fit on the training runs, predicts single test presentations
of the top 1,000 auditory voxels (2 mm; same cortical volume on coarser grids)
with a median r in [0.15, 0.35] and a maximum <= 0.7 (Nakai et al. 2021).

Modules: ``geometry``, ``auditory``, ``response``, ``noise``, ``stimulus``,
``dataset`` (writing), ``calibration``.
"""

from .auditory import AuditoryRegion, auditory_centres, auditory_region, smooth_fields
from .calibration import calibrate_dataset, calibrate_subject, explainable_variance, format_calibration
from .dataset import (
    DEFAULT_GAIN_PCT,
    SIMULATOR_VERSION,
    SimulatedRun,
    SimulationConfig,
    SimulationResult,
    default_metadata_dir,
    read_simulation_config,
    simulate_dataset,
    slice_times_for_grid,
)
from .geometry import GRID_PRESETS, Anatomy, Grid, HeadPlacement, build_anatomy, make_grid, sample_head_placement
from .noise import (
    MOTION_PRESETS,
    MotionPreset,
    NoiseConfig,
    NoiseMaps,
    RunNoise,
    build_noise_maps,
    move_volume,
    simulate_motion,
)
from .response import HrfParams, Tuning, double_gamma_hrf, sample_tuning, voxel_responses
from .stimulus import RunStimulus, played_audio, run_stimulus, write_stimuli

__all__ = [
    "SIMULATOR_VERSION",
    "DEFAULT_GAIN_PCT",
    "SimulationConfig",
    "SimulationResult",
    "SimulatedRun",
    "simulate_dataset",
    "default_metadata_dir",
    "read_simulation_config",
    "slice_times_for_grid",
    "GRID_PRESETS",
    "Grid",
    "make_grid",
    "HeadPlacement",
    "sample_head_placement",
    "Anatomy",
    "build_anatomy",
    "AuditoryRegion",
    "auditory_centres",
    "auditory_region",
    "smooth_fields",
    "HrfParams",
    "Tuning",
    "double_gamma_hrf",
    "sample_tuning",
    "voxel_responses",
    "MOTION_PRESETS",
    "MotionPreset",
    "simulate_motion",
    "move_volume",
    "NoiseConfig",
    "NoiseMaps",
    "build_noise_maps",
    "RunNoise",
    "RunStimulus",
    "played_audio",
    "run_stimulus",
    "write_stimuli",
    "calibrate_subject",
    "calibrate_dataset",
    "explainable_variance",
    "format_calibration",
]
