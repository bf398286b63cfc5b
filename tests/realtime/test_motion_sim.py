"""Motion estimates against ``b2m simulate``'s true motion: the convention check (issue 5, acceptance 1).

One tiny-grid (8 mm) Test run of 24 volumes with the ``bad`` motion preset,
nearly noise-free (tSNR 1e4) and without scanner drift (whose spatially
varying gain shows up as apparent motion), is simulated once per module.
The live realignment must recover the simulator's ``*_motion.tsv`` with the
conversion of ``tools/motion_drift_sim.py`` (the same parameters; reference
volume 0; a later reference by composition). The 8 mm grid limits accuracy
to about 0.15 mm: this checks the convention (direction, units, reference),
not the accuracy target, which the tool measures on the 2 and 4 mm grids.
"""

from __future__ import annotations

import os
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO
from offline_training.simulate import NoiseConfig, SimulationConfig, default_metadata_dir, simulate_dataset
from realtime.preprocessing import framewise_displacement, params_to_spm, realign_run, rigid_matrix

sys.path.insert(0, os.path.join(REPO, "tools"))
from motion_accuracy import DEG, errors  # noqa: E402
from motion_drift_sim import displacement_error, read_true_motion, truth_relative  # noqa: E402

N_VOL = 24
STEM = "sub-001_task-Test_run-01"


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    if not (default_metadata_dir() / "sub-001" / "func").is_dir():
        pytest.skip(f"ds003720 metadata not at {default_metadata_dir()}")
    root = tmp_path_factory.mktemp("motion_sim") / "ds"
    simulate_dataset(root, SimulationConfig(grid="tiny", train_runs=0, test_runs=1, n_volumes=N_VOL, motion="bad",
                                            seed=0, noise=NoiseConfig(tsnr=1e4, drift_pct=0.0)))
    img = nib.load(root / "sub-001" / "func" / f"{STEM}_bold.nii.gz")
    truth_tsv = root / "derivatives" / "simulation" / "sub-001" / f"{STEM}_motion.tsv"
    return np.asarray(img.dataobj), img.affine, truth_tsv


def test_truth_file_is_in_our_convention(sim_run):
    _, _, tsv = sim_run
    truth = read_true_motion(tsv)
    assert truth.shape == (N_VOL, 6)
    assert np.all(truth[0] == 0)  # the simulator's reference is volume 0
    assert np.abs(truth[:, 3:]).max() < 0.2  # radians, not degrees
    assert np.abs(truth[:, 3:]).max() > 0.2 * DEG  # and enough rotation to test
    fd = np.loadtxt(tsv, delimiter="\t", skiprows=1, usecols=6)
    np.testing.assert_allclose(fd, framewise_displacement(truth), atol=1e-12)


def test_truth_relative_composes_to_the_original():
    rng = np.random.default_rng(0)
    truth = np.c_[rng.normal(0, 2, (10, 3)), rng.normal(0, 3 * DEG, (10, 3))]
    truth[0] = 0
    np.testing.assert_allclose(truth_relative(truth, 0), truth, atol=1e-12)
    rel = truth_relative(truth, 4)
    np.testing.assert_allclose(rel[4], 0, atol=1e-12)
    np.testing.assert_allclose(rigid_matrix(rel) @ rigid_matrix(truth[4]), rigid_matrix(truth), atol=1e-12)


@pytest.mark.parametrize("ref", [0, 7])
def test_realign_recovers_the_simulated_motion(sim_run, ref):
    data, affine, tsv = sim_run
    truth = truth_relative(read_true_motion(tsv), ref)
    rm = realign_run(data, affine, reference_index=ref)
    keep = np.arange(N_VOL) != ref
    est, tru = rm.params[keep], truth[keep]
    e = errors(est, tru)
    true_mm = float(np.sqrt(np.mean(tru[:, :3] ** 2)))
    true_deg = float(np.sqrt(np.mean(tru[:, 3:] ** 2)) / DEG)
    assert e["rms_mm"] < 0.25 and e["rms_deg"] < 0.2, e
    assert e["rms_mm"] < 0.3 * true_mm and e["rms_deg"] < 0.3 * true_deg, (e, true_mm, true_deg)
    # any other convention is far off: the opposite direction, or SPM's parameters
    for other in (-tru, params_to_spm(tru)):
        o = errors(est, other)
        assert o["rms_mm"] > 3 * e["rms_mm"] or o["rms_deg"] > 3 * e["rms_deg"], (o, e)
    # every component follows the truth (correlation over the run)
    for c in range(6):
        assert np.corrcoef(est[:, c], tru[:, c])[0, 1] > 0.9, c
    world = np.array([[0.0, 0.0, 0.0], [60.0, 0.0, 0.0], [0.0, 60.0, 0.0], [0.0, 0.0, 50.0]])
    assert displacement_error(est, tru, world).mean() < 0.3
