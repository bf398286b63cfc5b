"""musicnn (Pons & Serra 2019) through onnxruntime, with no TensorFlow.

The ONNX files in ``music/models/`` were converted once from the TF1
checkpoints that ship in the ``musicnn`` wheel (``tools/musicnn_to_onnx/``);
their TensorFlow reference outputs are in ``musicnn_reference.npz``.

Windows are musicnn's 3 s patches: 187 mel frames at 16 kHz with a 256-sample
hop (2.992 s). By default patches do not overlap (``hop_s = window_s``), as in
musicnn's own extractor; every window gets its own features (musicnn's
extractor repeats the first window's penultimate features, a known bug that
does not exist here because every patch is run through the network).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Literal

import numpy as np

from .base import Embedder, Embedding
from .melspec import log_melspectrogram

__all__ = ["MusicnnEmbedder", "MODELS_DIR"]

MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
SR = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187
LAYERS = ("penultimate", "mean_pool", "max_pool", "tags")


def _model_info(model: str) -> dict:
    with open(os.path.join(MODELS_DIR, "musicnn_models.json")) as f:
        return json.load(f)["models"][model]


class MusicnnEmbedder(Embedder):
    """musicnn MSD (default) or MTT embeddings.

    Parameters
    ----------
    model : {"msd", "mtt"}
        MSD_musicnn (50 Million Song Dataset tags) or MTT_musicnn (MagnaTagATune).
    layer : {"penultimate", "mean_pool", "max_pool", "tags"}
        Which output is the embedding: the 200-d penultimate layer (default),
        a 753-d pooled layer, or the 50 tag probabilities.
    hop_s : float, optional
        Hop between windows in seconds (default: the 2.992 s window, no overlap).
    threads : int
        onnxruntime intra-op threads.
    batch : int
        Patches per onnxruntime call. Small batches are faster here: the
        front end's intermediate tensors for 64 patches (hundreds of MB)
        spill the caches; 8 patches ran at about 27 ms each on 2 threads,
        64 at about 52 ms (AMD EPYC, 2 cores, onnxruntime 1.32).
    """

    window_s = PATCH_FRAMES * HOP / SR

    def __init__(self, model: Literal["msd", "mtt"] = "msd",
                 layer: Literal["penultimate", "mean_pool", "max_pool", "tags"] = "penultimate",
                 hop_s: float | None = None, threads: int = 2, batch: int = 8):
        if model not in ("msd", "mtt"):
            raise ValueError(f"model must be 'msd' or 'mtt', got {model!r}")
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
        info = _model_info(model)
        self.model, self.layer = model, layer
        self.path = os.path.join(MODELS_DIR, info["file"])
        with open(self.path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != info["sha256"]:
            raise ValueError(f"{self.path}: sha256 {digest[:12]}... does not match musicnn_models.json "
                             f"({info['sha256'][:12]}...); reinstall the package")
        self.id = f"musicnn-{model}-{layer}"
        self.version = f"musicnn-0.1.0+onnx.{digest[:12]}"
        self.tag_names = tuple(info["tags"])
        self.dim = {"penultimate": 200, "mean_pool": 753, "max_pool": 753, "tags": 50}[layer]
        self.sr = SR
        hop_s = self.window_s if hop_s is None else float(hop_s)
        self.hop_frames = max(1, int(round(hop_s * SR / HOP)))
        self.hop_s = self.hop_frames * HOP / SR
        self.batch = int(batch)
        import onnxruntime as ort  # heavy: imported when an embedder is made

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(self.path, sess_options=opts, providers=["CPUExecutionProvider"])

    def patches(self, audio: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
        """Log-mel patches of the audio.

        Returns
        -------
        patches : ndarray of shape (n_windows, 187, 96), float32
        times_s : ndarray of shape (n_windows,)
            Start time of each patch. Audio shorter than one window is
            zero-padded to one window.
        """
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"audio must be mono, shape (n_samples,), got {x.shape}")
        if sr != SR:
            from music.audio import resample

            x = resample(x, sr, SR)
        mel = log_melspectrogram(x, SR, N_FFT, HOP, N_MELS)
        if len(mel) < PATCH_FRAMES:
            floor = np.float32(0.0)  # log10(10000*0+1): the value of silence
            mel = np.vstack([mel, np.full((PATCH_FRAMES - len(mel), N_MELS), floor, np.float32)])
        starts = np.arange(0, len(mel) - PATCH_FRAMES + 1, self.hop_frames)
        idx = starts[:, None] + np.arange(PATCH_FRAMES)[None, :]
        return mel[idx], starts * HOP / SR

    def run(self, patches: np.ndarray) -> dict[str, np.ndarray]:
        """Run the network on mel patches (N, 187, 96); returns every output by name."""
        outs: dict[str, list] = {}
        names = [o.name for o in self._session.get_outputs()]
        for i in range(0, len(patches), self.batch):
            res = self._session.run(names, {"melspec": np.ascontiguousarray(patches[i: i + self.batch])})
            for n, r in zip(names, res):
                outs.setdefault(n, []).append(r)
        return {n: np.concatenate(v).astype(np.float32) for n, v in outs.items()}

    def embed(self, audio: np.ndarray, sr: int) -> Embedding:
        patches, times = self.patches(audio, sr)
        out = self.run(patches)
        return Embedding(windows=out[self.layer], times_s=times, tags=out["tags"], tag_names=self.tag_names)
