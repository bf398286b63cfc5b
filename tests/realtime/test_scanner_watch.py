"""The export-folder watcher: each volume once, only when complete, bad files reported by name,
and end to end through real processes (b2m receive, b2m scanner watch) over loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import nibabel as nib
import numpy as np
import pytest

from realtime.scanner.vendors import read_ge_slice, read_philips_parrec, read_siemens_mosaic, stack_ge_slices
from realtime.scanner.watch import FolderWatcher

from vendor_data import GE, PHILIPS, SIEMENS


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _touch(path, ns):
    os.utime(path, ns=(ns, ns))


def _finish_and_settle(w, clock, path, rest: bytes):
    """The scanner writes the rest of ``path``: the watcher waits for it to settle, then reads one volume."""
    with open(path, "ab") as f:
        f.write(rest)
    clock.t += 0.05
    assert w.scan() == []  # it grew: wait for it to settle
    clock.t += 0.05
    (vol,) = w.scan()
    return vol


def test_partial_file_waits_until_complete_and_stable(tmp_path):
    """Folder scans only (as on a network share): a file is read once unchanged between two scans."""
    clock = Clock()
    w = FolderWatcher(tmp_path, "siemens", clock=clock, events=False)
    blob = open(SIEMENS[0], "rb").read()
    target = tmp_path / os.path.basename(SIEMENS[0])
    target.write_bytes(blob[:1000])  # the scanner is still writing
    assert w.scan() == []
    clock.t += 0.05
    assert w.scan() == []  # unchanged once: read, fails, not yet given up
    vol = _finish_and_settle(w, clock, target, blob[1000:])
    assert vol.index == 0 and np.array_equal(vol.data, read_siemens_mosaic(SIEMENS[0]).data)
    assert w.bad == {}
    clock.t += 0.05
    assert w.scan() == []  # never twice


def test_closed_file_is_read_at_once_and_an_open_one_waits(tmp_path):
    """With inotify, closing the file is what completes it: no settle scan. A file still open for writing
    is not read until it has been unchanged between two scans."""
    w = FolderWatcher(tmp_path, "siemens")
    assert w.events.fd is not None  # Linux: inotify is there
    shutil.copy(SIEMENS[0], tmp_path)
    assert [v.index for v in w.scan()] == [0]  # the first scan after the close
    blob = open(SIEMENS[1], "rb").read()
    with open(tmp_path / os.path.basename(SIEMENS[1]), "wb") as f:
        f.write(blob[:5000])
        f.flush()
        assert w.scan() == []  # open, growing
        f.write(blob[5000:])
        f.flush()
        assert w.scan() == []  # open, changed since the last scan
    (vol,) = w.scan()  # closed now
    assert vol.index == 1 and np.array_equal(vol.data, read_siemens_mosaic(SIEMENS[1]).data)
    w.close()


def test_existing_files_are_left_alone_unless_asked(tmp_path):
    shutil.copy(SIEMENS[0], tmp_path)
    w = FolderWatcher(tmp_path, "siemens")
    assert w.scan() == [] and w.scan() == []
    w2 = FolderWatcher(tmp_path, "siemens", include_existing=True)
    w2.scan()
    assert [v.index for v in w2.scan()] == [0]


def test_bad_file_is_reported_once_by_name_and_the_run_goes_on(tmp_path, caplog):
    clock = Clock()
    w = FolderWatcher(tmp_path, "siemens", give_up_s=1.0, clock=clock)
    (tmp_path / "zz_broken.dcm").write_bytes(b"\x00" * 5000)
    shutil.copy(SIEMENS[1], tmp_path)
    got = []
    for _ in range(30):
        got += w.scan()
        clock.t += 0.1
    assert [v.index for v in got] == [1]
    assert list(w.bad) == ["zz_broken.dcm"] and "not a readable DICOM" in w.bad["zz_broken.dcm"]
    assert sum("zz_broken.dcm" in r.getMessage() for r in caplog.records if r.levelname == "ERROR") == 1
    # the scanner writes it again, whole this time: it is read
    (tmp_path / "zz_broken.dcm").write_bytes(open(SIEMENS[2], "rb").read())
    got = []
    for _ in range(3):
        got += w.scan()
        clock.t += 0.1
    assert [v.index for v in got] == [2] and w.bad == {}


def test_ge_volume_is_sent_only_when_all_its_slices_are_there(tmp_path, rng):
    w = FolderWatcher(tmp_path, "ge")
    order = rng.permutation(18)  # slices of volume 0, in a scrambled order
    for j in order[:17]:
        shutil.copy(GE[j], tmp_path)
    w.scan()
    assert w.scan() == [] and w.incomplete() == {0: 17}
    shutil.copy(GE[order[17]], tmp_path)
    (vol,) = w.scan() + w.scan()  # at once (inotify) or once stable (folder scans)
    ref = stack_ge_slices([read_ge_slice(p) for p in GE[:18]])
    assert vol.index == 0 and np.array_equal(vol.data, ref.data) and np.array_equal(vol.affine, ref.affine)
    assert w.incomplete() == {} and w.scan() == []


def test_other_series_are_skipped(tmp_path):
    w = FolderWatcher(tmp_path, "siemens", series="7")
    shutil.copy(SIEMENS[0], tmp_path)
    w.scan()
    assert w.scan() == [] and w.skipped_series == {"13": 1}


def test_philips_pair_is_read_once_both_files_are_complete_and_unchanged(tmp_path):
    """Folder scans only: a PAR without its REC, or with a REC still growing, is not a volume; the pair is
    read once both have been unchanged between two scans, and never again."""
    clock = Clock()
    w = FolderWatcher(tmp_path, "philips", clock=clock, events=False, give_up_s=10.0)
    rec_blob = open(PHILIPS[0][:-4] + ".rec", "rb").read()
    shutil.copy(PHILIPS[0], tmp_path)  # the header first
    assert w.scan() == []
    clock.t += 0.05
    assert w.scan() == [] and w.bad == {}  # no REC yet: waiting, not bad
    rec = tmp_path / "Dump-0000.rec"
    rec.write_bytes(rec_blob[:200_000])
    for _ in range(2):
        clock.t += 0.05
        assert w.scan() == [] and w.bad == {}  # a short REC: still being written
    vol = _finish_and_settle(w, clock, rec, rec_blob[200_000:])
    assert vol.index == 0 and np.array_equal(vol.data, read_philips_parrec(PHILIPS[0]).data)
    clock.t += 0.05
    assert w.scan() == [] and w.bad == {}


def test_philips_rec_closed_last_completes_the_pair_at_once(tmp_path):
    """With inotify, closing the REC after its PAR is what completes the volume: no settle scan. Upper-case
    names (DUMP-0002.PAR, .REC) pair up the same way."""
    w = FolderWatcher(tmp_path, "philips")
    shutil.copy(PHILIPS[1], tmp_path)
    assert w.scan() == []
    shutil.copy(PHILIPS[1][:-4] + ".rec", tmp_path)  # written and closed
    (vol,) = w.scan()
    assert vol.index == 1 and vol.files[1].endswith("Dump-0001.rec")
    shutil.copy(PHILIPS[2], tmp_path / "DUMP-0002.PAR")
    assert w.scan() == []
    shutil.copy(PHILIPS[2][:-4] + ".rec", tmp_path / "DUMP-0002.REC")
    (vol,) = w.scan()
    assert vol.index == 2 and vol.files[1].endswith("DUMP-0002.REC")
    assert np.array_equal(vol.data, read_philips_parrec(PHILIPS[2]).data)


def test_philips_rec_finished_during_the_read_is_not_taken_for_a_rewrite(tmp_path, caplog):
    """The PAR's close wakes the watcher while the REC is still being written; the REC is whole by the
    time the pair is read. Its own close, a moment later, must not count as a rewrite of a volume already
    sent (a warning, and a second read)."""
    rec_blob = open(PHILIPS[0][:-4] + ".rec", "rb").read()
    rec = tmp_path / "Dump-0000.rec"

    class ScannerFinishesTheRec(FolderWatcher):
        def _read(self, name, now):
            with open(rec, "ab") as f:  # the rest of the REC lands between the listing and the read
                f.write(rec_blob[200_000:])
            return super()._read(name, now)

    w = ScannerFinishesTheRec(tmp_path, "philips")
    writer = open(rec, "wb")  # the scanner has the REC open
    writer.write(rec_blob[:200_000])
    writer.flush()
    shutil.copy(PHILIPS[0], tmp_path)  # the PAR, closed
    (vol,) = w.scan()
    assert np.array_equal(vol.data, read_philips_parrec(PHILIPS[0]).data)
    writer.close()
    with caplog.at_level("WARNING", logger="b2m.scanner.watch"):
        assert w.scan() == []
    assert caplog.records == [] and w.bad == {}


def _reference_run(paths_by_volume, reader):
    vols = [reader(p) for p in paths_by_volume]
    return np.stack([v.data for v in vols], -1), vols[0].affine


def _assert_export(nifti, data, affine):
    img = nib.load(nifti)
    got = np.asanyarray(img.dataobj.get_unscaled())
    assert got.dtype == data.dtype and got.shape == data.shape
    assert np.array_equal(got, data)
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)  # float32 in the NIfTI header


@pytest.mark.timeout(120)
def test_ge_export_folder_to_receiver_bit_exact(b2m_proc, endpoint, tmp_path, rng):
    """The watcher follows the series folder GE creates; slices arrive scrambled, with a junk file among
    them; the recorded run equals the slices stacked."""
    exam, out = tmp_path / "e123", tmp_path / "session"
    (exam / "s1924").mkdir(parents=True)  # an earlier series: not watched
    shutil.copy(GE[0], exam / "s1924")
    rx = b2m_proc("receive", "--bind", endpoint, "--out", out, name="receive")
    rx.wait_for("ready")
    tx = b2m_proc("scanner", "watch", exam, "--new-subfolder", "--vendor", "ge", "--connect", endpoint,
                  "--volumes", 3, "--give-up", 0.5, "--quiet", name="watch")
    tx.wait_for("watching")
    folder = exam / "s1925"  # GE makes the series folder when the series starts
    folder.mkdir()
    shutil.copy(GE[1], folder)  # written before the watcher saw the folder: still part of the series
    for v in range(3):
        for j in rng.permutation(18):
            shutil.copy(GE[18 * v + j], folder)
        if v == 0:
            (folder / "i9999999.MRDC.999").write_bytes(b"junk" * 100)
        time.sleep(0.3)
    assert tx.wait(timeout=60) == 0, tx.stderr()
    summary = json.loads(tx.stdout().strip().splitlines()[-1])
    assert summary["sent"] == 3 and summary["ended"] == "volumes" and summary["all_acked"]
    assert 0 <= summary["folder_lag_ms_min"] <= summary["folder_lag_ms_p50"]  # one clock: never negative
    assert list(summary["bad_files"]) == ["i9999999.MRDC.999"]
    assert "i9999999.MRDC.999" in tx.stderr()
    rx.wait_for("series-6\t", stream="stdout")
    ref = [stack_ge_slices([read_ge_slice(p) for p in GE[18 * v:18 * (v + 1)]]) for v in range(3)]
    _assert_export(out / "nifti" / "series-6.nii", np.stack([r.data for r in ref], -1), ref[0].affine)
    rx.kill(signal.SIGTERM)


@pytest.mark.timeout(120)
def test_watcher_stopped_midrun_resumes_without_loss(b2m_proc, endpoint, tmp_path):
    """SIGTERM after two volumes (no run end), a new watcher with --include-existing resends them, the
    receiver keeps one copy of each, and the third volume completes the run."""
    folder, out = tmp_path / "export", tmp_path / "session"
    folder.mkdir()
    rx = b2m_proc("receive", "--bind", endpoint, "--out", out, name="receive")
    rx.wait_for("ready")
    args = ("scanner", "watch", folder, "--vendor", "siemens", "--connect", endpoint, "--run-id", "epi1",
            "--volumes", 3, "--quiet")
    tx = b2m_proc(*args, name="watch1")
    tx.wait_for("watching")
    for p in SIEMENS[:2]:
        shutil.copy(p, folder)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list((out / "runs" / "epi1").glob("*"))) == 0:
        time.sleep(0.05)
    time.sleep(1.0)
    tx.kill(signal.SIGTERM)
    assert tx.p.returncode == 130, tx.stderr()
    assert "without a run end" in tx.stderr()
    tx2 = b2m_proc(*args, "--include-existing", name="watch2")
    tx2.wait_for("watching")
    shutil.copy(SIEMENS[2], folder)
    assert tx2.wait(timeout=60) == 0, tx2.stderr()
    summary = json.loads(tx2.stdout().strip().splitlines()[-1])
    assert summary["sent"] == 3 and summary["all_acked"]
    rx.wait_for("epi1\t", stream="stdout")
    data, affine = _reference_run(SIEMENS, read_siemens_mosaic)
    _assert_export(out / "nifti" / "epi1.nii", data, affine)
    rx.kill(signal.SIGTERM)


@pytest.mark.timeout(120)
def test_philips_export_folder_to_receiver_bit_exact(b2m_proc, endpoint, tmp_path):
    """XTC makes a folder per series and writes a PAR/REC pair per volume (here the REC sometimes first,
    sometimes last); the recorded run is the magnitude's floating-point values, volume by volume. Without
    --tr the PAR's TR of 1 ms is refused by name."""
    xtc, out = tmp_path / "xtc", tmp_path / "session"
    xtc.mkdir()
    tx = b2m_proc("scanner", "watch", xtc, "--new-subfolder", "--vendor", "philips", "--connect", endpoint,
                  "--quiet", name="watch-no-tr")
    tx.wait_for("watching")
    (xtc / "0000").mkdir()
    for suffix in (".par", ".rec"):
        shutil.copy(PHILIPS[0][:-4] + suffix, xtc / "0000")
    assert tx.wait(timeout=30) == 2
    assert "Repetition time [ms] is 1 in the PAR header, not a volume's TR; give it with --tr SECONDS" in tx.stderr()

    rx = b2m_proc("receive", "--bind", endpoint, "--out", out, name="receive")
    rx.wait_for("ready")
    tx = b2m_proc("scanner", "watch", xtc, "--new-subfolder", "--vendor", "philips", "--tr", 1, "--connect",
                  endpoint, "--volumes", 4, "--quiet", name="watch")
    tx.wait_for("watching")
    folder = xtc / "0001"
    folder.mkdir()
    for k, par in enumerate(PHILIPS):
        first, last = (".rec", ".par") if k % 2 else (".par", ".rec")
        for suffix in (first, last):
            shutil.copy(par[:-4] + suffix, folder)
            time.sleep(0.1)
    assert tx.wait(timeout=60) == 0, tx.stderr()
    summary = json.loads(tx.stdout().strip().splitlines()[-1])
    assert summary["sent"] == 4 and summary["ended"] == "volumes" and summary["all_acked"]
    assert summary["bad_files"] == {}
    rx.wait_for("series-0001\t", stream="stdout")
    data, affine = _reference_run(PHILIPS, read_philips_parrec)
    _assert_export(out / "nifti" / "series-0001.nii", data, affine)
    assert nib.load(out / "nifti" / "series-0001.nii").header.get_zooms()[3] == pytest.approx(1.0)
    rx.kill(signal.SIGTERM)


@pytest.mark.timeout(60)
def test_nifti_without_tr_is_a_clear_error(b2m_proc, endpoint, tmp_path, rng):
    folder = tmp_path / "export"
    folder.mkdir()
    tx = b2m_proc("scanner", "watch", folder, "--vendor", "nifti", "--connect", endpoint, "--quiet", name="watch")
    tx.wait_for("watching")
    nib.save(nib.Nifti1Image(rng.integers(0, 100, (4, 4, 3)).astype(np.int16), np.eye(4)), folder / "v1.nii")
    assert tx.wait(timeout=30) == 2
    assert "v1.nii: the header has no TR; give it with --tr SECONDS" in tx.stderr()


@pytest.mark.timeout(120)
def test_dry_run_export_to_watch_to_receiver_bit_exact(b2m_proc, endpoint, fmri1_nii, tmp_path):
    """A site's dry run: b2m scanner export plays the scanner's NIfTI export of nitime's real run (40 volumes)
    at 20x TR pace, the watcher sends it, and the receiver's NIfTI equals the original run."""
    folder, out = tmp_path / "export", tmp_path / "session"
    folder.mkdir()
    rx = b2m_proc("receive", "--bind", endpoint, "--out", out, name="receive")
    rx.wait_for("ready")
    tx = b2m_proc("scanner", "watch", folder, "--vendor", "nifti", "--connect", endpoint, "--volumes", 40,
                  "--run-id", "dry", "--quiet", name="watch")
    tx.wait_for("watching")
    ex = b2m_proc("scanner", "export", fmri1_nii, folder, "--speed", "20", "--quiet", name="export")
    assert ex.wait(timeout=60) == 0, ex.stderr()
    assert ex.stdout().startswith("40\t")
    assert tx.wait(timeout=60) == 0, tx.stderr()
    summary = json.loads(tx.stdout().strip().splitlines()[-1])
    assert summary["sent"] == 40 and summary["all_acked"] and summary["bad_files"] == {}
    rx.wait_for("dry\t", stream="stdout")
    src = nib.load(fmri1_nii)
    _assert_export(out / "nifti" / "dry.nii", np.asanyarray(src.dataobj.get_unscaled()), src.affine)
    assert nib.load(out / "nifti" / "dry.nii").header.get_zooms()[3] == pytest.approx(1.35, abs=1e-6)
    rx.kill(signal.SIGTERM)


def test_run_id_the_protocol_would_refuse_is_refused_before_watching(tmp_path):
    from realtime.scanner.watch import watch_folder

    for bad in ("_leading-underscore", "x" * 129, "has space"):
        with pytest.raises(ValueError, match="starting with a letter or digit"):
            watch_folder(tmp_path, "siemens", run_id=bad)


def test_a_run_of_n_volumes_ends_at_n_even_when_more_are_found_at_once(endpoint, fmri1_nii, tmp_path):
    """40 volumes already in the folder come back from one scan: with n_volumes=3 exactly the first
    three are sent (a fourth would be past the run's own length, and the receiver would reject it)."""
    from conftest import ReceiverThread

    from realtime.scanner.export import export_run
    from realtime.scanner.watch import watch_folder

    folder = tmp_path / "export"
    export_run(fmri1_nii, folder, speed=float("inf"))
    with ReceiverThread(tmp_path / "session", endpoint):
        res = watch_folder(folder, "nifti", endpoint, run_id="cut", n_volumes=3, include_existing=True)
    assert res.ended == "volumes" and res.indices == [0, 1, 2]
    assert res.all_acked and res.rejected == [] and res.unacked == []


def test_files_from_a_clock_ahead_are_stamped_when_read_and_named(endpoint, fmri1_nii, tmp_path, caplog):
    """The export folder's clock runs 30 s ahead (its files' modification times are in this computer's
    future): each volume's acquisition time is the moment it was read, never later, the file is named
    in one warning, and the folder lag comes out negative, which shows the clock in the summary."""
    from conftest import ReceiverThread

    from protocols.session import SessionRecord
    from realtime.scanner.export import export_run
    from realtime.scanner.watch import watch_folder

    folder = tmp_path / "export"
    export_run(fmri1_nii, folder, speed=float("inf"))
    ahead = time.time() + 30.0
    for p in sorted(folder.iterdir()):
        os.utime(p, (ahead, ahead))
    t0 = time.time()
    with caplog.at_level("WARNING", logger="b2m"), ReceiverThread(tmp_path / "session", endpoint):
        res = watch_folder(folder, "nifti", endpoint, run_id="ahead", n_volumes=3, include_existing=True)
    t1 = time.time()
    assert res.all_acked and res.indices == [0, 1, 2]
    heads = [h for h in SessionRecord(str(tmp_path / "session"), sync=False).runs["ahead"].received.values()]
    acq = np.array([h.header["t_acq"] for h in heads])
    assert np.all((acq >= t0) & (acq <= t1)), (acq - t0, t1 - t0)  # when read, not 30 s on
    assert np.all(acq <= np.array([h.header["t_send"] for h in heads]))
    warned = [r.getMessage() for r in caplog.records if "future" in r.getMessage()]
    assert len(warned) == 1 and "ahead" in warned[0] and str(folder) in warned[0], warned
    assert np.all(res.detect_lag_s < -29.0), res.detect_lag_s


def test_an_export_with_a_trigger_pulses_as_each_acquisition_begins(fmri1_nii, tmp_path):
    """``export_run(trigger_out=...)`` on a real pty: a '5' as each volume's acquisition begins, read on the
    other side within milliseconds, and each file written a TR plus the reconstruction delay after its pulse
    (its modification time on the same clock)."""
    import select

    from realtime.scanner.export import export_run

    tr, recon, n = 0.2, 0.15, 6
    short = tmp_path / "short.nii"
    img = nib.load(fmri1_nii)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj.get_unscaled())[..., :n], img.affine, img.header), short)
    master, slave = os.openpty()
    import tty

    tty.setraw(slave)
    try:
        res = export_run(short, tmp_path / "export", tr_s=tr, trigger_out=os.ttyname(slave), recon_delay_s=recon)
        assert select.select([master], [], [], 1.0)[0] and os.read(master, 100) == b"5" * n
    finally:
        os.close(master)
        os.close(slave)
    pulses = np.array(res.pulses_unix)
    np.testing.assert_allclose(np.diff(pulses), tr, atol=0.02)  # absolute deadlines: no error adds up
    mtimes = np.array([os.stat(f).st_mtime for f in res.files])
    np.testing.assert_allclose(mtimes - pulses, tr + recon, atol=0.03)
    with pytest.raises(ValueError, match="--speed 1"):
        export_run(short, tmp_path / "x", tr_s=tr, speed=2.0, trigger_out=os.devnull)
    with pytest.raises(ValueError, match="--trigger-out /nonexistent/box: cannot open it"):
        export_run(short, tmp_path / "x", tr_s=tr, trigger_out="/nonexistent/box")
