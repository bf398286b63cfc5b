"""Another day, another slice prescription: a session decodes runs on a grid its model was not trained on.

A model bundle is made on day 1's grid (nibabel's real EPI field of view, 128x96x24 at 2x2x2.2 mm, its
first volume the motion reference). The same brain activity is then scanned as two runs: one on day 1's
grid, one on day 2's (2.4 mm isotropic, tilted 12 deg, the head 10 mm and 6 deg away), the latter
made from the truth by scipy's spline. Real processes: ``b2m session`` and ``b2m scanner replay``.
"""

from __future__ import annotations

import html
import json
import os
import signal

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path
from session_kit import make_bundle, make_library

from realtime.session.decisions import decisions_path, read_decisions

N_VOLUMES = 12


def _runs(folder: str, rng) -> tuple[str, str]:
    from scipy.ndimage import gaussian_filter, map_coordinates

    from realtime.preprocessing import rigid_matrix

    img = nib.load(os.path.join(data_path, "example4d.nii.gz"))
    vol0 = np.asanyarray(img.dataobj)[..., 0].astype(np.float64)
    affine = img.affine
    brain = [vol0 * (1.0 + 1.6 * gaussian_filter(rng.standard_normal(vol0.shape), 2.0)) for _ in range(N_VOLUMES)]
    brain[0] = vol0  # the first volume is the bundle's reference: the model's day
    tilt = rigid_matrix([0, 0, 0, np.radians(12), 0, 0]) @ np.diag([-2.4, 2.4, 2.4, 1.0])
    tilt[:3, 3] = affine[:3, 3] + [6.0, -8.0, 2.0]
    shape2 = (112, 96, 24)
    move = rigid_matrix([6.0, -7.0, 3.0, np.radians(4), np.radians(-2), np.radians(3)])
    vox = np.linalg.inv(affine) @ np.linalg.inv(move) @ tilt
    at = vox[:3, :3] @ np.indices(shape2).reshape(3, -1) + vox[:3, 3:]
    day2 = [map_coordinates(b, at, order=3, mode="nearest").reshape(shape2) for b in brain]
    paths = []
    for name, vols, aff in (("day1", brain, affine), ("day2", day2, tilt)):
        data = np.stack([np.clip(np.round(v + rng.normal(0, 3.0, v.shape)), 0, 32767) for v in vols], -1)
        out = nib.Nifti1Image(data.astype(np.int16), aff)
        out.header.set_xyzt_units("mm", "sec")
        out.header["pixdim"][4] = 1.0
        paths.append(os.path.join(folder, f"{name}.nii"))
        nib.save(out, paths[-1])
    return paths[0], paths[1]


@pytest.mark.timeout(240)
def test_a_run_on_another_days_grid_is_aligned_and_decodes_as_on_the_models(b2m_proc, endpoint, tmp_path, rng):
    day1, day2 = _runs(str(tmp_path), rng)
    bundle = make_bundle(str(tmp_path), day1, motion=True)  # trained on day 1's grid, its reference volume 0
    library = make_library(str(tmp_path))
    out = tmp_path / "session"
    sess = b2m_proc("session", "--model", bundle, "--library", library, "--out", out, "--bind", endpoint,
                    "--audio", f"wav:{out}/feedback.wav", "--results", "none", "--no-dashboard", name="session")
    sess.wait_for("ready", timeout=60)
    for run_id, path in (("day1", day1), ("day2", day2)):
        tx = b2m_proc("scanner", "replay", path, "--connect", endpoint, "--speed", "max", "--run-id", run_id,
                      "--quiet", name=f"replay-{run_id}")
        assert tx.wait(120) == 0, tx.stderr()
    sess.kill(signal.SIGTERM)
    assert sess.p.returncode == 0, sess.stderr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["errors"] == 0 and summary["counts"]["volumes"] == 2 * N_VOLUMES, summary["counts"]
    assert list(summary["alignment"]) == ["day2"] and summary["alignment"]["day2"]["other_grid"]
    assert summary["alignment"]["day2"]["similarity"] > 0.95 and summary["alignment"]["day2"]["coverage"] > 0.9
    assert "run day2: volumes on another grid than the model's (112x96x24 voxels of 2.4x2.4x2.4 mm)" in \
        sess.stderr()
    report = html.unescape((out / "report.html").read_text())
    assert "Runs aligned to the model's reference (another session)" in report
    # the head's move imposed on day 2: (6, -7, 3) mm, 4, -2, 3 deg
    assert f"day2: another grid, {np.linalg.norm([6.0, -7.0, 3.0]):.1f} mm" in report
    assert "of the model's voxels" in report
    rep = b2m_proc("session", "replay", out, name="session-replay")  # the search is deterministic
    assert rep.wait() == 0 and "identical" in rep.stdout(), rep.stderr() + rep.stdout()
    emb = {}
    for run_id in ("day1", "day2"):
        ds = sorted(read_decisions(decisions_path(str(out), run_id)), key=lambda d: d["index"])
        emb[run_id] = np.array([d["embedding"] for d in ds if d.get("embedding") is not None])
    assert len(emb["day1"]) == len(emb["day2"]) == N_VOLUMES - 2  # delays (1, 2)
    # the same activity decodes to the same point: each moment's embedding against the other day's
    same = np.sum(emb["day1"] * emb["day2"], axis=1)
    others = emb["day1"] @ emb["day2"].T
    print(f"\nday 1 vs day 2, cosine of the decoded embeddings per volume: {np.round(same, 3)}")
    assert np.median(same) > 0.8
    assert np.all(same >= others.max(axis=0) - 1e-6)  # and each moment is closer to itself than to any other
