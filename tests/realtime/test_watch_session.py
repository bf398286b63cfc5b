"""From the scanner's export folder to music: real Siemens mosaic DICOMs (or Philips PAR/REC pairs)
written into a folder, ``b2m scanner watch`` sending them, ``b2m session`` decoding them (real ONNX,
preprocessing, mixer)."""

from __future__ import annotations

import json
import shutil
import signal

import nibabel as nib
import numpy as np
import pytest
from session_kit import make_bundle, make_library
from vendor_data import PHILIPS, SIEMENS

from realtime.scanner.vendors import read_philips_parrec, read_siemens_mosaic

# vendor -> (each volume's files in the order the scanner writes them, the reader, extra watch arguments)
VENDORS = {
    "siemens": ([(p,) for p in SIEMENS], read_siemens_mosaic, ()),
    "philips": ([(p, p[:-4] + ".rec") for p in PHILIPS], read_philips_parrec, ("--tr", 1)),  # XTC's TR reads 1 ms
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_export_folder_drives_a_session(vendor, b2m_proc, endpoint, tmp_path):
    files, reader, extra = VENDORS[vendor]
    vols = [reader(f[0]) for f in files]
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
    n = len(files)
    tx = b2m_proc("scanner", "watch", folder, "--vendor", vendor, *extra, "--connect", endpoint, "--volumes", n,
                  "--run-id", "epi-01", "--quiet", name="watch")
    tx.wait_for("watching")
    for volume_files in files:
        for p in volume_files:
            shutil.copy(p, folder)
    assert tx.wait(timeout=60) == 0, tx.stderr()
    summary = json.loads(tx.stdout().strip().splitlines()[-1])
    assert summary["sent"] == n and summary["all_acked"] and summary["ended"] == "volumes"
    sess.kill(signal.SIGTERM)
    assert sess.p.returncode == 0, sess.stderr()
    counts = json.loads((out / "summary.json").read_text())["counts"]
    # delays (1, 2): the third volume is the first one decoded
    assert counts["volumes"] == n and counts["decoded"] == n - 2, counts
    # what the session recorded is what the scanner wrote, bit for bit
    rec = nib.load(out / "nifti" / "epi-01.nii")
    assert np.array_equal(np.asanyarray(rec.dataobj.get_unscaled()), np.stack([v.data for v in vols], -1))
    rep = b2m_proc("session", "replay", out, name="session-replay")
    assert rep.wait() == 0, rep.stderr() + rep.stdout()
    assert "identical" in rep.stdout()
    # the BIDS export carries the slice times the scanner's headers give (Siemens: MosaicRefAcqTimes)
    ex = b2m_proc("session", "export", out, "--bids", tmp_path / "bids", "--subject", "01", name="export")
    assert ex.wait() == 0, ex.stderr()
    side = json.loads((tmp_path / "bids/sub-01/func/sub-01_task-neurofeedback_run-01_bold.json").read_text())
    if vols[0].slice_timing_s is None:  # Philips PAR/REC: no slice times in the header
        assert "SliceTiming" not in side
    else:
        assert side["SliceTiming"] == list(vols[0].slice_timing_s) and len(side["SliceTiming"]) == vols[0].data.shape[2]
