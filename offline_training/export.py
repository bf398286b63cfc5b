"""Export a fitted linear decoder as an ONNX graph and a model bundle.

The graph is ``embedding = normalize((x - x_mean) @ W + y_mean)`` built
directly with ``onnx.helper`` (no framework in between), float32, opset 17,
with a dynamic batch dimension. L2 normalisation puts the output on the unit
sphere the music library lives on.
"""

from __future__ import annotations

import os

import numpy as np

from protocols.bundle import REQUIRED_FILES, write_bundle_manifest

__all__ = ["linear_decoder_onnx", "predict_numpy", "write_bundle"]

_EPS = 1e-12


def predict_numpy(x: np.ndarray, coef: np.ndarray, x_mean: np.ndarray, y_mean: np.ndarray) -> np.ndarray:
    """The reference computation the ONNX graph must reproduce: (N, D) -> (N, dim), unit rows."""
    y = (np.asarray(x, np.float64) - x_mean) @ coef + y_mean
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), _EPS)


def linear_decoder_onnx(coef: np.ndarray, x_mean: np.ndarray, y_mean: np.ndarray, path: str,
                        meta: dict | None = None) -> str:
    """Write the decoder graph.

    Parameters
    ----------
    coef : ndarray of shape (n_features, dim)
    x_mean : ndarray of shape (n_features,)
    y_mean : ndarray of shape (dim,)
    path : str
        Output ``.onnx`` file.
    meta : dict, optional
        String metadata stored in the model (embedder id, etc.).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d_in, dim = coef.shape
    # fold the centring into the bias: (x - m) W + b = x W + (b - m W)
    w = np.asarray(coef, np.float32)
    bias = (np.asarray(y_mean, np.float64) - np.asarray(x_mean, np.float64) @ np.asarray(coef, np.float64))
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(bias.astype(np.float32), "b"),
             numpy_helper.from_array(np.array([_EPS], np.float32), "eps")]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
        helper.make_node("ReduceL2", ["y"], ["norm"], axes=[1], keepdims=1),  # opset 17: axes attribute
        helper.make_node("Max", ["norm", "eps"], ["norm_safe"]),
        helper.make_node("Div", ["y", "norm_safe"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "b2m_linear_decoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d_in])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="brain2music-rt")
    model.ir_version = 8
    for k, v in (meta or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(k), str(v)
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save_model(model, path)
    return path


def write_bundle(out: str, *, coef, x_mean, y_mean, mask, affine, reference, norm_mean, norm_std,
                 embedder: dict, embedder_spec: dict | None, tr_s: float, delays, preprocess: dict,
                 metrics: dict | None = None, extra_files: tuple = (), extra: dict | None = None) -> str:
    """Write a complete model bundle folder (see :mod:`protocols.bundle`)."""
    os.makedirs(out, exist_ok=True)
    linear_decoder_onnx(coef, x_mean, y_mean, os.path.join(out, "decoder.onnx"),
                        meta={"embedder": embedder.get("id"), "embedder_version": embedder.get("version")})
    np.save(os.path.join(out, "mask.npy"), np.asarray(mask, bool))
    np.save(os.path.join(out, "reference.npy"), np.asarray(reference, np.float32))
    np.save(os.path.join(out, "norm_mean.npy"), np.asarray(norm_mean, np.float32))
    np.save(os.path.join(out, "norm_std.npy"), np.asarray(norm_std, np.float32))
    mask = np.asarray(mask, bool)
    manifest = {
        "embedder": embedder, "embedder_spec": embedder_spec, "tr_s": float(tr_s), "delays": list(delays),
        "mask": {"shape": list(mask.shape), "affine": np.asarray(affine, float).tolist(), "n_voxels": int(mask.sum())},
        "preprocess": preprocess, "input_dim": int(np.shape(coef)[0]), "output_dim": int(np.shape(coef)[1]),
        "metrics": metrics or {}, "files": list(REQUIRED_FILES) + list(extra_files), **(extra or {}),
    }
    return write_bundle_manifest(out, manifest)
