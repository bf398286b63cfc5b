"""A small real model bundle and music library for session tests.

The run is nitime's real fMRI file (10x10x18x40 int16, TR 1.35 s). The
library is built by the real ``build_library`` from rhythmic WAVs written
here, with a tiny embedder (a fixed projection of log-mel bands, 8-d) so it
builds in a second; the bundle is written by the real ``write_bundle`` with a
random linear decoder over the brightest half of the voxels, delays (1, 2),
motion correction on. Nothing here is a mock: the session runs real ONNX,
real preprocessing and the real mixer on them.
"""

from __future__ import annotations

import os

import numpy as np

from music.embedding import Embedder, Embedding

SR = 16000
DELAYS = (1, 2)


class KitEmbedder(Embedder):
    """8-d projection of the mean log-mel spectrum of each 1 s window (deterministic)."""

    id, version, dim, sr, window_s, hop_s = "kit-proj", "1", 8, SR, 1.0, 1.0
    tag_names = ("low", "high")

    def __init__(self):
        self.w = np.random.default_rng(7).standard_normal((96, self.dim)).astype(np.float32)

    def embed(self, audio, sr):
        from music.embedding.melspec import log_melspectrogram

        mel = log_melspectrogram(np.asarray(audio, np.float32))
        per = max(1, int(self.window_s * self.sr / 256))
        n = max(1, len(mel) // per)
        wins = mel[: n * per].reshape(n, per, 96).mean(1) @ self.w
        lo = float(mel[:, :30].mean() > mel[:, 60:].mean())
        return Embedding(windows=wins, times_s=np.arange(n) * self.hop_s,
                         tags=np.tile([lo, 1 - lo], (n, 1)).astype(np.float32), tag_names=self.tag_names)


def rhythm(bpm: float, pitch_hz: float, seconds: float, seed: int) -> np.ndarray:
    """Decaying tone bursts on every beat, an accent each bar: music with an unambiguous beat."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = np.zeros_like(t)
    period = 60.0 / bpm
    for k, b in enumerate(np.arange(0.25, seconds, period)):
        m = (t >= b) & (t < b + 0.2)
        amp = 1.0 if k % 4 == 0 else 0.5
        x[m] += amp * np.exp(-(t[m] - b) * 25) * np.sin(2 * np.pi * pitch_hz * (t[m] - b))
    x += 0.01 * rng.standard_normal(len(t))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def make_library(folder: str) -> str:
    import soundfile as sf

    from music.library import build_library, discover_sources

    src = os.path.join(folder, "src")
    os.makedirs(src, exist_ok=True)
    for i, (bpm, hz) in enumerate([(90, 220), (100, 330), (110, 440), (120, 660), (128, 880), (140, 1320)]):
        sf.write(os.path.join(src, f"r{i}.wav"), rhythm(bpm, hz, 8.0, i), SR)
    lib = os.path.join(folder, "lib")
    units, problems = discover_sources([src], clip_s=8.0)
    build_library(lib, units, KitEmbedder(), problems=problems, clip_s=8.0)
    return lib


def make_atlas(folder: str, n_points: int = 10, seed: int = 3) -> str:
    """A library the generator made (one piece per genre for 10 points), embedded by the kit's embedder:
    what ``b2m session --mode generation`` needs."""
    from music.library import build_library, generated_units

    out = os.path.join(folder, "atlas")
    build_library(out, generated_units(n_points, seed=seed), KitEmbedder(), clip_s=15.0)
    return out


def make_bundle(folder: str, nifti: str, *, seed: int = 0, motion: bool = False, detrend: str = "causal",
                normalize: str = "running") -> str:
    import nibabel as nib

    from offline_training.export import write_bundle
    from realtime.preprocessing import PreprocessConfig

    img = nib.load(nifti)
    ref = np.asarray(img.dataobj[..., 0], np.float32)
    mask = ref > np.percentile(ref, 50)
    n_vox = int(mask.sum())
    rng = np.random.default_rng(seed)
    dim = KitEmbedder.dim
    coef = rng.standard_normal((len(DELAYS) * n_vox, dim)).astype(np.float32) / np.sqrt(n_vox)
    from realtime.preprocessing import MotionConfig

    # a 10x10x18 grid at ~2 mm: sample every voxel (the default 4 mm spacing leaves too few points)
    pcfg = PreprocessConfig(motion=motion, motion_config=MotionConfig(sep_mm=2.0), delays=DELAYS, detrend=detrend,
                            ema_tau_s=20.0, normalize=normalize)
    name = "bundle" if detrend == "causal" else f"bundle-{detrend}"
    out = os.path.join(folder, name if normalize == "running" else f"{name}-{normalize}")
    write_bundle(out, coef=coef, x_mean=np.zeros(len(DELAYS) * n_vox), y_mean=np.zeros(dim), mask=mask,
                 affine=img.affine, reference=ref, norm_mean=np.zeros(n_vox), norm_std=np.ones(n_vox),
                 embedder=KitEmbedder().identity(), embedder_spec=None, tr_s=float(img.header.get_zooms()[3]),
                 delays=DELAYS, preprocess=pcfg.to_dict(), extra={"n_volumes": int(img.shape[3])})
    return out


def with_training_tsnr(bundle: str, folder: str, median: float, curve=None) -> str:
    """A copy of ``bundle`` whose manifest gives the Training runs' tSNR as `b2m train` writes it (``qc.tsnr``:
    ``median`` at the runs' end and, optionally, the running ``curve`` per volume), hashed again."""
    import json
    import shutil

    from protocols.bundle import write_bundle_manifest

    out = shutil.copytree(bundle, os.path.join(folder, f"bundle-tsnr-{median:.4f}-{curve is not None}"))
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["qc"] = {"tsnr": {"median": median, "runs": {"Training_run-01": median},
                               **({"curve": list(curve)} if curve is not None else {})}}
    write_bundle_manifest(out, manifest)
    return out


def volumes(nifti: str, run_id: str = "run-01"):
    """The run as VolumeMessages, as the receiver hands them over (native dtype)."""
    import nibabel as nib

    from protocols.wire import VolumeMessage

    img = nib.load(nifti)
    data = np.asanyarray(img.dataobj.get_unscaled())
    tr = float(img.header.get_zooms()[3])
    return [VolumeMessage(run_id=run_id, index=i, data=np.ascontiguousarray(data[..., i]), affine=img.affine,
                          tr_s=tr, n_volumes=data.shape[3], t_acquired=1000.0 + i * tr)
            for i in range(data.shape[3])]


class Kit:
    """Paths of the kit: ``nifti``, ``library``, ``bundle`` (and the folder)."""

    def __init__(self, folder: str, nifti: str):
        self.folder, self.nifti = folder, nifti
        self.library = make_library(folder)
        self.bundle = make_bundle(folder, nifti)


def kit_fixture(tmp_path_factory, nifti: str, *, other: bool = False) -> Kit:
    """The kit; with ``other``, also ``kit.other``: a second participant's decoder (another random readout),
    whose choices differ from the first's (sham and study tests)."""
    kit = Kit(str(tmp_path_factory.mktemp("session-kit")), nifti)
    if other:
        kit.other = make_bundle(os.path.join(kit.folder, "other"), nifti, seed=5)
    return kit
