"""The decoder at run time: a validated model bundle and one onnxruntime session.

One intra-op thread, preallocated input and output buffers bound once
(IOBinding), so a TR's decode allocates nothing in Python.
"""

from __future__ import annotations

import os

import numpy as np

from protocols.bundle import validate_bundle

__all__ = ["Decoder"]


def _ort_load_errors() -> tuple[type[Exception], ...]:
    """onnxruntime's errors for a model file it cannot load (InvalidProtobuf, InvalidGraph, Fail, ...): they share
    no public base class, so they are taken from its binding module, with RuntimeError for any it adds."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("InvalidProtobuf", "InvalidGraph", "InvalidArgument", "Fail", "NoSuchFile", "NoModel", "NotImplemented",
             "RuntimeException")
    return tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type)) + (RuntimeError,)


class Decoder:
    """Load a bundle and decode delay-stacked voxel vectors into embeddings.

    Parameters
    ----------
    bundle : path-like
        Model bundle folder; validated (sha256s, shapes) on load.
    threads : int
        onnxruntime intra-op threads (1 on the live path).

    Attributes
    ----------
    manifest : dict
        The bundle manifest, with its arrays under ``manifest["arrays"]``.
    input_dim, dim : int

    Raises
    ------
    protocols.bundle.BundleError
        A missing or modified file, or inconsistent shapes (:func:`protocols.bundle.validate_bundle`).
    ValueError
        A ``decoder.onnx`` onnxruntime cannot load, or whose shapes disagree with the manifest.
    """

    def __init__(self, bundle, threads: int = 1):
        import onnxruntime as ort

        self.path = os.fspath(bundle)
        self.manifest = validate_bundle(self.path)
        self.input_dim = int(self.manifest["input_dim"])
        self.dim = int(self.manifest["output_dim"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        onnx_path = os.path.join(self.path, "decoder.onnx")
        try:
            self.session = ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])
        except _ort_load_errors() as e:
            why = " ".join(str(e).split())
            raise ValueError(f"{onnx_path}: onnxruntime cannot load it ({type(e).__name__}: {why}); the bundle is "
                             "damaged even though its sha256 matches the manifest: re-export the bundle with "
                             "`b2m train`") from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        if inp.shape[1] != self.input_dim or out.shape[1] != self.dim:
            raise ValueError(f"{self.path}/decoder.onnx: shapes {inp.shape} -> {out.shape} disagree with the "
                             f"manifest ({self.input_dim} -> {self.dim}); re-export the bundle")
        self._x = np.zeros((1, self.input_dim), np.float32)
        self._y = np.zeros((1, self.dim), np.float32)
        self._binding = self.session.io_binding()
        self._binding.bind_cpu_input("x", self._x)
        self._binding.bind_output("embedding", "cpu", element_type=np.float32, shape=self._y.shape,
                                  buffer_ptr=self._y.ctypes.data)

    @property
    def embedder(self) -> dict:
        return self.manifest["embedder"]

    def decode(self, x: np.ndarray) -> np.ndarray:
        """One decoder input of shape (input_dim,) -> embedding of shape (dim,), unit norm.

        Returns a reused buffer: copy it to keep it past the next call.
        """
        np.copyto(self._x[0], x, casting="same_kind")
        self.session.run_with_iobinding(self._binding)
        return self._y[0]

    def decode_batch(self, x: np.ndarray) -> np.ndarray:
        """Many inputs (N, input_dim) -> (N, dim); allocates, for offline use."""
        return self.session.run(["embedding"], {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]
