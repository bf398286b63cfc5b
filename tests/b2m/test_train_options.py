"""``b2m train``'s options are checked as they are parsed, naming the option and the form expected."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from b2m.cli import build_parser

from conftest import REPO


def _parse_error(capsys, *options) -> str:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train", "ds", "--out", "bundle", *options])
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("options, expected", [
    (("--voxels", "-5"), "argument --voxels: expected how many voxels to keep, a whole number >= 1"),
    (("--voxels", "0"), "argument --voxels: expected how many voxels to keep, a whole number >= 1"),
    (("--voxels", "1e3"), "argument --voxels: expected how many voxels"),
    (("--alphas", "1e-2:1e7"), "argument --alphas: expected MIN:MAX:N, N ridge penalties log-spaced"),
    (("--alphas", "1e-2:x:19"), "argument --alphas: expected MIN:MAX:N"),
    (("--alphas", "0:1e7:19"), "with 0 < MIN <= MAX and N >= 1"),
    (("--alphas", "1e7:1e-2:19"), "with 0 < MIN <= MAX and N >= 1"),
    (("--alphas", "1e-2:1e7:0"), "with 0 < MIN <= MAX and N >= 1"),
    (("--delays", "2,x"), "argument --delays: expected the hemodynamic delays as whole numbers of TRs >= 0, "
                          "comma-separated (e.g. 2,3,4); 'x' in '2,x' is not one"),
    (("--delays", "2,-1"), "argument --delays: expected the hemodynamic delays"),
    (("--delays", "2,2"), "argument --delays: expected distinct delays"),
])
def test_train_option_of_the_wrong_form_is_named_at_parse_time(capsys, options, expected):
    assert expected in _parse_error(capsys, *options)


def test_train_options_parse_to_the_values_trained_on(tmp_path):
    mask = tmp_path / "roi.nii.gz"
    mask.write_bytes(b"")  # its contents are read by the training, which names the option too
    args = build_parser().parse_args(["train", "ds", "--out", "b", "--voxels", "7", "--delays", "1, 3",
                                      "--alphas", "1e-1:1e3:5", "--roi-mask", str(mask)])
    assert args.voxels == 7 and args.delays == (1, 3) and args.roi_mask == str(mask)
    np.testing.assert_allclose(args.alphas, [0.1, 1.0, 10.0, 100.0, 1000.0], rtol=1e-12)
    defaults = build_parser().parse_args(["train", "ds", "--out", "b"])
    assert defaults.delays == (2, 3, 4) and len(defaults.alphas) == 19 and defaults.voxels == 500


def test_train_roi_mask_or_parcellation_not_nifti_is_named(capsys, tmp_path):
    npy = tmp_path / "mask.npy"
    np.save(npy, np.ones((2, 2, 2), bool))
    assert f"argument --roi-mask: {npy}: expected a NIfTI image (.nii or .nii.gz)" in _parse_error(
        capsys, "--roi-mask", str(npy))
    assert f"argument --parcellation: {tmp_path / 'atlas.txt'}: expected a NIfTI image" in _parse_error(
        capsys, "--parcellation", str(tmp_path / "atlas.txt"), "--top-regions", "2")


def test_b2m_train_bad_alphas_exit_2_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "b2m", "train", str(tmp_path), "--out", str(tmp_path / "b"),
                        "--alphas", "1e-2:1e7"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert "argument --alphas: expected MIN:MAX:N" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()
