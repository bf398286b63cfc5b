"""Bad input to the commands that read a session record, given as a real process on a real (small) session:
``b2m study --out`` a file, ``b2m session replay`` with a policy option out of range, ``b2m session export``
with a bad ``--ses``. Each is named by its option, with what it may be, and nothing is written."""

from __future__ import annotations

import time

import pytest
from session_kit import kit_fixture, volumes

from music.library import Library
from realtime.audio import WavSink
from realtime.decoder import Decoder
from realtime.feedback import PolicyConfig
from realtime.session import SessionEngine, session_info, write_session_info


@pytest.fixture(scope="module")
def real_session(tmp_path_factory, fmri1_nii):
    kit = kit_fixture(tmp_path_factory, fmri1_nii)
    folder = tmp_path_factory.mktemp("study") / "A"
    folder.mkdir()
    out = WavSink(str(folder / "feedback.wav")).start()
    eng = SessionEngine(Decoder(kit.bundle), Library(kit.library), out,
                        PolicyConfig(smooth_trs=1, margin=0.0, min_dwell_s=5.0, crossfade_s=0.5), record_dir=str(folder))
    write_session_info(folder, session_info(eng, kit.bundle, kit.library, f"wav:{folder / 'feedback.wav'}"))
    for m in volumes(kit.nifti):
        eng.on_volume(m, time.time())
    eng.finish()
    out.close()
    return folder


def test_study_with_an_out_that_is_a_file_prints_nothing_and_names_it(real_session, tmp_path, b2m_proc):
    afile = tmp_path / "afile"
    afile.write_text("")
    p = b2m_proc("study", real_session, "--out", afile, name="study")
    assert p.wait(timeout=120) == 2
    assert f"--out {afile}: is a file: give a folder path" in p.stderr() and "Traceback" not in p.stderr()
    assert p.stdout() == ""  # not the table, then an error
    ok = b2m_proc("study", real_session, "--out", tmp_path / "st", name="ok")
    assert ok.wait(timeout=120) == 0, ok.stderr()
    assert (tmp_path / "st" / "study.tsv").read_text() == "".join(ok.stdout().splitlines(True)[:2])


@pytest.mark.parametrize("option, value, said", [
    ("--min-dwell", "-4", "--min-dwell (min_dwell_s) must be 0 or more seconds, got -4.0"),
    ("--top-k", "0", "--top-k (k) must be a whole number of 1 or more, got 0"),
    ("--crossfade", "-1", "--crossfade (crossfade_s) must be 0 or more seconds, got -1.0"),
    ("--smooth-trs", "0", "--smooth-trs (smooth_trs) must be a whole number of 1 or more, got 0"),
    ("--margin", "nan", "--margin (margin) must be from 0 to 2 (cosine), got nan"),
])
def test_session_replay_names_the_one_policy_option_out_of_range(real_session, tmp_path, b2m_proc, option, value,
                                                                  said):
    p = b2m_proc("session", "replay", real_session, "--out", tmp_path / "R", option, value, name="replay")
    assert p.wait(timeout=120) == 2
    assert f"error: {said}" in p.stderr() and "PolicyConfig(" not in p.stderr() and "Traceback" not in p.stderr()
    assert not (tmp_path / "R").exists()


def test_policy_config_names_each_wrong_field_by_its_option():
    cases = [({"smooth_trs": 0}, "--smooth-trs (smooth_trs) must be a whole number of 1 or more, got 0"),
             ({"k": -2}, "--top-k (k) must be a whole number of 1 or more, got -2"),
             ({"k": 2.5}, "--top-k (k) must be a whole number of 1 or more, got 2.5"),
             ({"margin": -0.1}, "--margin (margin) must be from 0 to 2 (cosine), got -0.1"),
             ({"min_dwell_s": float("inf")}, "--min-dwell (min_dwell_s) must be 0 or more seconds, got inf"),
             ({"crossfade_s": -1}, "--crossfade (crossfade_s) must be 0 or more seconds, got -1"),
             ({"align": "downbeat"}, "--align (align) must be 'bar', 'beat' or 'none', got 'downbeat'")]
    for kwargs, said in cases:
        with pytest.raises(ValueError) as err:
            PolicyConfig(**kwargs)
        assert str(err.value) == said
    ok = PolicyConfig(smooth_trs=1, k=1, margin=0.0, min_dwell_s=0.0, crossfade_s=0.0, align="none")  # the edges
    assert ok.to_dict()["k"] == 1


def test_session_export_names_ses_for_a_bad_session_label(real_session, tmp_path, b2m_proc):
    p = b2m_proc("session", "export", real_session, "--bids", tmp_path / "bids", "--subject", "01", "--ses", "a b",
                 name="export")
    assert p.wait(timeout=120) == 2
    assert "error: --ses 'a b': a BIDS label is letters and digits only" in p.stderr()
    assert "--session" not in p.stderr() and not (tmp_path / "bids").exists()
