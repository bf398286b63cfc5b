"""Provenance blocks (``protocols.provenance``): the code and software that made a file."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from protocols.provenance import check_provenance, describe_provenance, git_state, provenance

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_provenance_names_this_checkout_and_the_installed_software():
    p = provenance(["b2m", "train", "ds"])
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI clones one): its commit, and whether tracked files changed
        dirty = subprocess.run(["git", "-C", REPO, "diff", "--quiet", "HEAD"]).returncode != 0
        assert p["git_commit"] == head.stdout.strip() and p["git_dirty"] is dirty
    assert p["command"] == ["b2m", "train", "ds"]
    import onnxruntime

    assert p["packages"]["numpy"] == np.__version__ and p["packages"]["onnxruntime"] == onnxruntime.__version__
    assert p["b2m"] and p["python"].count(".") == 2
    assert json.loads(json.dumps(p)) == p  # plain JSON


def test_outside_a_git_checkout_there_is_no_commit(tmp_path):
    assert git_state(str(tmp_path)) == (None, None)


def test_a_provenance_that_is_not_a_mapping_is_refused_naming_the_file(tmp_path):
    from protocols.bundle import BundleError, read_bundle_manifest

    assert check_provenance(None, "x") is None and check_provenance({"b2m": "0.1"}, "x") == {"b2m": "0.1"}
    folder = tmp_path / "bundle"
    folder.mkdir()
    manifest = {"format": "b2m-model-bundle", "version": 1, "embedder": {"id": "e", "dim": 2}, "tr_s": 1.5,
                "delays": [2], "mask": {}, "preprocess": {}, "input_dim": 1, "files": {}, "provenance": ["x"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="'provenance' must be a mapping .* got list") as e:
        read_bundle_manifest(folder)
    assert e.value.field == str(folder / "manifest.json")


def test_the_report_line_gives_the_commit_and_says_when_none_was_kept():
    p = {"b2m": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": True, "created_utc": "2026-11-29T03:00:00+00:00",
         "command": ["b2m", "train"], "python": "3.11.7", "hostname": "lab", "packages": {"numpy": "2.4.6", "faiss-cpu": None}}
    line = describe_provenance(p)
    assert line.startswith("b2m 0.1.0, git 0123456789 with uncommitted changes on lab, 2026-11-29T03:00:00+00:00")
    assert "numpy 2.4.6" in line and "faiss" not in line and line.endswith("command: b2m train")
    assert describe_provenance(None).startswith("not recorded")
