"""ONNX decoder parity with numpy, bundle validation, and a fresh-process load."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from offline_training.export import predict_numpy, write_bundle
from protocols.bundle import BundleError, validate_bundle
from realtime.decoder import Decoder

from conftest import REPO


@pytest.fixture
def bundle(tmp_path, rng):
    mask = np.zeros((6, 5, 4), bool)
    mask[1:5, 1:4, 1:3] = True
    n_vox = int(mask.sum())
    delays = (2, 3)
    d_in, dim = n_vox * len(delays), 7
    coef = rng.standard_normal((d_in, dim)) * 0.1
    x_mean, y_mean = rng.standard_normal(d_in), rng.standard_normal(dim)
    out = tmp_path / "bundle"
    write_bundle(str(out), coef=coef, x_mean=x_mean, y_mean=y_mean, mask=mask, affine=np.diag([2, 2, 2, 1.0]),
                 reference=rng.standard_normal(mask.shape), norm_mean=np.zeros(n_vox), norm_std=np.ones(n_vox),
                 embedder={"id": "tiny", "version": "1", "dim": dim}, embedder_spec=None, tr_s=1.5, delays=delays,
                 preprocess={"detrend": "causal"}, metrics={"identification_accuracy": 0.5})
    return out, coef, x_mean, y_mean


def test_onnx_decoder_equals_numpy_prediction(bundle, rng):
    out, coef, x_mean, y_mean = bundle
    dec = Decoder(out)
    x = rng.standard_normal((5, dec.input_dim)).astype(np.float32)
    ref = predict_numpy(x, coef, x_mean, y_mean)
    np.testing.assert_allclose(dec.decode_batch(x), ref, rtol=0, atol=1e-5)
    for i in range(5):
        np.testing.assert_allclose(dec.decode(x[i]), ref[i], rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(dec.decode_batch(x), axis=1), 1.0, atol=1e-6)


def test_decode_reuses_its_output_buffer(bundle, rng):
    dec = Decoder(bundle[0])
    a = dec.decode(rng.standard_normal(dec.input_dim).astype(np.float32))
    b = dec.decode(rng.standard_normal(dec.input_dim).astype(np.float32))
    assert a is not None and np.shares_memory(a, b)


def test_tampered_bundle_is_refused(bundle):
    out = bundle[0]
    m = np.load(out / "norm_std.npy")
    np.save(out / "norm_std.npy", m * 2)
    with pytest.raises(BundleError, match="sha256"):
        validate_bundle(out)


def test_inconsistent_manifest_is_refused(bundle):
    out = bundle[0]
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["mask"]["n_voxels"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="voxels"):
        validate_bundle(out)
    with pytest.raises(BundleError, match="manifest.json"):
        validate_bundle(out / "nowhere")


def test_bundle_loads_in_fresh_process_with_only_numpy_onnxruntime_protocols(bundle):
    out = bundle[0]
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "from protocols.bundle import validate_bundle\n"
        f"m = validate_bundle({str(out)!r})\n"
        f"s = ort.InferenceSession({str(out / 'decoder.onnx')!r}, providers=['CPUExecutionProvider'])\n"
        "y = s.run(None, {'x': np.zeros((1, m['input_dim']), np.float32)})[0]\n"
        "heavy = [n for n in ('torch', 'sklearn', 'nibabel', 'scipy', 'music', 'realtime', 'offline_training') "
        "if n in sys.modules]\n"
        "print(y.shape, heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(1, 7) []"


def _set_manifest(out, **top) -> None:
    """Edit manifest.json's top-level keys (the sha256 sums cover the listed files, not the manifest)."""
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(top)
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_training_tsnr_is_read_from_the_manifests_qc_block(bundle):
    from protocols.bundle import training_tsnr

    out = bundle[0]
    m = validate_bundle(out)
    assert "qc" not in m and training_tsnr(m) is None  # a bundle made before the figure was kept
    assert training_tsnr({"qc": {}}) is None and training_tsnr({"qc": {"tsnr": {"median": None}}}) is None
    qc = {"tsnr": {"median": 41.5, "runs": {"Training_run-01": 40.0, "Training_run-02": 43.0}, "measure": "..."}}
    _set_manifest(out, qc=qc)
    m = validate_bundle(out)
    assert training_tsnr(m) == 41.5 and isinstance(training_tsnr(m), float)
    assert m["qc"] == qc
    _set_manifest(out, qc={"tsnr": {"median": 38}})  # an integer is a number
    assert training_tsnr(validate_bundle(out)) == 38.0


@pytest.mark.parametrize("bad", [-1.0, 0, "40", True, float("nan"), float("inf"), [40.0]])
def test_a_bad_training_tsnr_is_refused_by_name(bundle, bad):
    """Negative, zero, a string, a boolean, NaN or infinity (Python's json writes and reads both) or a list in
    ``qc.tsnr.median``: the bundle is refused, naming the key and the manifest."""
    from protocols.bundle import training_tsnr

    out = bundle[0]
    _set_manifest(out, qc={"tsnr": {"median": bad}})
    with pytest.raises(BundleError, match=r"qc\.tsnr\.median") as e:
        validate_bundle(out)
    assert e.value.field == str(out / "manifest.json")
    with pytest.raises(BundleError, match=r"qc\.tsnr\.median"):
        training_tsnr({"qc": {"tsnr": {"median": bad}}})


def test_training_tsnr_after_n_volumes_reads_the_running_curve(bundle):
    """``qc.tsnr.curve`` is the Training runs' running figure per volume: after n volumes its n-th value (the
    last one past its end), and the end's median where it has none yet (the first volumes) or no curve."""
    from protocols.bundle import read_training_tsnr, training_tsnr

    out = bundle[0]
    _set_manifest(out, qc={"tsnr": {"median": 40.0, "curve": [None, None, 55.0, 50.0, 45.0]}})
    m = validate_bundle(out)
    assert [training_tsnr(m, n) for n in (1, 2, 3, 4, 5, 6, 400)] == [40.0, 40.0, 55.0, 50.0, 45.0, 45.0, 45.0]
    assert training_tsnr(m) == 40.0 and training_tsnr({"qc": {"tsnr": {"median": 40.0}}}, 3) == 40.0
    assert read_training_tsnr(m).curve == (None, None, 55.0, 50.0, 45.0)
    assert read_training_tsnr({"qc": {"tsnr": {"median": 40.0}}}).curve is None and read_training_tsnr({}) is None


@pytest.mark.parametrize("qc, key", [({"tsnr": {"median": 40.0, "curve": [50.0, -1.0]}}, r"qc\.tsnr\.curve"),
                                     ({"tsnr": {"median": 40.0, "curve": "50"}}, r"qc\.tsnr\.curve"),
                                     ({"tsnr": 41.5}, r"qc must be an object with a tsnr object"),
                                     ([41.5], r"qc must be an object with a tsnr object")])
def test_a_malformed_qc_block_is_refused_not_ignored(bundle, qc, key):
    """A block that would silently turn the live tSNR alert off is refused, naming the key."""
    out = bundle[0]
    _set_manifest(out, qc=qc)
    with pytest.raises(BundleError, match=key):
        validate_bundle(out)
