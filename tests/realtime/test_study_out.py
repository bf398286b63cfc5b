"""``b2m study --out``: an --out that cannot be written is said before anything is printed."""

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
