"""The scanner's trigger: one pulse per volume, read on this computer's clock.

A trigger box (a USB-serial converter on the scanner's optical pulse, or a
box that types a key) sends one character, ``5`` by convention, as each
volume's acquisition begins. Read on the session computer, the pulses say
when each volume began on this computer's own clock, to about a
millisecond: no clock offset between two computers to estimate
(:mod:`realtime.clocks`), and no reconstruction or export delay in them, as
there is in the scanner side's stamps.

- :class:`TriggerInput` reads the pulses from a serial port, a terminal
  (stdin) or a FIFO, each stamped with ``time.time()`` when it was read.
- :class:`TriggerLog` (``b2m session --trigger``) keeps every pulse of a
  session in ``SESSION/triggers.tsv``, one Unix time a line, written as
  it comes; and, with ``--response-keys``, every press of the participant's
  buttons on the same input (a trigger box with a button box) in
  ``SESSION/responses.tsv``, exported as ``response`` events.
- :func:`match_run` finds a run's pulses among them from the times its
  volumes were received. ``b2m session export`` places the music's onsets
  from the pulse of the run's first volume, and the session's summary gives
  each run's pulses, missing pulses, measured TR and image delay.

Only the bytes equal to the trigger key are pulses, and the response keys
presses; any other byte is counted, and the first is named in a warning (a box in another mode, or the
wrong key). Pulses read in one ``read`` share its stamp: they were waiting,
so the reading was late for all but the last.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("b2m.triggers")

__all__ = ["DEFAULT_KEY", "DEFAULT_BAUD", "TRIGGERS_FILE", "RESPONSES_FILE", "TriggerInput", "TriggerLog", "open_trigger_out",
           "RunTriggers", "read_triggers", "read_responses", "match_run", "overdue", "describe_triggers"]

#: The character most trigger boxes send (or type) per volume.
DEFAULT_KEY = "5"
#: Serial speed set on a serial port, unless the box's manual says another.
DEFAULT_BAUD = 57600
#: A session's pulses, one Unix time (s) a line.
TRIGGERS_FILE = "triggers.tsv"
#: The participant's button presses read on the trigger input: Unix time (s) and the button, tab-separated.
RESPONSES_FILE = "responses.tsv"

# a gap of more than this many TRs between pulses ends a train (a run's pulses)
_TRAIN_GAP_TR = 2.5
# a pulse within this share of a TR of where the volume's is expected (one TR after the last matched pulse per
# volume) is that volume's: the scanner's pulses may be up to 10 % off the header's TR and still match
_MATCH_TOL_TR = 0.1
# the header's TR and the pulses' spacing may differ by this share before a warning
_TR_TOL = 0.01


def _baud_constant(baud: int):
    import termios

    const = getattr(termios, f"B{int(baud)}", None)
    if const is None:
        raise ValueError(f"--trigger-baud {baud}: not a serial speed this system knows (e.g. 9600, 19200, 57600, "
                         "115200); use the one the trigger box's manual gives")
    return const


def open_trigger_out(path: str) -> int:
    """The box's end of a serial line, for a stand-in scanner to write its pulses to (``--trigger-out``).

    Raises
    ------
    ValueError
        If it cannot be opened; the message says what to give.
    """
    try:
        return os.open(path, os.O_WRONLY | os.O_NOCTTY)
    except OSError as e:
        raise ValueError(f"--trigger-out {path}: cannot open it for writing ({e.strerror}); give one end of a "
                         "serial line (e.g. a pty pair: socat pty,raw,echo=0,link=/tmp/box "
                         "pty,raw,echo=0,link=/tmp/port)") from None


class TriggerInput:
    """Pulses from a serial port, a terminal or a FIFO, stamped on this computer's clock when read.

    Parameters
    ----------
    source : str or int
        ``"stdin"`` (a terminal is read without waiting for Enter), a path (a
        serial port such as ``/dev/ttyUSB0`` or ``/dev/ttyACM0``, a
        pseudo-terminal, or a FIFO), or an open file descriptor.
    key : str
        The one character that is a pulse.
    baud : int, optional
        Serial speed, set on a serial port (a tty that is not a terminal
        session); default :data:`DEFAULT_BAUD`.
    responses : str
        Characters that are the participant's buttons on the same input (a
        trigger box with a button box, such as ``1234``). Each press is put
        in :attr:`presses` as ``(Unix s, character)``; the reader takes them
        from there.

    Raises
    ------
    ValueError
        If the source cannot be opened or set up; the message names it and says what to do.
    """

    def __init__(self, source, key: str = DEFAULT_KEY, baud: int | None = None, responses: str = ""):
        if len(key) != 1:
            raise ValueError(f"the trigger key must be one character, got {key!r}")
        if key in responses or len(set(responses)) != len(responses) or any(ord(c) > 127 for c in responses):
            raise ValueError(f"--response-keys {responses!r}: give each button's character once (ASCII), none of "
                             f"them the trigger key {key!r}")
        self.key = key.encode()
        self.buttons = responses.encode()
        self.presses: list[tuple[float, str]] = []
        self.source = source
        self.closed = False
        self.other = 0            # bytes read that were not the key
        self.first_other: bytes | None = None
        self._own = False
        self._saved = None
        self._baud = baud
        if source == "stdin":
            import sys

            self.fd = sys.stdin.fileno()
        elif isinstance(source, int):
            self.fd = source
        else:
            self.fd = self._open(os.fspath(source))
            self._own = True
        try:
            self._setup(baud)
        except Exception:
            self.close()
            raise

    @staticmethod
    def _open(path: str) -> int:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise ValueError(f"--trigger {path}: no such device or file; is the trigger box plugged in? "
                             "(ls /dev/ttyUSB* /dev/ttyACM* lists serial ports)") from None
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            raise ValueError(f"--trigger {path}: not a serial port, terminal or FIFO; give the trigger box's "
                             "device (e.g. /dev/ttyUSB0) or stdin")
        try:  # non-blocking: a FIFO with no writer yet must not hold the session up
            return os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except PermissionError:
            raise ValueError(f"--trigger {path}: permission denied; add this user to the device's group "
                             "(usually dialout: sudo usermod -aG dialout $USER, then log in again)") from None
        except OSError as e:
            raise ValueError(f"--trigger {path}: cannot open it ({e.strerror})") from None

    def _setup(self, baud: int | None) -> None:
        if not os.isatty(self.fd):
            return
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        termios.tcflush(self.fd, termios.TCIFLUSH)  # bytes from before it was opened are no pulse of now
        if self.source == "stdin" or self.fd == 0:
            tty.setcbreak(self.fd)  # a person's terminal: keys as typed, Ctrl-C still stops the session
            return
        attrs = termios.tcgetattr(self.fd)
        # raw 8N1, no echo, no line editing, no flow control: every byte as it comes
        attrs[0] = 0                                                        # iflag
        attrs[1] = 0                                                        # oflag
        attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL             # cflag
        attrs[3] = 0                                                        # lflag
        speed = _baud_constant(DEFAULT_BAUD if baud is None else baud)
        attrs[4] = attrs[5] = speed
        attrs[6][termios.VMIN] = 0
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)

    def fileno(self) -> int:
        return self.fd

    def reopen(self) -> bool:
        """Open a closed device path again (a USB adapter plugged back in); True if it is open now."""
        if not self.closed or not self._own:
            return not self.closed
        try:
            fd = self._open(self.source)
        except ValueError:
            return False
        self._release()
        self.fd, self._own = fd, True
        try:
            self._setup(self._baud)
        except Exception:
            self._release()
            return False
        self.closed = False
        return True

    def read(self, timeout_s: float) -> list[float]:
        """Wait up to ``timeout_s`` for input; return the times (Unix s) of the pulses read.

        An input that has closed (the box unplugged, stdin at its end) sets
        :attr:`closed`. A FIFO whose writer went is opened again, for the next.
        """
        if self.closed:
            time.sleep(timeout_s)
            return []
        try:
            ready, _, _ = select.select([self.fd], [], [], timeout_s)
        except (OSError, ValueError):
            self.closed = True
            return []
        if not ready:
            return []
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return []
        except OSError:  # EIO: a pseudo-terminal whose other side closed, a USB adapter pulled
            data = b""
        now = time.time()
        if not data:
            if self._own and stat.S_ISFIFO(os.fstat(self.fd).st_mode):
                # its writer went: open it again for the next one (a FIFO at its end would read empty at once)
                os.close(self.fd)
                self.fd = self._open(self.source)
                time.sleep(timeout_s)
                return []
            self.closed = True
            return []
        n = data.count(self.key)
        if n != len(data):
            pressed = [chr(b) for b in data if b in self.buttons]
            self.presses += [(now, c) for c in pressed]
            strays = [bytes([b]) for b in data if b != self.key[0] and b not in self.buttons]
            if strays and self.first_other is None:
                self.first_other = strays[0]
            self.other += len(strays)
        return [now] * n

    def close(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._saved is not None:
            import termios

            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except (OSError, termios.error):  # the device is gone
                pass
            self._saved = None
        if self._own:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self._own = False

    def __enter__(self) -> "TriggerInput":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TriggerLog:
    """Read pulses in a thread and keep every one in ``DIR/triggers.tsv`` as it comes.

    The file is appended to, so a session continued in the same folder keeps
    the pulses of before. :attr:`times` holds this session's pulses (Unix s).
    :attr:`on_pulses`, if set, is called on this thread with each batch of
    new pulses (the session ends an operator's sound check at the first
    one: the scanner has started); its failure is logged, never fatal.
    """

    def __init__(self, trigger: TriggerInput, out_dir: str):
        self.on_pulses = None
        self.trigger = trigger
        self.path = os.path.join(os.fspath(out_dir), TRIGGERS_FILE)
        self.responses_path = os.path.join(os.fspath(out_dir), RESPONSES_FILE)
        self.times: list[float] = []
        self.presses: list[tuple[float, str]] = []  # this sitting's button presses (Unix s, button)
        self._stop = threading.Event()
        self._warned_other = False
        self._warned_write = False
        self._unwritten: list[float] = []  # pulses the disk refused
        self._lost_at = 0.0  # time.monotonic() when the input closed (0: it is open)
        self._thread = threading.Thread(target=self._loop, name="b2m-trigger", daemon=True)

    def start(self) -> "TriggerLog":
        self._thread.start()
        return self

    def _loop(self) -> None:
        buttons = open(self.responses_path, "a", buffering=1) if self.trigger.buttons else nullcontext()
        with open(self.path, "a", buffering=1) as f, buttons as g:
            while not self._stop.is_set():
                pulses = self.trigger.read(0.05)
                self.times.extend(pulses)
                if pulses and self.on_pulses is not None:
                    try:
                        self.on_pulses(pulses)
                    except Exception:
                        log.exception("the trigger's pulse hook failed; reading goes on")
                while self.trigger.presses:  # the participant's buttons, if the input carries them
                    t, button = self.trigger.presses.pop(0)
                    self.presses.append((t, button))
                    try:
                        g.write(f"{t:.6f}\t{button}\n")
                    except OSError:
                        log.error("could not write a button press to %s", self.responses_path)
                for t in pulses:
                    try:
                        f.write(_line(t))  # line-buffered: on disk as it comes
                    except OSError as e:  # a full disk: kept in memory, for this session's summary
                        self._unwritten.append(t)
                        if not self._warned_write:
                            self._warned_write = True
                            log.error("could not write a trigger pulse to %s (%s); the pulses are kept in "
                                      "memory only", self.path, e)
                if self.trigger.first_other is not None and not self._warned_other:
                    self._warned_other = True
                    log.warning("the trigger input sent %r, not the trigger key %r; only %r counts as a pulse "
                                "(check the box's mode, or give --trigger-key)", self.trigger.first_other,
                                self.trigger.key.decode(), self.trigger.key.decode())
                if self.trigger.closed:
                    if not self._lost_at:
                        log.warning("the trigger input %s closed after %d pulses: until it is back, runs are "
                                    "placed from the scanner side's stamps; check the trigger box's cable",
                                    self.trigger.source, len(self.times))
                        self._lost_at = time.monotonic()
                    if not isinstance(self.trigger.source, str) or self.trigger.source == "stdin":
                        return  # stdin at its end, or a descriptor given: nothing to open again
                    if self._stop.wait(1.0):
                        return
                    if self.trigger.reopen():  # plugged back in
                        log.warning("the trigger input %s is back after %.0f s", self.trigger.source,
                                    time.monotonic() - self._lost_at)
                        self._lost_at = 0.0

    def pulses(self) -> np.ndarray:
        """Every pulse of the session folder (Unix s, sorted): those on disk, a continued session's earlier
        ones too, and this one's, whether or not they reached the disk."""
        on_disk = read_triggers(os.path.dirname(self.path))
        return np.sort(np.r_[on_disk if on_disk is not None else [], self._unwritten])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.trigger.close()

    def summary(self) -> dict:
        return {"source": str(self.trigger.source), "pulses": len(self.times), "other_bytes": self.trigger.other,
                "closed": self.trigger.closed, "presses": len(self.presses)}


def _line(t: float) -> str:
    """A pulse's line in ``triggers.tsv``."""
    return f"{t:.6f}\n"


def read_triggers(session_dir) -> np.ndarray | None:
    """A session's pulses (Unix s, sorted), or None if it read none (no ``triggers.tsv``).

    A line that is not a number (a write cut short by a crash) is skipped.
    """
    path = os.path.join(os.fspath(session_dir), TRIGGERS_FILE)
    if not os.path.exists(path):
        return None
    times = []
    with open(path) as f:
        for line in f:
            try:
                times.append(float(line))
            except ValueError:
                continue
    return np.sort(np.asarray(times, float))


def read_responses(session_dir) -> list[tuple[float, str]]:
    """A session's button presses read on the trigger input, ``(Unix s, button)`` in time order ([] for none).

    A line that is not a time and one character is skipped.
    """
    path = os.path.join(os.fspath(session_dir), RESPONSES_FILE)
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            t, _, button = line.rstrip("\n").partition("\t")
            try:
                if len(button) == 1:
                    out.append((float(t), button))
            except ValueError:
                continue
    return sorted(out)


@dataclass
class RunTriggers:
    """A run's pulses, matched to its volumes.

    Attributes
    ----------
    start : float or None
        When the run's first volume (index 0) began, on this computer's
        clock (Unix s): its pulse, or where it falls from the next matched
        pulse if it was missed. None if the run's pulses were not found
        (:attr:`note` says why).
    matched : int
        Volumes with a pulse.
    missing : list of int
        Volume indices received with no pulse where one was due.
    tr_s : float or None
        The pulses' spacing (s), from the run's first and last matched pulses.
    delay_s : ndarray of shape (matched,)
        Per matched volume, received minus the end of its acquisition
        (pulse + TR), in seconds: the reconstruction, export and transfer.
    note : str or None
        Why there is no start, or a warning (another TR, missing pulses).
    """

    start: float | None
    matched: int = 0
    missing: list = field(default_factory=list)
    tr_s: float | None = None
    delay_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    note: str | None = None

    def to_dict(self) -> dict:
        d = self.delay_s
        return {"start_unix": self.start, "matched": self.matched, "missing": self.missing[:50],
                "n_missing": len(self.missing), "tr_s": self.tr_s,
                "delay_ms": ({"p50": float(1e3 * np.median(d)), "max": float(1e3 * d.max()),
                              "min": float(1e3 * d.min())} if d.size else None),
                "note": self.note}


def match_run(pulses, indices, received, tr_s: float, *, dummies: int = 0,
              n_volumes: int | None = None) -> RunTriggers:
    """Find a run's pulses among a session's.

    Parameters
    ----------
    pulses : array-like of shape (n_pulses,)
        The session's pulses (Unix s, this computer's clock).
    indices : array-like of int, shape (n_volumes,)
        The run's volume indices that were received.
    received : array-like of shape (n_volumes,)
        When each was received (Unix s, the same clock).
    tr_s : float
        The run's TR (s), from its header.
    dummies : int
        Pulses the scanner sends before the run's first saved volume (dummy
        scans that pulse); they are skipped.
    n_volumes : int, optional
        The run's length: a train with more pulses than ``n_volumes +
        dummies`` is noted (uncounted dummy scans would shift every volume).

    Returns
    -------
    RunTriggers

    Notes
    -----
    The pulses fall into trains, one per run, split where a gap is longer
    than 2.5 TR. A volume is received only after its acquisition ends, so
    the run's train is the latest that begins early enough for its first
    received volume, ``i0``: ``train start + (dummies + i0 + 1) * TR <=
    received[i0]``. Each volume's pulse is then the one within a tenth of a
    TR of where it is due, counted on from the last matched pulse (so a
    small difference between the header's TR and the scanner's does not add
    up).
    A run whose train has no pulse for most of its volumes, or in which a
    volume would be received before its acquisition ended, is not matched.
    """
    p = np.sort(np.asarray(pulses, float))
    idx = np.asarray(indices, int)
    rec = np.asarray(received, float)
    if idx.size == 0:
        return RunTriggers(None, note="no volumes were received")
    order = np.argsort(idx)
    idx, rec = idx[order], rec[order]
    if p.size == 0:
        return RunTriggers(None, note="no trigger pulses were read")
    starts = np.flatnonzero(np.r_[True, np.diff(p) > _TRAIN_GAP_TR * tr_s])
    fits = [s for s in starts if p[s] + (dummies + idx[0] + 1) * tr_s <= rec[0] + _MATCH_TOL_TR * tr_s]
    if not fits:
        return RunTriggers(None, note=f"no train of pulses began before volume {idx[0]} was received")
    s = fits[-1]
    after = starts[starts > s]
    in_train = int((after[0] if after.size else p.size) - s)
    tol = _MATCH_TOL_TR * tr_s
    last_i, last_t = -dummies, p[s]  # the train's first pulse is "volume -dummies"
    got: dict[int, float] = {}
    missing: list[int] = []
    for i in idx:
        due = last_t + (i - last_i) * tr_s
        k = int(np.searchsorted(p, due))
        near = [j for j in (k - 1, k) if 0 <= j < p.size and abs(p[j] - due) <= tol]
        if near:
            j = min(near, key=lambda j: abs(p[j] - due))
            got[int(i)] = float(p[j])
            last_i, last_t = int(i), float(p[j])
        else:
            missing.append(int(i))
    if len(got) < max(1, idx.size // 2):
        return RunTriggers(None, matched=len(got), missing=missing,
                           note=f"only {len(got)} of {idx.size} volumes had a pulse where one was due: the pulses "
                                "are not this run's (another TR, or --trigger-dummies wrong)")
    mi = np.array(sorted(got))
    mt = np.array([got[i] for i in mi])
    tr_meas = float((mt[-1] - mt[0]) / (mi[-1] - mi[0])) if mi.size > 1 else None
    rec_of = dict(zip(idx.tolist(), rec.tolist()))
    delay = np.array([rec_of[i] - (got[i] + tr_s) for i in mi.tolist()])
    if delay.min() < -tol:
        return RunTriggers(None, matched=len(got), missing=missing, tr_s=tr_meas, delay_s=delay,
                           note=f"volume {int(mi[np.argmin(delay)])} would have been received "
                                f"{-1e3 * delay.min():.0f} ms before its acquisition ended: the pulses are not "
                                "this run's (a missed first pulse, or --trigger-dummies wrong)")
    step = tr_meas if tr_meas is not None else tr_s
    start = float(mt[0] - mi[0] * step)
    notes = []
    if tr_meas is not None and abs(tr_meas - tr_s) > _TR_TOL * tr_s:
        notes.append(f"the pulses come every {tr_meas:.4f} s, the header says TR {tr_s:g} s")
    if missing:
        notes.append(f"{len(missing)} volume(s) had no pulse (first: {missing[0]})")
    if n_volumes is not None and in_train > n_volumes + dummies:
        extra = in_train - n_volumes - dummies
        notes.append(f"the train has {extra} pulse(s) more than the run's {n_volumes} volumes: if the scanner "
                     f"pulses during dummy scans, give --trigger-dummies {dummies + extra}")
    return RunTriggers(start, matched=len(got), missing=missing, tr_s=tr_meas, delay_s=delay,
                       note="; ".join(notes) or None)


def overdue(pulses, m: RunTriggers, last_index: int, now: float, tr_s: float) -> int:
    """Volumes whose pulse came but that are overdue: not received by ``now``, ``2 * TR`` after their usual time.

    A volume's usual time is the end of its acquisition plus the run's median
    image delay (``m.delay_s``). Pulses from the run's first on count, those
    of volumes up to ``last_index`` (the latest received) excepted, so a
    stalled export or link shows within a few TRs, while the scanner is
    still running.
    """
    if m.start is None or not m.delay_s.size:
        return 0
    p = np.asarray(pulses, float)
    usual = float(np.median(m.delay_s)) + tr_s
    due = p[(p >= m.start - _MATCH_TOL_TR * tr_s) & (p + usual + 2 * tr_s < now)]
    return max(0, int(due.size) - (last_index + 1))


def describe_triggers(m: dict | None) -> str:
    """One line for a run's :meth:`RunTriggers.to_dict` (report, stderr)."""
    if not m:
        return "no trigger input"
    if m.get("start_unix") is None:
        return f"not matched: {m.get('note')}"
    d = m.get("delay_ms") or {}
    text = (f"{m['matched']} pulses, every {m['tr_s']:.4f} s" if m.get("tr_s") else f"{m['matched']} pulse")
    if d:
        text += f"; image received {d['p50']:.0f} ms after its acquisition ended (median; max {d['max']:.0f})"
    if m.get("note"):
        text += f"; {m['note']}"
    return text
