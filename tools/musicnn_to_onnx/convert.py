"""Convert musicnn's MSD_musicnn and MTT_musicnn TF1 checkpoints to ONNX.

Runs only inside the throwaway venv made by make_venv.sh (TensorFlow 2.15,
tf2onnx 1.17, librosa 0.10, onnxruntime).  It writes into OUT_DIR
(default: <repo>/music/models):

  msd_musicnn.onnx, mtt_musicnn.onnx   the frozen networks (opset 17)
  musicnn_models.json                  shapes, tags, preprocessing recipe, checks
  musicnn_reference.npz                deterministic audio, its mel patches, the
                                       librosa mel filterbank and TF's outputs

Each ONNX model has one input ``melspec`` float32 [N, 187, 96] (N dynamic) and
four outputs: ``tags`` [N, 50] (sigmoid probabilities), ``penultimate``
[N, 200], ``mean_pool`` [N, 753], ``max_pool`` [N, 753].

Two upstream musicnn bugs are deliberately avoided here:
  * musicnn.extractor's loop keeps the first window's penultimate features for
    every later window; we run all patches through one session call instead.
  * musicnn casts the mel power to float16 before log10(10000*x + 1), where
    10000*x overflows to inf for x > 6.55; we stay in float32 throughout.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

SR = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # librosa.time_to_frames(3 s, sr=16000, n_fft=512, hop=256) + 1
N_TAGS = 50
PENULTIMATE_UNITS = 200
POOL_DIM = 753  # 561 front-end maps + 3 x 64 mid-end maps
OPSET = 17
REF_SECONDS = 9.0  # 144000 samples -> 563 frames -> 3 full patches
REF_SEED = 20190701

MODELS = {
    # key: (musicnn model name, onnx file name, labels attribute in musicnn.configuration)
    "msd": ("MSD_musicnn", "msd_musicnn.onnx", "MSD_LABELS"),
    "mtt": ("MTT_musicnn", "mtt_musicnn.onnx", "MTT_LABELS"),
}
OUTPUT_NAMES = ["tags", "penultimate", "mean_pool", "max_pool"]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- audio

def make_reference_audio(seconds: float = REF_SECONDS, seed: int = REF_SEED) -> np.ndarray:
    """A deterministic 16 kHz test signal: tones, a chirp, clicks and noise.

    Its content changes from one 3 s patch to the next so that per-patch
    outputs differ (which exposes any "repeated first window" mistake).
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n, dtype=np.float64) / SR
    y = np.zeros(n, dtype=np.float64)

    # Segment-wise chords (a different triad every 1.5 s) with a few harmonics.
    seg = int(1.5 * SR)
    roots = [110.0, 146.83, 196.0, 130.81, 174.61, 220.0]
    for i, start in enumerate(range(0, n, seg)):
        stop = min(n, start + seg)
        tt = t[start:stop]
        root = roots[i % len(roots)]
        env = np.minimum(1.0, (tt - tt[0]) * 40.0) * np.exp(-(tt - tt[0]) * 1.2)
        for ratio in (1.0, 1.25, 1.5):
            f0 = root * ratio
            for h in range(1, 5):
                phase = rng.uniform(0, 2 * np.pi)
                y[start:stop] += (0.08 / h) * env * np.sin(2 * np.pi * f0 * h * tt + phase)

    # A slow exponential chirp from 200 Hz to 6 kHz across the whole signal.
    f_start, f_end = 200.0, 6000.0
    k = np.log(f_end / f_start) / seconds
    y += 0.05 * np.sin(2 * np.pi * f_start * (np.exp(k * t) - 1.0) / k)

    # Percussive clicks (decaying noise bursts) at 120 BPM, louder in the last third.
    beat = int(0.5 * SR)
    burst_len = int(0.06 * SR)
    decay = np.exp(-np.arange(burst_len) / (0.01 * SR))
    for start in range(0, n - burst_len, beat):
        gain = 0.3 if start > 2 * n // 3 else 0.12
        y[start:start + burst_len] += gain * decay * rng.standard_normal(burst_len)

    # Broadband background noise.
    y += 0.01 * rng.standard_normal(n)

    y *= 0.5 / np.max(np.abs(y))  # peak at -6 dBFS
    return y.astype(np.float32)


# --------------------------------------------------------------------------- mel

def librosa_mel_kwargs():
    """Exactly the call musicnn.extractor.batch_data makes (all other args default)."""
    return dict(sr=SR, hop_length=HOP, n_fft=N_FFT, n_mels=N_MELS)


def log_mel(audio: np.ndarray):
    import librosa

    power_mel = librosa.feature.melspectrogram(y=audio, **librosa_mel_kwargs()).T  # [T, 96]
    power_mel = power_mel.astype(np.float32)  # no float16 round-trip (see module doc)
    return np.log10(np.float32(10000.0) * power_mel + np.float32(1.0)).astype(np.float32)


def numpy_mel_power(audio: np.ndarray, mel_basis: np.ndarray) -> np.ndarray:
    """Independent numpy version of the recipe, used only as a self-check."""
    x = audio.astype(np.float64)
    pad = N_FFT // 2
    x = np.pad(x, (pad, pad), mode="constant")  # librosa >= 0.10: center=True, pad_mode="constant"
    n_frames = 1 + (len(x) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    spec = np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2  # [T, 257]
    return spec @ mel_basis.astype(np.float64).T  # [T, 96]


def to_patches(logmel: np.ndarray) -> np.ndarray:
    """Non-overlapping 187-frame patches, as musicnn does with input_overlap=False."""
    last = logmel.shape[0] - PATCH_FRAMES + 1
    starts = list(range(0, last, PATCH_FRAMES))
    if not starts:
        raise ValueError("audio shorter than one 3 s patch")
    return np.stack([logmel[s:s + PATCH_FRAMES] for s in starts]).astype(np.float32)


# --------------------------------------------------------------------------- TF

def build_and_restore(model_name: str, ckpt_prefix: str, num_classes: int):
    """Rebuild musicnn's graph (inference mode), restore the checkpoint.

    Returns (graph, session, output tensors dict, input placeholder).
    """
    import tensorflow as tf
    from musicnn import models

    graph = tf.Graph()
    with graph.as_default():
        melspec = tf.compat.v1.placeholder(tf.float32, [None, PATCH_FRAMES, N_MELS], name="melspec")
        # A Python False makes batch-norm use its moving statistics and dropout a
        # no-op, without tf.cond switches in the graph.
        with tf.name_scope("model"):
            (logits, _timbral, _temporal, _cnn1, _cnn2, _cnn3,
             mean_pool, max_pool, penultimate) = models.define_model(melspec, False, model_name, num_classes)
        outs = {
            "tags": tf.identity(tf.nn.sigmoid(logits), name="tags"),
            "penultimate": tf.identity(penultimate, name="penultimate"),
            "mean_pool": tf.identity(mean_pool, name="mean_pool"),
            "max_pool": tf.identity(max_pool, name="max_pool"),
        }
        graph_vars = tf.compat.v1.global_variables()
        sess = tf.compat.v1.Session(graph=graph)
        tf.compat.v1.train.Saver(var_list=graph_vars).restore(sess, ckpt_prefix)

    # Every model variable must come from the checkpoint and every non-optimizer
    # checkpoint entry must be used.
    reader = tf.compat.v1.train.NewCheckpointReader(ckpt_prefix)
    ckpt_shapes = {k: v for k, v in reader.get_variable_to_shape_map().items()
                   if "Adam" not in k and k not in ("beta1_power", "beta2_power")}
    graph_shapes = {v.op.name: v.shape.as_list() for v in graph_vars}
    if ckpt_shapes != graph_shapes:
        missing = sorted(set(ckpt_shapes) ^ set(graph_shapes))
        raise RuntimeError(f"{model_name}: checkpoint/graph variable mismatch: {missing[:10]}")
    return graph, sess, outs, melspec, len(graph_shapes)


def freeze(graph, sess):
    import tensorflow as tf

    with graph.as_default():
        return tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), OUTPUT_NAMES)


def to_onnx(frozen_graph_def, onnx_path: Path, model_name: str, labels):
    import onnx
    import tf2onnx

    model_proto, _ = tf2onnx.convert.from_graph_def(
        frozen_graph_def,
        name=model_name,
        input_names=["melspec:0"],
        output_names=[f"{n}:0" for n in OUTPUT_NAMES],
        opset=OPSET,
        tensors_to_rename={"melspec:0": "melspec", **{f"{n}:0": n for n in OUTPUT_NAMES}},
    )
    # Name the dynamic batch dimension "N" on the input and all outputs.
    for vi in list(model_proto.graph.input) + list(model_proto.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = "N"
    model_proto.doc_string = (
        f"musicnn {model_name} (Pons & Serra, ISC licence, see LICENSE.musicnn), converted from the "
        f"TF1 checkpoint in the musicnn 0.1.0 wheel. Input: log10(10000*mel+1) patches "
        f"[N,{PATCH_FRAMES},{N_MELS}] at {SR} Hz, n_fft {N_FFT}, hop {HOP}.")
    meta = {"source": "musicnn 0.1.0 (PyPI wheel)", "model": model_name, "licence": "ISC",
            "tags": json.dumps(list(labels))}
    del model_proto.metadata_props[:]
    for k, v in meta.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model_proto, full_check=True)
    with open(onnx_path, "wb") as fh:
        fh.write(model_proto.SerializeToString(deterministic=True))
    return model_proto


def describe_io(model_proto):
    def shape(vi):
        return [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]

    return ({vi.name: shape(vi) for vi in model_proto.graph.input},
            {vi.name: shape(vi) for vi in model_proto.graph.output})


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    here = Path(__file__).resolve()
    default_out = here.parents[2] / "music" / "models"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=default_out)
    ap.add_argument("--tol", type=float, default=2e-5,
                    help="max allowed |ONNX - TF| / max(1, max|TF|) per output")
    args = ap.parse_args(argv)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    import librosa
    import onnx
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx
    import musicnn
    from musicnn import configuration as mcfg

    tf.compat.v1.disable_eager_execution()
    pkg_dir = Path(musicnn.__file__).resolve().parent

    assert (mcfg.SR, mcfg.FFT_SIZE, mcfg.FFT_HOP, mcfg.N_MELS) == (SR, N_FFT, HOP, N_MELS)
    n_frames = int(librosa.time_to_frames(3, sr=SR, n_fft=N_FFT, hop_length=HOP)) + 1
    assert n_frames == PATCH_FRAMES, n_frames

    # ---- reference input and preprocessing
    audio = make_reference_audio()
    mel_basis = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS).astype(np.float32)  # [96, 257]
    logmel = log_mel(audio)
    patches = to_patches(logmel)
    print(f"audio {audio.shape} -> log-mel {logmel.shape} -> patches {patches.shape}; "
          f"log-mel range [{logmel.min():.4f}, {logmel.max():.4f}]")

    # Self-check: the numpy recipe reproduces librosa's log-mel.
    np_logmel = np.log10(10000.0 * numpy_mel_power(audio, mel_basis) + 1.0)
    recipe_diff = float(np.max(np.abs(np_logmel - logmel)))
    print(f"numpy recipe vs librosa log-mel: max abs diff {recipe_diff:.3g}")
    if recipe_diff > 1e-3:
        raise RuntimeError("numpy re-implementation of the mel recipe does not match librosa")

    ref = {"audio": audio, "melspec": patches, "mel_basis": mel_basis}
    models_info = {}
    for key, (model_name, onnx_file, labels_attr) in MODELS.items():
        labels = list(getattr(mcfg, labels_attr))
        assert len(labels) == N_TAGS
        ckpt_prefix = str(pkg_dir / model_name) + os.sep  # files are "<dir>/.index" etc.
        graph, sess, outs, melspec_ph, n_vars = build_and_restore(model_name, ckpt_prefix, N_TAGS)

        # TF reference: all patches in one call (no per-window loop).
        tf_vals = sess.run([outs[n] for n in OUTPUT_NAMES], feed_dict={melspec_ph: patches})
        tf_out = dict(zip(OUTPUT_NAMES, [np.asarray(v, dtype=np.float32) for v in tf_vals]))
        # Per-patch outputs must not depend on the batch (inference-mode batch-norm).
        tf_single = sess.run(outs["penultimate"], feed_dict={melspec_ph: patches[-1:]})
        batch_independence = float(np.max(np.abs(tf_single[0] - tf_out["penultimate"][-1])))

        frozen = freeze(graph, sess)
        sess.close()
        onnx_path = out_dir / onnx_file
        model_proto = to_onnx(frozen, onnx_path, model_name, labels)
        inputs, outputs = describe_io(model_proto)

        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        rt = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        ort_vals = rt.run(OUTPUT_NAMES, {"melspec": patches})
        diffs = {n: float(np.max(np.abs(o - tf_out[n]))) for n, o in zip(OUTPUT_NAMES, ort_vals)}
        # Dynamic batch: one patch at a time gives the same rows.
        ort_one = rt.run(OUTPUT_NAMES, {"melspec": patches[1:2]})
        diffs_b1 = {n: float(np.max(np.abs(o[0] - tf_out[n][1]))) for n, o in zip(OUTPUT_NAMES, ort_one)}
        # float32 rounding differences scale with the magnitude of an output
        # (max_pool reaches ~100), so the check is relative to that magnitude.
        scale = {n: max(1.0, float(np.max(np.abs(tf_out[n])))) for n in OUTPUT_NAMES}
        scaled = {n: max(diffs[n], diffs_b1[n]) / scale[n] for n in OUTPUT_NAMES}

        for n in OUTPUT_NAMES:
            ref[f"{key}_{n}"] = tf_out[n]
            print(f"{model_name} {n:12s} TF shape {tf_out[n].shape}  max|ONNX-TF| "
                  f"batch={len(patches)}: {diffs[n]:.3g}  batch=1: {diffs_b1[n]:.3g}  "
                  f"(max|TF| {scale[n]:.3g}, scaled {scaled[n]:.3g})")
        print(f"{model_name}: TF batch-independence diff {batch_independence:.3g}; "
              f"{n_vars} variables restored; {onnx_path.name} {onnx_path.stat().st_size} bytes")
        # Patches differ, so the outputs must too (guards against repeated windows).
        if np.allclose(tf_out["penultimate"][0], tf_out["penultimate"][1]):
            raise RuntimeError("penultimate features identical across patches")
        worst = max(scaled.values())
        if worst > args.tol:
            raise RuntimeError(f"{model_name}: ONNX differs from TF by {worst} (scaled)")
        top = np.argsort(-tf_out["tags"].mean(axis=0))[:5]
        print(f"{model_name}: top tags on the reference signal: {[labels[i] for i in top]}")

        models_info[key] = {
            "musicnn_model": model_name,
            "file": onnx_file,
            "bytes": onnx_path.stat().st_size,
            "sha256": sha256_of(onnx_path),
            "inputs": inputs,
            "outputs": outputs,
            "output_meaning": {
                "tags": "sigmoid(logits), tag probabilities in the order of 'tags'",
                "penultimate": "batch-normalised ReLU dense layer before the output layer (musicnn 'penultimate')",
                "mean_pool": "temporal mean of the 753 mid-end feature maps (musicnn 'mean_pool')",
                "max_pool": "temporal max of the 753 mid-end feature maps (musicnn 'max_pool')",
            },
            "tags": labels,
            "checkpoint": f"musicnn/{model_name}/ in the musicnn 0.1.0 wheel",
            "checkpoint_variables_restored": n_vars,
            "max_abs_diff_onnx_vs_tf": diffs,
            "max_abs_diff_onnx_vs_tf_batch1": diffs_b1,
            "max_abs_tf_output": {n: float(np.max(np.abs(tf_out[n]))) for n in OUTPUT_NAMES},
            "diff_note": "onnxruntime CPU vs TensorFlow CPU on the reference melspec; "
                         "differences are float32 rounding, about 1e-6 to 6e-6 of each "
                         "output's magnitude",
            "reference_npz_keys": [f"{key}_{n}" for n in OUTPUT_NAMES],
        }

    ref_path = out_dir / "musicnn_reference.npz"
    np.savez_compressed(ref_path, **ref)

    info = {
        "description": "musicnn (Pons & Serra 2019) audio taggers converted from TF1 checkpoints to ONNX",
        "licence": "ISC, see LICENSE.musicnn",
        "models": models_info,
        "preprocessing": {
            "sample_rate": SR,
            "n_fft": N_FFT,
            "hop_length": HOP,
            "n_mels": N_MELS,
            "patch_frames": PATCH_FRAMES,
            "patch_seconds": 3.0,
            "patching": "non-overlapping consecutive 187-frame windows of the log-mel "
                        "[T, 96]; trailing frames that do not fill a patch are dropped "
                        "(musicnn.extractor with input_overlap=False)",
            "audio": "mono float32 in [-1, 1], resampled to 16 kHz (musicnn: librosa.load(file, sr=16000))",
            "librosa_call": "librosa.feature.melspectrogram(y=audio, sr=16000, hop_length=256, "
                            "n_fft=512, n_mels=96).T  # -> [T, 96] power mel",
            "log_compression": "np.log10(10000 * mel + 1), computed in float32 (musicnn casts to "
                               "float16 first, which overflows for mel > 6.55; not reproduced here)",
            "effective_librosa_parameters": {
                "librosa_version": librosa.__version__,
                "window": "hann, periodic (scipy.signal.get_window('hann', 512, fftbins=True))",
                "win_length": N_FFT,
                "center": True,
                "pad_mode": "constant (zeros); librosa < 0.10, which musicnn was trained with, "
                            "used 'reflect' -- this only changes the first and last frame",
                "frames": "1 + len(audio) // 256",
                "power": 2.0,
                "mel_fmin": 0.0,
                "mel_fmax": SR / 2,
                "mel_htk": False,
                "mel_scale": "Slaney (linear below 1 kHz, logarithmic above)",
                "mel_norm": "slaney (each triangle divided by half its bandwidth in Hz: 2/(f[i+2]-f[i]))",
                "mel_basis_shape": list(mel_basis.shape),
                "stft_dtype": "complex64 (librosa, for float32 audio)",
            },
            "numpy_recipe": [
                "x = np.pad(audio, (256, 256))  # zeros",
                "frames of 512 samples every 256 samples, times a periodic Hann window",
                "S = |rfft(frame)|**2  -> [T, 257]",
                "mel = S @ mel_basis.T  -> [T, 96]  (mel_basis saved in musicnn_reference.npz)",
                "logmel = log10(10000 * mel + 1)",
            ],
            "numpy_recipe_max_abs_diff_vs_librosa_logmel": recipe_diff,
        },
        "reference_npz": {
            "file": "musicnn_reference.npz",
            "sha256": sha256_of(ref_path),
            "audio": f"float32 [{len(audio)}], {REF_SECONDS} s at 16 kHz, numpy default_rng seed "
                     f"{REF_SEED}: chords, chirp, noise bursts and noise "
                     "(tools/musicnn_to_onnx/convert.py: make_reference_audio)",
            "melspec": f"float32 {list(patches.shape)}, the log-mel patches fed to the networks",
            "mel_basis": "float32 [96, 257], librosa.filters.mel(sr=16000, n_fft=512, n_mels=96)",
            "outputs": "msd_tags, msd_penultimate, msd_mean_pool, msd_max_pool and mtt_* : "
                       "TensorFlow outputs for melspec, all patches in one batch",
        },
        "conversion": {
            "date": _dt.date.today().isoformat(),
            "tensorflow": tf.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "librosa": librosa.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
            "opset": OPSET,
            "script": "tools/musicnn_to_onnx/convert.py (venv: tools/musicnn_to_onnx/make_venv.sh)",
            "tf_graph": "musicnn.models.define_model(x, is_training=False, ...) with placeholder "
                        "'melspec' [None,187,96]; variables frozen to constants; "
                        "tf2onnx.convert.from_graph_def",
            "reproducibility": "rerunning gives the same weights and the same outputs, but not "
                               "the same bytes: tf2onnx's transpose optimizer walks Python sets "
                               "of nodes, so node order/names (and sometimes a Transpose vs an "
                               "equivalent Reshape) vary between runs; the sha256 values above "
                               "are those of the committed files",
        },
    }
    with open(out_dir / "musicnn_models.json", "w") as fh:
        json.dump(info, fh, indent=2)
        fh.write("\n")
    print(f"wrote {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
