"""Watch a scanner's real-time export folder and send each volume as soon as it is complete.

The scanner (or its export daemon) writes files into a folder, often a
network share. :class:`FolderWatcher` scans the folder and returns each
volume once, when all its files are there and no longer growing;
:func:`watch_folder` sends them through :class:`~realtime.sender.ReliableSender`
(kept until acked, resent after a reconnect), so the receiver records the
run exactly as the scanner wrote it.

A file is taken as complete when the scanner closes it (inotify, on a local
folder) or when it has not changed between two directory scans (every
``poll_s`` seconds; this also works on SMB and NFS mounts, where inotify sees
nothing). One poller waits on the link's acks and the inotify descriptor
together, so a closed file is read at once.

Files are never moved or deleted. A file that stays unreadable is reported
once, by name, with the reason, and the run goes on without it; if it
changes later it is read again. A volume the run goes without is reported
as missing (:attr:`WatchResult.missing`), and ``b2m scanner watch`` then
exits 1.

Volume indices come from the files, never from the order they are read in
(a skipped file would shift every later volume). DICOM and PAR files carry
the index in their headers (:mod:`.vendors`). A NIfTI header does not, so
for ``nifti`` the index is the volume number in the file's name: the last
run of digits before ``.nii``/``.nii.gz`` (``vol_00007.nii``,
``001_000012_000007.nii``). Scanners number measurements from 1, as ``b2m
scanner export`` does, so number 1 is volume 0; a series whose first file
seen is numbered 0 counts from 0. The first file decides this whether or
not it can be read, so a bad first file shifts nothing. Where the names
carry no number, a file's index is its place among the run's files in the
order they are found (in name order within a scan), and a bad file keeps
its place: the volumes after it keep their index, and it is missing.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import time
from dataclasses import dataclass, field

import numpy as np

from protocols.wire import RunEnd, RunStart, VolumeMessage, valid_run_id

from ..clocks import CLOCK_WARN_S
from ..sender import ReliableSender
from ..transport import DEFAULT_ENDPOINT
from .inotify import FolderEvents
from .pacing import check_count, check_seconds
from .vendors import VENDORS, ScannerVolume, VendorFileError, read_ge_slice, read_nifti_volume, \
    philips_rec_path, read_philips_parrec, read_siemens_mosaic, stack_ge_slices

__all__ = ["FolderWatcher", "WatchResult", "watch_folder"]

log = logging.getLogger("b2m.scanner.watch")

_SUFFIXES = {"siemens": (".dcm", ".ima"), "ge": None, "nifti": (".nii", ".nii.gz"), "philips": (".par",)}
_LAST_NUMBER = re.compile(r"(\d+)\D*$")


def nifti_volume_number(name: str) -> int | None:
    """The volume number in a NIfTI file's name: its last run of digits before ``.nii``/``.nii.gz``, or None."""
    stem = os.path.basename(name)
    for ext in (".nii.gz", ".nii"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    m = _LAST_NUMBER.search(stem)
    return int(m.group(1)) if m else None


@dataclass
class _FileState:
    stamp: tuple  # (size, mtime_ns) at the last scan
    stable_since: float | None = None
    done: bool = False  # read into a volume (or ignored): never read again unless it changes
    failed_at: float | None = None  # first failed read while stable
    reported: bool = False


class FolderWatcher:
    """Scan a folder for one series' volumes and return each complete volume once.

    Parameters
    ----------
    folder : path-like
    vendor : {"siemens", "ge", "nifti", "philips"}
        See :mod:`.vendors`. Philips: a PAR file is tracked together with its
        REC (both must be complete and unchanged), and is read again when
        either changes.
    series : str, optional
        Only this series (DICOM ``SeriesNumber``). Default: the series of the
        first volume read; files of any other series are reported and skipped.
    include_existing : bool
        Also read the files already there when the watcher starts (a restarted
        watcher resends them; the receiver drops the duplicates). By default
        they are taken as earlier series and left alone.
    give_up_s : float
        A file that has not changed for this long and still cannot be read is
        reported as bad.
    clock : callable
        Monotonic time source (seconds).
    events : bool
        Use inotify where available (:attr:`events` then has a descriptor to wait on).
    slices_per_volume : int, optional
        GE: slices per volume, if not the header's ``ImagesInAcquisition``.
    image_type : int, optional
        Philips: the PAR ``image_type_mr`` to send (default: the magnitude).
    """

    def __init__(self, folder, vendor: str, *, series: str | None = None, include_existing: bool = False,
                 give_up_s: float = 2.0, clock=time.monotonic, events: bool = True,
                 slices_per_volume: int | None = None, image_type: int | None = None):
        if vendor not in VENDORS:
            raise ValueError(f"vendor must be one of {', '.join(VENDORS)}, got {vendor!r}")
        self.folder = os.fspath(folder)
        if not os.path.isdir(self.folder):
            raise ValueError(f"{self.folder}: no such folder; give the folder the scanner exports into")
        self.vendor = vendor
        self.series = None if series is None else str(series)
        self.give_up_s = float(give_up_s)
        self.slices_per_volume = slices_per_volume
        self.image_type = image_type
        self.clock = clock
        self.files: dict[str, _FileState] = {}
        self.bad: dict[str, str] = {}  # name -> reason, as reported
        self.skipped_series: dict[str, int] = {}
        self._emitted: set[int] = set()
        self._slices: dict[int, dict[str, object]] = {}  # GE: volume -> {name: SliceInfo}
        self._nifti_index: dict[str, int] = {}  # NIfTI: file name -> its volume index (see the module doc)
        self._nifti_numbered: bool | None = None  # NIfTI: the names carry the volume number (set by the first)
        self._nifti_base = 1  # NIfTI: the number of volume 0 in the names
        self._nifti_next = 0  # NIfTI without numbers: the next place
        self._closed: set[str] = set()
        # watch before listing, so no file closed in between is missed
        self.events = FolderEvents(self.folder) if events else None
        if not include_existing:
            for name, stamp in self._listing().items():
                self.files[name] = _FileState(stamp, done=True)

    # ---- scanning ----------------------------------------------------------

    def _wanted(self, name: str) -> bool:
        if name.startswith("."):
            return False
        suffixes = _SUFFIXES[self.vendor]
        return suffixes is None or name.lower().endswith(suffixes)

    def _listing(self) -> dict[str, tuple]:
        """(size, mtime) of the wanted files not yet read (and of bad ones, which are read again if
        they change); read files are not stat'ed again, so a series of tens of thousands of slice
        files costs little more than one directory listing per scan."""
        out = {}
        recs = {}  # Philips: REC stem (lower case) -> its entry, stat'ed only for a PAR listed below
        with os.scandir(self.folder) as it:
            for e in it:
                if self.vendor == "philips" and e.name.lower().endswith(".rec"):
                    recs[e.name[:-4].lower()] = e
                    continue
                if not self._wanted(e.name):
                    continue
                st = self.files.get(e.name)
                if st is not None and st.done and self._key(e.name) not in self._closed and e.name not in self.bad:
                    continue
                try:
                    st = e.stat()
                except FileNotFoundError:  # removed between listing and stat
                    continue
                if e.is_file():
                    out[e.name] = (st.st_size, st.st_mtime_ns)
        if self.vendor == "philips":  # a pair is unchanged only if both files are; a missing REC reads as (-1, 0)
            out = {name: stamp + self._rec_stamp(recs.get(name[:-4].lower())) for name, stamp in out.items()}
        return out

    def _pair_stamp(self, par_path: str) -> tuple:
        """A Philips PAR's stamp as :meth:`_listing` makes it, from the files themselves."""
        st = os.stat(par_path)
        rec = philips_rec_path(par_path)
        return (st.st_size, st.st_mtime_ns) + self._rec_stamp(pathlib.Path(rec) if rec is not None else None)

    @staticmethod
    def _rec_stamp(entry) -> tuple:
        """``(size, mtime)`` of a REC (a ``DirEntry`` or a ``Path``); ``(-1, 0)`` for none."""
        try:
            st = entry.stat()
        except (AttributeError, FileNotFoundError):  # no REC (yet), or removed since the listing
            return (-1, 0)
        return (st.st_size, st.st_mtime_ns)

    def _key(self, name: str) -> str:
        """The name a closed file counts for: itself, or for Philips its pair's PAR (lower case)."""
        if self.vendor != "philips":
            return name
        low = name.lower()
        return low[:-4] + ".par" if low.endswith(".rec") else low

    def scan(self) -> list[ScannerVolume]:
        """One pass over the folder: the volumes completed since the last pass, by index."""
        now = self.clock()
        if self.events is not None:
            self._closed.update(self._key(n) for n in self.events.read())
        ready = []
        for name, stamp in sorted(self._listing().items()):
            st = self.files.get(name)
            closed = self._key(name) in self._closed  # the writer closed it: complete now
            self._closed.discard(self._key(name))
            if st is None or st.stamp != stamp:  # new, or still being written, or rewritten
                if st is not None and st.done and name not in self.bad:
                    log.warning("%s changed after it was read; the volume already sent stays as sent", name)
                self.files[name] = st = _FileState(stamp, stable_since=None)
                if not closed:
                    continue
            if st.done or stamp[0] == 0:
                continue
            if st.stable_since is None:
                st.stable_since = now
            ready.append(name)
        out = []
        for name in ready:
            vol = self._read(name, now)
            if vol is not None:
                out.append(vol)
        out.extend(self._complete_ge())
        return sorted(out, key=lambda v: v.index)

    def _fail(self, name: str, err: Exception, now: float) -> None:
        st = self.files[name]
        if st.failed_at is None:
            st.failed_at = now
        if now - st.failed_at >= self.give_up_s and not st.reported:
            st.reported = True
            st.done = True
            self.bad[name] = str(err)
            log.error("%s; skipped, the run goes on without it (it is read again if it changes)", err)

    def _series_ok(self, series: str, name: str) -> bool:
        if self.series is None:
            self.series = series
            log.info("watching series %s", series or "(unnamed)")
        if series == self.series:
            return True
        if series not in self.skipped_series:
            log.warning("%s belongs to series %s, not the watched series %s: skipped (give --series to choose)",
                        name, series, self.series)
        self.skipped_series[series] = self.skipped_series.get(series, 0) + 1
        return False

    def _read(self, name: str, now: float) -> ScannerVolume | None:
        path = os.path.join(self.folder, name)
        st = self.files[name]
        try:
            if self.vendor == "siemens":
                vol = read_siemens_mosaic(path)
            elif self.vendor == "nifti":
                vol = read_nifti_volume(path, self._nifti_index_of(name))
            elif self.vendor == "philips":
                vol = read_philips_parrec(path, self.image_type)
            else:
                sl = read_ge_slice(path, self.slices_per_volume)
                st.done = True
                self.bad.pop(name, None)
                if self._series_ok(sl.series, name):
                    if sl.volume in self._emitted:
                        log.warning("%s: volume %d was already sent; this slice is ignored", name, sl.volume)
                    else:
                        self._slices.setdefault(sl.volume, {})[name] = sl
                return None
        except (VendorFileError, OSError) as e:
            self._fail(name, e if isinstance(e, VendorFileError) else VendorFileError(f"{path}: {e}"), now)
            return None
        st.done = True
        self.bad.pop(name, None)
        if self.vendor == "philips":  # the REC may have been listed mid-write, before the read found it whole
            st.stamp = self._pair_stamp(path)
        if not self._series_ok(vol.series, name):
            return None
        if vol.index in self._emitted:
            log.warning("%s: volume %d was already sent; this copy is ignored", name, vol.index)
            return None
        self._emitted.add(vol.index)
        return vol

    def _nifti_index_of(self, name: str) -> int:
        """The volume index of NIfTI file ``name``, from its name's number or its place (the module doc).

        Given once per name, when it is first read, whether or not the read succeeds.

        Raises
        ------
        VendorFileError
            A name without a number in a series whose names have one, or numbered below the series' first.
        """
        if name in self._nifti_index:
            return self._nifti_index[name]
        number = nifti_volume_number(name)
        if self._nifti_numbered is None:
            self._nifti_numbered = number is not None
            if number == 0:
                self._nifti_base = 0
            log.info("NIfTI volume indices: %s", f"the number in each file's name, {self._nifti_base} for volume 0"
                     if self._nifti_numbered else "the order the files are found in (their names have no number)")
        path = os.path.join(self.folder, name)
        if self._nifti_numbered:
            if number is None:
                raise VendorFileError(f"{path}: has no volume number in its name, unlike the series' other files; "
                                      "its volume index cannot be known")
            if number < self._nifti_base:
                raise VendorFileError(f"{path}: numbered {number}, but the series counts its volumes from "
                                      f"{self._nifti_base}")
            index = number - self._nifti_base
        else:
            index, self._nifti_next = self._nifti_next, self._nifti_next + 1
        self._nifti_index[name] = index
        return index

    def bad_indices(self) -> set[int]:
        """Indices of the volumes whose files are bad, where the index is known (NIfTI)."""
        return {i for name, i in self._nifti_index.items() if name in self.bad}

    def _complete_ge(self) -> list[ScannerVolume]:
        out = []
        for v in sorted(self._slices):
            got = self._slices[v]
            first = next(iter(got.values()))
            if len(got) < first.n_slices:
                continue
            del self._slices[v]
            try:
                vol = stack_ge_slices(list(got.values()))
            except VendorFileError as e:
                for name in got:
                    self.bad[name] = str(e)
                log.error("%s; volume %d skipped, the run goes on without it", e, v)
                continue
            self._emitted.add(v)
            out.append(vol)
        return out

    def close(self) -> None:
        if self.events is not None:
            self.events.close()

    def incomplete(self) -> dict[int, int]:
        """GE volumes still waiting for slices: volume -> slices present."""
        return {v: len(s) for v, s in self._slices.items()}


@dataclass
class WatchResult:
    """What a watch did.

    Attributes
    ----------
    detect_lag_s : ndarray of shape (n_sent,)
        Send time minus the newest file's modification time, per volume, in
        seconds: how long a volume waited in the folder (with folder scans
        only, this includes the scan interval and the settle scan). Stamped
        by the export folder's clock: a negative lag is that clock running
        ahead of this computer's; seconds where a TR's worth is expected can
        be that clock running behind.
    latency_s : ndarray
        Send -> ack time of each acked volume, in seconds.
    missing : list of int
        Indices of the run's volumes that were not sent (a bad file, or one never written), among
        0..n-1, n the run's length: ``n_volumes`` if given, else one past the highest index found.
    """

    run_id: str
    n_sent: int
    indices: list
    all_acked: bool
    ended: str  # "volumes", "idle", "interrupted"
    resent: int
    rejected: list
    unacked: list
    bad_files: dict
    skipped_series: dict
    incomplete: dict
    detect_lag_s: np.ndarray = field(repr=False)
    latency_s: np.ndarray = field(repr=False)
    wall_s: float = 0.0
    missing: list = field(default_factory=list)


def _same_geometry(a: ScannerVolume, b: ScannerVolume) -> bool:
    return a.data.shape == b.data.shape and a.data.dtype == b.data.dtype and np.allclose(a.affine, b.affine,
                                                                                         atol=1e-3)


def watch_folder(folder, vendor: str, endpoint: str = DEFAULT_ENDPOINT, *, run_id: str | None = None,
                 tr_s: float | None = None, n_volumes: int | None = None, idle_timeout_s: float | None = None,
                 poll_s: float = 0.05, series: str | None = None, include_existing: bool = False,
                 give_up_s: float = 2.0, events: bool = True, resend_timeout_s: float = 1.0,
                 drain_timeout_s: float = 60.0, new_subfolder: bool = False, slices_per_volume: int | None = None,
                 image_type: int | None = None, stop=None, progress=None, ready=None, curve=None) -> WatchResult:
    """Send a series from a scanner's export folder to a receiver, volume by volume, until the run ends.

    The run ends after ``n_volumes`` volumes, or once no new volume has come
    for ``idle_timeout_s`` seconds (default: the longer of 10 s and 5 TRs);
    both send a run end. ``stop()`` returning True ends it without a run end
    (an interrupted watch; restart it with ``include_existing`` to resume).

    Parameters
    ----------
    tr_s : float, optional
        TR in seconds; default: the headers' (an error if they have none).
    new_subfolder : bool
        ``folder`` is the parent the scanner makes a folder in for each
        series (GE's exam folder, a Siemens session folder): wait for the
        next subfolder to appear and watch that one, all its files included.
    progress : callable, optional
        ``progress(n_sent, n_volumes, last_index, lag_s, n_unacked, n_bad)``.
    ready : callable, optional
        Called once the folder's existing files have been noted: files
        written from then on belong to the run.

    Raises
    ------
    ValueError
        Bad folder, vendor or run id, no TR, or a duration or count that is not positive (``--tr``,
        ``--idle-timeout``, ``--poll``, ``--volumes``, ``--slices``); the message names the option and says
        what to give.
    """
    if run_id is not None and not valid_run_id(run_id):
        raise ValueError(f"--run-id {run_id!r}: use 1-128 characters of [A-Za-z0-9._-], starting with a letter or "
                         "digit (it names the run's folder in the session record)")
    tr_s = check_seconds(tr_s, "--tr")
    idle_timeout_s = check_seconds(idle_timeout_s, "--idle-timeout")
    poll_s = check_seconds(poll_s, "--poll")
    n_volumes = check_count(n_volumes, "--volumes")  # 0 would end a run of no volume before it began
    check_count(slices_per_volume, "--slices")
    if not give_up_s >= 0 or not np.isfinite(give_up_s):
        raise ValueError(f"--give-up must be 0 or more seconds, got {give_up_s!r}")
    stop = stop or (lambda: False)
    if new_subfolder:
        folder = _wait_for_subfolder(folder, poll_s, stop, ready)
        if folder is None:
            return WatchResult(run_id=run_id or "", n_sent=0, indices=[], all_acked=True, ended="interrupted",
                               resent=0, rejected=[], unacked=[], bad_files={}, skipped_series={}, incomplete={},
                               detect_lag_s=np.zeros(0), latency_s=np.zeros(0))
        include_existing, ready = True, None
    watcher = FolderWatcher(folder, vendor, series=series, include_existing=include_existing, give_up_s=give_up_s,
                            events=events, slices_per_volume=slices_per_volume, image_type=image_type)
    try:
        return _watch(watcher, vendor, endpoint, run_id, tr_s, n_volumes, idle_timeout_s, poll_s, resend_timeout_s,
                      drain_timeout_s, stop, progress, ready, curve)
    finally:
        watcher.close()


def _wait_for_subfolder(parent, poll_s: float, stop, ready) -> str | None:
    """The first folder created in ``parent`` from now on (None if ``stop()`` came first)."""
    parent = os.fspath(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{parent}: no such folder; give the folder the scanner makes its series folders in")

    def subfolders():
        with os.scandir(parent) as it:
            return {e.name for e in it if e.is_dir()}

    before = subfolders()
    if ready is not None:
        ready()
    log.info("waiting for the next series folder in %s", parent)
    while not stop():
        new = sorted(subfolders() - before)
        if new:
            path = os.path.join(parent, new[0])
            log.info("watching the new folder %s", path)
            return path
        time.sleep(poll_s)  # before the run: nothing to service yet
    return None


def _watch(watcher, vendor, endpoint, run_id, tr_s, n_volumes, idle_timeout_s, poll_s, resend_timeout_s,
           drain_timeout_s, stop, progress, ready, curve) -> WatchResult:
    t0 = time.monotonic()
    first: ScannerVolume | None = None
    sent_idx: list[int] = []
    lags: list[float] = []
    ahead = False  # a file's time was in this computer's future (warned once)
    ended = "interrupted"
    last_new = time.monotonic()
    idle = idle_timeout_s
    with ReliableSender(endpoint, resend_timeout_s=resend_timeout_s, curve=curve) as sender:
        if watcher.events is not None and watcher.events.fd is not None:
            sender.wake_on(watcher.events.fd)
        if ready is not None:
            ready()
        next_scan = time.monotonic()
        while not stop():
            if not sender.wait_until(next_scan):  # woken early by a closed file: the scan time stays
                next_scan = time.monotonic() + poll_s
            for vol in watcher.scan():
                if n_volumes is not None and vol.index >= n_volumes:  # the receiver would refuse it
                    name = os.path.basename(vol.files[0])
                    watcher.bad[name] = f"volume {vol.index} is past the run's {n_volumes} volumes (--volumes)"
                    log.error("%s: %s; skipped", vol.files[0], watcher.bad[name])
                    continue
                if first is None:
                    first = vol
                    tr = tr_s if tr_s is not None else vol.tr_s
                    if tr is None:
                        raise ValueError(f"{vol.tr_note or vol.files[0] + ': the header has no TR'}; "
                                         "give it with --tr SECONDS")
                    tr_s = float(tr)
                    if idle is None:
                        idle = max(10.0, 5 * tr_s)
                    series_name = vol.series or "1"
                    run_id = run_id or f"series-{series_name}"
                    sender.send(RunStart(run_id=run_id, tr_s=tr_s, n_volumes=n_volumes, shape=vol.data.shape,
                                         dtype=vol.data.dtype.str, affine=vol.affine,
                                         meta={"source": "watch", "vendor": vendor, "series": vol.series,
                                               "folder": os.path.abspath(watcher.folder),
                                               **({"slice_timing_s": list(vol.slice_timing_s)}
                                                  if vol.slice_timing_s is not None else {})}))
                elif not _same_geometry(vol, first):
                    name = os.path.basename(vol.files[0])
                    watcher.bad[name] = (f"shape {vol.data.shape} {vol.data.dtype} or affine differs from the "
                                         "run's first volume")
                    log.error("%s: %s; skipped", vol.files[0], watcher.bad[name])
                    continue
                now = time.time()
                mtime = max((os.stat(f).st_mtime for f in vol.files if os.path.exists(f)), default=now)
                if mtime - now >= CLOCK_WARN_S and not ahead:
                    ahead = True
                    log.warning("%s was written %.2f s in this computer's future: the export folder's clock is "
                                "ahead of this one's by at least that. Each volume's acquisition time is taken "
                                "as when it was read instead; synchronise the clocks (NTP, chrony) to be sure",
                                vol.files[0], mtime - now)
                # a stamp later than the moment the file was read is another clock's: never after that moment
                sender.send(VolumeMessage(run_id=run_id, index=vol.index, data=vol.data, affine=vol.affine,
                                          tr_s=tr_s, n_volumes=n_volumes, t_acquired=min(mtime, now)))
                lags.append(now - mtime)
                sent_idx.append(vol.index)
                last_new = time.monotonic()
                if progress is not None:
                    progress(len(sent_idx), n_volumes, vol.index, lags[-1], len(sender.pending), len(watcher.bad))
                if n_volumes is not None and len(sent_idx) >= n_volumes:
                    break  # one scan may find more (a backlog): the run has exactly n_volumes
            if n_volumes is not None and len(sent_idx) >= n_volumes:
                ended = "volumes"
                break
            if first is not None and time.monotonic() - last_new >= idle:
                ended = "idle"
                break
        # the run's length: the protocol's, else as far as its files go (a bad last file included)
        found = set(sent_idx) | watcher.bad_indices()
        length = n_volumes if n_volumes is not None else (max(found) + 1 if found else 0)
        missing = sorted(set(range(length)) - set(sent_idx))
        if missing and ended != "interrupted":
            log.error("the run goes without volume(s) %s%s: see the bad files above", missing[:20],
                      "..." if len(missing) > 20 else "")
        if ended != "interrupted":
            sender.send(RunEnd(run_id=run_id, n_volumes=length))
        ok = sender.drain(drain_timeout_s)
        if progress is not None:
            progress(len(sent_idx), n_volumes, sent_idx[-1] if sent_idx else -1, 0.0, len(sender.pending),
                     len(watcher.bad))
        st = sender.stats
        return WatchResult(run_id=run_id or "", n_sent=len(sent_idx), indices=sent_idx,
                           all_acked=ok and not st.rejected, ended=ended, resent=st.resent,
                           rejected=list(st.rejected), unacked=sorted(sender.pending), bad_files=dict(watcher.bad),
                           skipped_series=dict(watcher.skipped_series), incomplete=watcher.incomplete(),
                           detect_lag_s=np.array(lags), latency_s=st.volume_latencies_s(),
                           wall_s=time.monotonic() - t0, missing=missing)
