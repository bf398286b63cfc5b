"""Generation mode: the chosen generator point's piece is composed live and played without a seam.

Real parts throughout: the procedural generator, a library it made (embedded
by the kit's tiny embedder, so it builds in seconds), nitime's real run, the
real ONNX bundle and the real mixer writing a float WAV. The references are
independent of the session's segmenting: the piece rendered in one go from
its MIDI (``music.render.render_midi``), and bar lines from the tempo.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import soundfile as sf
from session_kit import kit_fixture, make_atlas, volumes

from music.generator import GeneratorStream
from music.library import Library, generator_point
from music.render import render_midi
from realtime.audio import WavSink
from realtime.decoder import Decoder
from realtime.feedback import PolicyConfig
from realtime.session import SessionEngine, read_decisions
from realtime.session.decisions import decisions_path
from realtime.session.engine import SessionOptions
from realtime.session.generation import AtlasError, LivePieces

SR = 48000
N_POINTS = 10


@pytest.fixture(scope="module")
def kit(tmp_path_factory, fmri1_nii):
    return kit_fixture(tmp_path_factory, fmri1_nii)


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """A generated library, one point per genre (tracks 0, seed 3), embedded by the kit's embedder."""
    return make_atlas(str(tmp_path_factory.mktemp("atlas")), N_POINTS, seed=3)


def one_go(point, n: int) -> np.ndarray:
    """The piece's first ``n`` samples rendered from its MIDI at once (the stream's documented equal)."""
    genre, track, seed, shared = point
    s = GeneratorStream(genre, track, seed, sr=SR, shared_instruments=shared)
    s.next(n_samples=n)  # writes the bars; the audio compared is rendered below, from the MIDI
    y = render_midi(s.midi(), sr=SR, duration_s=n / SR)[:n] * s.gain
    return np.clip(y, -1.0, 1.0)


def test_every_generated_row_names_its_generator_point(atlas, kit):
    lib = Library(atlas)
    genres = [generator_point(c)[0] for c in lib.clips]
    assert [generator_point(c)[1:] for c in lib.clips] == [(0, 3, False)] * N_POINTS
    assert genres == [c.genre for c in lib.clips] and len(set(genres)) == N_POINTS
    assert all(generator_point(c) is None for c in Library(kit.library).clips)  # audio files, not generated


def test_segments_join_into_the_piece_rendered_in_one_go(atlas):
    lib = Library(atlas)
    index = 5
    pieces = LivePieces(lib, SR, channels=2, segment_bars=2)
    try:
        segs = [pieces.start(index)] + [pieces.next_segment() for _ in range(3)]
    finally:
        pieces.close()
    y = np.concatenate([s.source for s in segs])
    point = generator_point(lib.clips[index])
    ref = one_go(point, len(y))
    np.testing.assert_array_equal(y[:, 0], y[:, 1])
    np.testing.assert_array_equal(y[:, 0], ref.astype(np.float32))
    assert [s.number for s in segs] == [0, 1, 2, 3]
    # each segment is two whole bars; its beats fall on the tempo's grid, the first on its first frame
    tempo, bpb = segs[0].tempo_bpm, segs[0].beats_per_bar
    bar = 60.0 / tempo * bpb * SR
    starts = np.cumsum([0] + [s.n_frames for s in segs])
    np.testing.assert_array_equal(starts, np.round(np.arange(5) * 2 * bar).astype(int))
    for s, start in zip(segs, starts):
        k = np.arange(len(s.beat_frames)) + s.number * 2 * bpb
        np.testing.assert_array_equal(s.beat_frames + start, np.round(k * 60.0 / tempo * SR).astype(int))
        assert s.beat_frames[0] == 0 and len(s.beat_frames) == 2 * bpb


def test_the_worker_waits_while_a_tr_is_worked_on_without_ever_blocking_the_session(atlas):
    import threading

    lib = Library(atlas)
    pieces = LivePieces(lib, SR, channels=2, segment_bars=2)
    got = []
    try:
        pieces.pause()  # a TR is being worked on
        pieces.prefetch([7, 8])
        time.sleep(0.5)
        assert pieces.stats["segments"] == 0  # the worker renders nothing meanwhile

        def session_side():  # asks for the piece the worker had started to prepare, still within the TR
            got.append(pieces.start(7))
            got.extend(pieces.next_segment() for _ in range(2))

        t = threading.Thread(target=session_side)
        t.start()
        t.join(30)
        assert not t.is_alive(), "the session waited forever for a paused worker"
        pieces.resume()
    finally:
        pieces.close()
    # rendered in slices between pauses or on the spot, the piece is still the piece rendered in one go
    y = np.concatenate([g.source[:, 0] for g in got])
    np.testing.assert_array_equal(y, one_go(generator_point(lib.clips[7]), len(y)).astype(np.float32))


def run_generation(kit, atlas, tmp_path, policy, bars=2):
    dec, lib = Decoder(kit.bundle), Library(atlas)
    out = WavSink(str(tmp_path / "feedback.wav"), samplerate=SR).start()
    eng = SessionEngine(dec, lib, out, policy, SessionOptions(mode="generation", segment_bars=bars),
                        record_dir=str(tmp_path / "session"))
    results = []
    for m in volumes(kit.nifti):
        results.extend(eng.on_volume(m, time.time()))
    log = out.executed()
    eng.finish()
    out.close()
    return eng, results, log, read_decisions(decisions_path(tmp_path / "session", "run-01"))


def bar_lines(point, n_bars: int) -> np.ndarray:
    """Frames of the piece's first ``n_bars`` bar lines, from its tempo and meter."""
    from music.generator import sample_params

    p = sample_params(point[0], point[1], point[2], point[3])
    return np.round(np.arange(n_bars) * p.beats_per_bar * 60.0 / p.tempo * SR).astype(np.int64)


def test_a_generation_session_plays_each_piece_unbroken_and_switches_on_its_bar_lines(kit, atlas, tmp_path):
    policy = PolicyConfig(smooth_trs=1, margin=0.0, min_dwell_s=12.0, crossfade_s=0.5, align="bar")
    eng, results, log, recs = run_generation(kit, atlas, tmp_path, policy)
    lib = eng.library
    # decisions do not depend on the mode: the same policy over the same library, without sound
    same = SessionEngine(Decoder(kit.bundle), lib, None, policy)
    plain = [r for m in volumes(kit.nifti) for r in same.on_volume(m, time.time())]
    assert [(r.action, r.clip) for r in results] == [(r.action, r.clip) for r in plain]
    assert eng.pieces.stats["errors"] == 0
    assert [e["frame"] for e in log] == [e["scheduled_frame"] for e in log]  # every command on its frame
    # where each piece started: the first decision, then every switch the record reports
    started = [(d["audio_frame"], d["clip"]) for d in recs if d["audio_frame"] is not None]
    assert [c for _, c in started] == [results[0].clip] + [r.clip for r in results if r.action == "switch"]
    assert len(started) >= 3, [r.action for r in results]
    tr, fade = 1.35, int(0.5 * SR)
    assert started[0][0] == round(tr * SR)
    wav, sr = sf.read(str(tmp_path / "feedback.wav"), dtype="float32")
    assert sr == SR
    commands = [e["frame"] for e in log if e["kind"] == "switch"]
    for (a, clip), (b, _) in zip(started, started[1:]):
        point = generator_point(lib.clips[lib.index_of(clip)])
        lines = bar_lines(point, 64)
        # the piece is heard unbroken from the end of its fade-in/crossfade until the next one's begins
        np.testing.assert_array_equal(wav[a + fade:b, 0], one_go(point, b - a)[fade:].astype(np.float32))
        # its continuations were cut in on every second bar line, and the next piece came in on a bar line
        cont = [f - a for f in commands if a < f < b]
        assert cont and set(cont) <= set(lines[2::2].tolist()), (clip, cont)
        assert b - a in set(lines.tolist())
    first_len = (started[1][0] - started[0][0]) / SR
    assert first_len > 12.0  # several segments: the piece went on, it did not loop a clip
    # the live view says the music is composed, and how the generator keeps up
    from rich.console import Console

    from realtime.session import Dashboard

    console = Console(record=True, width=200, file=open(tmp_path / "tty.txt", "w"))
    console.print(Dashboard(eng, console=console).render())
    p = eng.pieces.stats
    assert re.search(rf"generator +{p['segments']} segments of 2 bars, {p['pieces']} pieces begun",
                     console.export_text())


def test_a_library_that_is_not_generated_is_refused_before_the_session_starts(kit):
    with pytest.raises(AtlasError, match=r"b2m library build --generate N .*--mode retrieval"):
        SessionEngine(Decoder(kit.bundle), Library(kit.library), None, PolicyConfig(),
                      SessionOptions(mode="generation"))
    with pytest.raises(ValueError, match="mode must be one of retrieval, generation"):
        SessionOptions(mode="generate")


def test_b2m_session_mode_generation_end_to_end_and_replay(kit, atlas, b2m_proc, endpoint, tmp_path):
    import json

    out = tmp_path / "session"
    sess = b2m_proc("session", "--model", kit.bundle, "--library", atlas, "--out", out, "--bind", endpoint,
                    "--mode", "generation", "--segment-bars", "2", "--audio", f"wav:{out}/feedback.wav",
                    "--results", "none", "--no-dashboard", "--runs", "1", "--min-dwell", "5", "--margin", "0",
                    "--smooth-trs", "1", name="session")
    sess.wait_for("ready", timeout=60)
    tx = b2m_proc("scanner", "replay", kit.nifti, "--connect", endpoint, "--speed", "max", "--run-id", "run-01",
                  "--quiet", name="replay")
    assert tx.wait(120) == 0, tx.stderr()
    assert sess.wait(120) == 0, sess.stderr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "generation" and summary["counts"]["volumes"] == 40
    page = (out / "report.html").read_text()
    p = summary["pieces"]
    assert "generated live from the library" in page and f"{p['segments']} segments, {p['pieces']} pieces begun" in page
    assert summary["pieces"]["errors"] == 0 and summary["pieces"]["segments"] >= 40 * 1.35 / 6
    wav, sr = sf.read(str(out / "feedback.wav"), dtype="float32")
    assert sr == 48000 and len(wav) >= 40 * 1.35 * sr
    assert np.sqrt(np.mean(wav[sr * 5:sr * 50] ** 2)) > 0.01  # music all along, not silence
    rep = b2m_proc("session", "replay", out, name="session-replay")
    assert rep.wait() == 0, rep.stderr() + rep.stdout()
    assert json.loads(rep.stdout()[: rep.stdout().rindex("}") + 1])["n_compared"] == 40


def test_b2m_session_generation_refuses_a_library_of_recordings(kit, b2m_proc, endpoint, tmp_path):
    sess = b2m_proc("session", "--model", kit.bundle, "--library", kit.library, "--out", tmp_path / "s",
                    "--bind", endpoint, "--mode", "generation", "--audio", f"wav:{tmp_path}/x.wav",
                    "--no-dashboard", name="session")
    assert sess.wait(60) == 2
    err = sess.stderr()
    assert "b2m library build --generate N" in err and "rows are not" in err
    assert not (tmp_path / "s").exists()  # refused before the session folder was made


def test_preflight_in_generation_mode_times_the_generator_or_says_why_it_cannot(kit, atlas, tmp_path):
    from realtime.session.preflight import preflight

    ok = {c.name: c for c in preflight(kit.bundle, atlas, audio=f"wav:{tmp_path}/a.wav", mode="generation",
                                       segment_bars=2)}
    assert ok["generator"].ok and f"{N_POINTS} generator points (10 genres)" in ok["generator"].detail
    assert re.search(r"slowest 2-bar segment .* \(\d+x real time\)", ok["generator"].detail)
    bad = {c.name: c for c in preflight(kit.bundle, kit.library, audio=f"wav:{tmp_path}/b.wav", mode="generation")}
    assert not bad["generator"].ok and "b2m library build --generate N" in bad["generator"].detail
    assert bad["audio output"].ok  # the other checks still ran
