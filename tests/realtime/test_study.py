"""``b2m study``: sessions side by side, real feedback against sham.

Four real sessions in process (two decoders, each also yoked to the other's
session), then ``b2m study`` as a process. The references: the decision
records read here with numpy, Welch's t written out by its formula, and
scipy's paired t-test over the yoked pairs.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest
from scipy import stats
from session_kit import kit_fixture, volumes

from music.library import Library
from realtime.audio import WavSink
from realtime.decoder import Decoder
from realtime.feedback import PolicyConfig
from realtime.session import SessionEngine, session_info, write_session_info
from realtime.session.decisions import run_decisions
from realtime.session.yoked import write_yoked, yoked_schedule

POLICY = PolicyConfig(smooth_trs=1, margin=0.0, min_dwell_s=5.0, crossfade_s=0.5, align="bar")


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii, other=True)


def session(kit, folder, bundle, source=None):
    folder.mkdir(parents=True)
    lib = Library(kit.library)
    yoked = yoked_schedule(source, lib) if source is not None else None
    if yoked is not None:
        write_yoked(folder, yoked)
    out = WavSink(str(folder / "feedback.wav")).start()
    eng = SessionEngine(Decoder(bundle), lib, out, POLICY, record_dir=str(folder), yoked=yoked)
    write_session_info(folder, session_info(eng, bundle, kit.library, f"wav:{folder / 'feedback.wav'}"))
    for m in volumes(kit.nifti):
        eng.on_volume(m, time.time())
    eng.finish()
    out.close()
    return folder


def by_hand(folder, lib_emb, ids):
    ds = dict(run_decisions(folder))["run-01"]
    cos = [float(d["embedding"].astype(np.float64) @ lib_emb[ids.index(d["clip"])]) for d in ds
           if d["embedding"] is not None and d["clip"] is not None]
    own = [d["own_clip"] == d["clip"] for d in ds if d["embedding"] is not None and "own_clip" in d]
    return np.mean(cos), (np.mean(own) if own else None), sum(d["action"] == "switch" for d in ds)


def test_study_puts_real_and_sham_sessions_side_by_side(kit, tmp_path, b2m_proc):
    real_a = session(kit, tmp_path / "A", kit.bundle)
    real_b = session(kit, tmp_path / "B", kit.other)
    sham_a = session(kit, tmp_path / "A2", kit.other, source=real_a)
    sham_b = session(kit, tmp_path / "B2", kit.bundle, source=real_b)
    p = b2m_proc("study", real_a, real_b, sham_a, sham_b, "--out", tmp_path / "study", name="study")
    assert p.wait(timeout=120) == 0, p.stderr()
    lines = p.stdout().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:5]]
    lib = Library(kit.library)
    lib_emb = np.load(os.path.join(kit.library, "embeddings.npy")).astype(np.float64)
    ids = [c.id for c in lib.clips]
    got = {}
    for row, folder, kind in zip(rows, (real_a, real_b, sham_a, sham_b), ("real", "real", "sham", "sham")):
        match, own, switches = by_hand(folder, lib_emb, ids)
        assert row["session"] == str(folder) and row["feedback"] == kind
        assert float(row["music_match"]) == pytest.approx(match, abs=1e-4)
        assert int(row["switches"]) == switches and int(row["volumes"]) == 40 and int(row["decoded"]) == 38
        if kind == "sham":
            assert float(row["own_agreement"]) == pytest.approx(own, abs=1e-4)
            assert row["yoked_to"] == str(real_a if folder == sham_a else real_b)
        else:
            assert row["own_agreement"] == "n/a" and row["yoked_to"] == "n/a"
        got.setdefault(kind, []).append(match)
    # Welch's t by its formula on the sessions' figures (each checked above), and its two-sided p from the
    # t distribution with Welch's degrees of freedom
    sessions = json.loads((tmp_path / "study" / "study.json").read_text())["sessions"]
    a, b = (np.array([s["music_match"] for s in sessions if s["feedback"] == g]) for g in ("real", "sham"))
    np.testing.assert_allclose(np.concatenate([a, b]), got["real"] + got["sham"], atol=1e-6)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    saved = json.loads((tmp_path / "study" / "study.json").read_text())["music_match_real_vs_sham"]
    assert saved["welch_t"] == pytest.approx(t, rel=1e-9)
    assert saved["p"] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert f"Welch t {t:.3f}" in lines[5] and "(n = participants, each the mean of their sessions; 4 sessions)" \
        in lines[5]
    assert saved["real"]["n_sessions"] == 2 and saved["unit"].startswith("participant")
    # beside it, each sham against the real session it was yoked to: two pairs, scipy's paired t-test
    pairs = json.loads((tmp_path / "study" / "study.json").read_text())["music_match_yoked_pairs"]
    ref = stats.ttest_rel(got["real"], got["sham"])
    assert pairs["n_pairs"] == 2 and pairs["unpaired"] == []
    assert [p["shams"] for p in pairs["pairs"]] == [[str(sham_a)], [str(sham_b)]]
    assert pairs["mean_difference"] == pytest.approx(np.mean(np.subtract(got["real"], got["sham"])), abs=1e-6)
    assert pairs["paired_t"] == pytest.approx(ref.statistic, rel=1e-4) and pairs["p"] == pytest.approx(ref.pvalue,
                                                                                                          rel=1e-4)
    assert lines[6].startswith("music match, each sham against its yoked source: n=2 pair(s)")
    assert f"paired t {pairs['paired_t']:.3f}" in lines[6]
    # data quality, the confound check: each session's tSNR is the median over its runs of the last figure the
    # record gives per run (read here from the decisions); the four decoded the same scan through the same
    # mask, so the figures agree and no test is run (no spread), the FD is n/a (the kit has no motion step)
    for row, folder in zip(rows, (real_a, real_b, sham_a, sham_b)):
        logged = dict(run_decisions(folder))["run-01"]
        last = [d["tsnr"] for d in sorted(logged, key=lambda d: d["index"]) if d.get("tsnr") is not None][-1]
        assert float(row["median_tsnr"]) == pytest.approx(last, abs=1e-4) and row["mean_fd_mm"] == "n/a"
    quality = json.loads((tmp_path / "study" / "study.json").read_text())
    assert quality["median_tsnr_real_vs_sham"]["real"]["n"] == 2 and quality["median_tsnr_real_vs_sham"]["p"] is None
    assert quality["median_tsnr_real_vs_sham"]["real"]["sd"] == 0.0
    assert quality["mean_fd_mm_real_vs_sham"]["real"]["n"] == 0
    assert lines[7].startswith("data quality, real against sham: mean FD (mm): real n=0")
    assert "tSNR of the decoder's voxels: real n=2" in lines[7]
    # no spread, no FD: equivalence is not tested, and is not claimed
    assert "equivalence not tested (it needs two participants of each, not all alike); margin +-0.05 mm" in lines[7]
    assert quality["median_tsnr_real_vs_sham"]["equivalence"]["tost"] is None
    assert lines[8] == ("equivalence margins (TOST, alpha 0.05): mean FD +-0.05 mm, tSNR +-10% of the real "
                        "group's mean")
    assert quality["equivalence_margins"] == {"mean_fd_mm": 0.05, "median_tsnr_fraction_of_real_mean": 0.1,
                                              "alpha": 0.05}
    page = (tmp_path / "study" / "study.html").read_text()
    assert "Data quality (equivalence, TOST)" in page and "Manipulation check, yoked pairs" in page
    assert "Study: real against sham feedback" in (tmp_path / "study" / "study.html").read_text()
    assert (tmp_path / "study" / "study.tsv").read_text().splitlines()[0].split("\t") == header
    # all four were run by this code with one policy: nothing to name
    assert quality["not_run_alike"] == [] and not any(line.startswith("note:") for line in lines)
    assert {s["code"] for s in sessions} == {s["code"] for s in sessions[:1]} != {"not recorded"}


def test_sessions_not_run_alike_are_named():
    """Other code, another feedback policy or mode between sessions is named; each participant's own model
    is not compared (it differs by design)."""
    from realtime.session.study import setup_differences

    base = {"code": "b2m 0.1.0, git aaaaaaaaaa", "policy": POLICY.to_dict(), "mode": "retrieval"}
    rows = [{"session": "/s/A", **base}, {"session": "/s/B", **base}]
    assert setup_differences(rows) == []
    rows.append({"session": "/s/C", **base, "code": "not recorded", "policy": {**POLICY.to_dict(), "smooth_trs": 3},
                 "mode": "generation"})
    assert setup_differences(rows) == [
        "the sessions were run by different code: b2m 0.1.0, git aaaaaaaaaa (A, B); not recorded (C)",
        "the sessions were run in different modes: A retrieval, B retrieval, C generation",
        "the sessions were run with different feedback policies: smooth_trs A 1, B 1, C 3"]


def test_study_with_one_session_per_group_runs_no_test_and_a_folder_without_decisions_is_named(kit, tmp_path,
                                                                                                b2m_proc):
    real = session(kit, tmp_path / "A", kit.bundle)
    p = b2m_proc("study", real, name="study")
    assert p.wait(timeout=120) == 0, p.stderr()
    assert "no test (it needs two participants of each, not all alike)" in p.stdout()
    assert "sham n=0 mean n/a" in p.stdout() and "no yoked pairs among these sessions" in p.stdout()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_session_info(empty, {"library": kit.library})
    bad = b2m_proc("study", real, empty, name="bad")
    assert bad.wait(timeout=60) == 2 and f"{empty}: no decisions" in bad.stderr()
