"""From the scanner's export folder to music: real Siemens mosaic DICOMs written into a folder,
``b2m scanner watch`` sending them, ``b2m session`` decoding them (real ONNX, preprocessing, mixer)."""

from __future__ import annotations

import json
import shutil
import signal

import nibabel as nib
import numpy as np
import pytest
from session_kit import make_bundle, make_library
from vendor_data import SIEMENS

from realtime.scanner.vendors import read_siemens_mosaic


@pytest.mark.timeout(180)
def test_siemens_export_folder_drives_a_session(b2m_proc, endpoint, tmp_path):
    vols = [read_siemens_mosaic(p) for p in SIEMENS]
    # the model is trained on this grid, as a site trains on runs recorded from the same sequence
    img = nib.Nifti1Image(np.stack([v.data for v in vols], -1), vols[0].affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 1.0
    run = tmp_path / "recorded.nii"
    nib.save(img, run)
    bundle, library = make_bundle(str(tmp_path), str(run)), make_library(str(tmp_path))
    out, folder = tmp_path / "session", tmp_path / "export"
    folder.mkdir()
    sess = b2m_proc("session", "--model", bundle, "--library", library, "--out", out, "--bind", endpoint,
                    "--audio", f"wav:{out}/feedback.wav", "--results", "tcp://127.0.0.1:*", "--no-dashboard",
                    name="session")
    sess.wait_for("ready", timeout=60)
    tx = b2m_proc("scanner", "watch", folder, "--vendor", "siemens", "--connect", endpoint, "--volumes", 3,
                  "--run-id", "epi-01", "--quiet", name="watch")
    tx.wait_for("watching")
    for p in SIEMENS:
        shutil.copy(p, folder)
    assert tx.wait(timeout=60) == 0, tx.stderr()
    summary = json.loads(tx.stdout().strip().splitlines()[-1])
    assert summary["sent"] == 3 and summary["all_acked"] and summary["ended"] == "volumes"
    sess.kill(signal.SIGTERM)
    assert sess.p.returncode == 0, sess.stderr()
    counts = json.loads((out / "summary.json").read_text())["counts"]
    # delays (1, 2): the third volume is the first one decoded
    assert counts["volumes"] == 3 and counts["decoded"] == 1, counts
    # what the session recorded is what the scanner wrote, bit for bit
    rec = nib.load(out / "nifti" / "epi-01.nii")
    assert np.array_equal(np.asanyarray(rec.dataobj.get_unscaled()), np.stack([v.data for v in vols], -1))
    rep = b2m_proc("session", "replay", out, name="session-replay")
    assert rep.wait() == 0, rep.stderr() + rep.stdout()
    assert "identical" in rep.stdout()
