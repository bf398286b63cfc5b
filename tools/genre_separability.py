"""How well can the procedural generator's genres be told apart?

Generates N clips per genre (15 s, 2 s fades, -20 dBFS RMS, as in
ds003720) with ``music.generator.generate_clip`` and reports 5-fold k-NN
genre accuracy (k=5, cosine distance, ``StratifiedKFold(shuffle=True,
random_state=0)``) on

- MFCC features: mean and standard deviation over frames of 20 MFCCs
  (22050 Hz, 2048-point periodic-Hann STFT, hop 512, 128 Slaney mel bands
  0-11025 Hz, 10*log10 power, orthonormal DCT-II), z-scored on each training
  fold (a StandardScaler inside the pipeline) before the cosine k-NN;
- musicnn MSD embeddings, if ``music/models/msd_musicnn.onnx`` exists: the
  200-d ``penultimate`` layer averaged over the clip's non-overlapping 3 s
  patches (16 kHz, 512-point STFT, hop 256, 96 mel bands from the reference
  npz, log10(10000 x + 1)), used as is (cosine).

Chance is 0.1. Use different track numbers for tuning the styles and for the
figures you report (e.g. tune on ``--first-track 1000``, report on 0).

Usage::

    python tools/genre_separability.py --n-per-genre 20 --first-track 0
    python tools/genre_separability.py --n-per-genre 20 --first-track 0 --shared-instruments
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

MODELS = os.path.join(REPO, "music", "models")


# ----------------------------------------------------------------------------- features

def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Slaney-style mel filterbank (area-normalised triangles), shape (n_mels, n_fft // 2 + 1)."""
    fmax = sr / 2 if fmax is None else fmax

    def hz_to_mel(f):
        f = np.asarray(f, dtype=float)
        lin = f / (200.0 / 3)
        log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, lin)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=float)
        lin = m * (200.0 / 3)
        log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
        return np.where(m >= 15.0, log, lin)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        lo, c, hi = edges[i], edges[i + 1], edges[i + 2]
        up = (freqs - lo) / (c - lo)
        down = (hi - freqs) / (hi - c)
        fb[i] = np.maximum(0, np.minimum(up, down)) * 2.0 / (hi - lo)
    return fb


def stft_power(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT|^2 with a periodic Hann window and zero padding of n_fft/2; shape (n_frames, n_fft//2+1)."""
    from scipy.signal import get_window

    x = np.pad(np.asarray(x, dtype=np.float32), (n_fft // 2, n_fft // 2))
    n_frames = 1 + (x.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    win = get_window("hann", n_fft, fftbins=True).astype(np.float32)
    return np.abs(np.fft.rfft(x[idx] * win, axis=1)) ** 2


_FB_CACHE: dict = {}


def mfcc_features(x: np.ndarray, sr: int = 22050, n_mfcc: int = 20) -> np.ndarray:
    """Mean and std over frames of ``n_mfcc`` MFCCs, shape (2 * n_mfcc,)."""
    from scipy.fft import dct

    key = (sr, 2048, 128)
    if key not in _FB_CACHE:
        _FB_CACHE[key] = mel_filterbank(sr, 2048, 128)
    mel = stft_power(x, 2048, 512) @ _FB_CACHE[key].T
    logmel = 10 * np.log10(np.maximum(mel, 1e-10))
    c = dct(logmel, type=2, axis=1, norm="ortho")[:, :n_mfcc]
    return np.concatenate([c.mean(axis=0), c.std(axis=0)])


def musicnn_logmel(x: np.ndarray, sr: int, mel_basis: np.ndarray) -> np.ndarray:
    """musicnn's input: log-mel patches of shape (n_patches, 187, 96) at 16 kHz."""
    from music.audio import resample

    y = resample(x, sr, 16000) if sr != 16000 else np.asarray(x, dtype=np.float32)
    mel = stft_power(y, 512, 256).astype(np.float32) @ mel_basis.T
    logmel = np.log10(10000.0 * mel + 1.0).astype(np.float32)
    n = logmel.shape[0] // 187
    return logmel[: n * 187].reshape(n, 187, 96)


# ----------------------------------------------------------------------------- data

def _make(args):
    genre, track, seed, duration, shared, want_logmel = args
    from music.generator import generate_clip

    t0 = time.perf_counter()
    audio, _ = generate_clip(genre, track, seed=seed, duration_s=duration, shared_instruments=shared)
    t_gen = time.perf_counter() - t0
    feats = {"mfcc": mfcc_features(audio, 22050)}
    if want_logmel:
        mel_basis = np.load(os.path.join(MODELS, "musicnn_reference.npz"))["mel_basis"]
        feats["logmel"] = musicnn_logmel(audio, 22050, mel_basis)
    return genre, feats, t_gen


def knn_accuracy(X: np.ndarray, y: np.ndarray, scale: bool, seed: int = 0) -> tuple[float, np.ndarray]:
    """5-fold k-NN accuracy (k=5, cosine) and the summed confusion matrix."""
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine")
    model = make_pipeline(StandardScaler(), knn) if scale else knn
    pred = cross_val_predict(model, X, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    return float(np.mean(pred == y)), confusion_matrix(y, pred)


def main(argv=None) -> int:
    from music.generator import GENRES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-per-genre", type=int, default=20)
    ap.add_argument("--first-track", type=int, default=0, help="tracks first..first+N-1 per genre")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--duration", type=float, default=15.0, help="clip length in seconds")
    ap.add_argument("--shared-instruments", action="store_true", help="one common GM instrument pool")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-musicnn", action="store_true")
    ap.add_argument("--confusion", action="store_true", help="print confusion matrices to stderr")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    onnx_path = os.path.join(MODELS, "msd_musicnn.onnx")
    use_musicnn = not args.no_musicnn and os.path.isfile(onnx_path)
    jobs = [(g, args.first_track + i, args.seed, args.duration, args.shared_instruments, use_musicnn)
            for g in GENRES for i in range(args.n_per_genre)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        results = list(ex.map(_make, jobs, chunksize=4))
    wall = time.perf_counter() - t0
    y = np.array([GENRES.index(g) for g, _, _ in results])
    gen_time = sum(t for _, _, t in results)
    out = {"n_per_genre": args.n_per_genre, "first_track": args.first_track, "seed": args.seed,
           "duration_s": args.duration, "shared_instruments": args.shared_instruments,
           "generation_x_realtime": round(len(results) * args.duration / gen_time, 1)}
    X = np.stack([f["mfcc"] for _, f, _ in results])
    out["mfcc_knn_accuracy"], cm_mfcc = knn_accuracy(X, y, scale=True)
    cms = {"mfcc": cm_mfcc}
    if use_musicnn:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, args.jobs)
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        emb = []
        for _, f, _ in results:
            pen = sess.run(["penultimate"], {"melspec": f["logmel"]})[0]
            emb.append(pen.mean(axis=0))
        out["musicnn_knn_accuracy"], cms["musicnn"] = knn_accuracy(np.stack(emb), y, scale=False)
    mode = "shared instruments" if args.shared_instruments else "genre instruments"
    print(f"{len(results)} clips ({args.n_per_genre}/genre, tracks {args.first_track}.."
          f"{args.first_track + args.n_per_genre - 1}, seed {args.seed}, {args.duration:g} s, {mode}); "
          f"5-fold k-NN (k=5, cosine); chance 0.10")
    print(f"  MFCC (20 x mean+std, z-scored): {out['mfcc_knn_accuracy']:.3f}")
    if use_musicnn:
        print(f"  musicnn MSD penultimate (200-d): {out['musicnn_knn_accuracy']:.3f}")
    else:
        print("  musicnn: skipped (no music/models/msd_musicnn.onnx)" if not args.no_musicnn else "  musicnn: skipped")
    print(f"  generation {out['generation_x_realtime']}x real time per core; wall {wall:.1f} s", file=sys.stderr)
    if args.confusion:
        for name, cm in cms.items():
            print(f"confusion ({name}), rows true, columns predicted:", file=sys.stderr)
            print("          " + " ".join(f"{g[:5]:>5}" for g in GENRES), file=sys.stderr)
            for g, row in zip(GENRES, cm):
                print(f"{g:>9} " + " ".join(f"{v:5d}" for v in row), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
