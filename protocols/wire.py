"""Wire protocol v1: the messages that travel over ZeroMQ.

Every message is a ZeroMQ multipart message whose first frame is a msgpack
map (the *header*). A volume message has exactly one more frame, the raw voxel
bytes (the *payload*); every other message has only the header. The full
specification, written so it can be implemented in another language, is in
``protocols/README.md``. Nothing here ever unpickles anything.

Decoding untrusted bytes goes through :func:`decode`, which either returns a
message object or raises :class:`~protocols.errors.MessageError` naming the
field that was wrong.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import msgpack
import numpy as np

from ._crc import crc32
from .errors import MessageError

__all__ = [
    "PROTOCOL_VERSION",
    "valid_run_id",
    "MAX_HEADER_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_RUN_VOLUMES",
    "MAX_ALERTS",
    "MAX_ALERT_CHARS",
    "ALLOWED_DTYPES",
    "VolumeMessage",
    "RunStart",
    "RunEnd",
    "Heartbeat",
    "Ack",
    "Reject",
    "Result",
    "Message",
    "encode",
    "decode",
    "decode_header",
    "payload_checksum",
]

#: Version spoken by this implementation. A header with another ``v`` is rejected.
PROTOCOL_VERSION = 1
#: Magic value of the ``proto`` key, so stray traffic is recognised at once.
PROTOCOL_MAGIC = "b2m"
#: Largest accepted header frame, in bytes.
MAX_HEADER_BYTES = 64 * 1024
#: Largest accepted payload frame, in bytes (a 4-D float64 run of 512 MiB).
MAX_PAYLOAD_BYTES = 512 * 1024 * 1024
#: Largest accepted extent of one axis, in voxels.
MAX_AXIS = 4096
#: At most this many alerts in a result, each shorter than :data:`MAX_ALERT_CHARS`.
MAX_ALERTS = 8
MAX_ALERT_CHARS = 300
#: dtypes a scanner may send, with explicit byte order. ``|`` means one byte.
ALLOWED_DTYPES = (
    "|u1", "|i1",
    "<i2", ">i2", "<u2", ">u2",
    "<i4", ">i4", "<u4", ">u4",
    "<f4", ">f4", "<f8", ">f8",
)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # used with fullmatch
#: The most volumes a run may have (100,000: 2.8 h at TR 0.1 s); indices are below it.
MAX_RUN_VOLUMES = 100_000
_MAX_TR_S = 60.0

# Every numpy dtype str normalised to the explicit-byte-order spelling above.
_NATIVE = "<" if np.little_endian else ">"


def _dtype_str(dtype: np.dtype) -> str:
    s = np.dtype(dtype).str
    if s[0] == "=":
        s = _NATIVE + s[1:]
    return s


def payload_checksum(payload) -> int:
    """CRC-32 (zlib polynomial) of the payload bytes, as an unsigned int."""
    return crc32(payload)


# --------------------------------------------------------------------------
# Message types
# --------------------------------------------------------------------------


@dataclass(eq=False)
class VolumeMessage:
    """One acquired volume.

    Attributes
    ----------
    run_id : str
        Run identifier, 1-128 characters of ``[A-Za-z0-9._-]`` (it names a
        folder in the session record).
    index : int
        0-based volume index within the run.
    data : ndarray of shape (x, y, z) or (x, y, z, t)
        Voxel values in the scanner's native dtype; never widened.
    affine : ndarray of shape (4, 4), float64
        Voxel index -> scanner mm (RAS+, as in NIfTI).
    tr_s : float
        Repetition time in seconds.
    n_volumes : int or None
        Expected number of volumes in the run, if known.
    t_acquired, t_sent : float
        Unix time in seconds of acquisition and of sending.
    checksum : int or None
        CRC-32 of the payload as received (filled in by :func:`decode`).
    """

    run_id: str
    index: int
    data: np.ndarray
    affine: np.ndarray
    tr_s: float
    n_volumes: int | None = None
    t_acquired: float = 0.0
    t_sent: float = 0.0
    checksum: int | None = None
    type: Literal["volume"] = field(default="volume", init=False)


@dataclass(eq=False)
class RunStart:
    """Announces a run and its metadata before its first volume.

    ``meta`` is a flat map of str -> msgpack scalars, lists or bytes, e.g.
    ``{"source": "replay", "nifti_header": b"..."}``.
    """

    run_id: str
    tr_s: float
    n_volumes: int | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    affine: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    t_sent: float = 0.0
    type: Literal["run_start"] = field(default="run_start", init=False)


@dataclass(eq=False)
class RunEnd:
    """Says that the sender has sent its last volume of the run.

    ``n_volumes`` is how many volumes the sender sent in total.
    """

    run_id: str
    n_volumes: int
    t_sent: float = 0.0
    type: Literal["run_end"] = field(default="run_end", init=False)


@dataclass(eq=False)
class Heartbeat:
    """Keeps a quiet link visibly alive."""

    t_sent: float = 0.0
    type: Literal["heartbeat"] = field(default="heartbeat", init=False)


@dataclass(eq=False)
class Ack:
    """The receiver's answer to an accepted message.

    ``of`` is the acknowledged message type; ``index`` is set for volumes.
    ``status`` is ``"recorded"`` (durably written before this ack was sent),
    ``"duplicate"`` (already recorded earlier) or ``"ok"`` (control).
    """

    of: str
    run_id: str | None = None
    index: int | None = None
    status: Literal["recorded", "duplicate", "ok"] = "ok"
    t_ack: float = 0.0
    type: Literal["ack"] = field(default="ack", init=False)


@dataclass(eq=False)
class Reject:
    """The receiver's answer to a message it refused; it is never retried.

    ``field`` names the offending field, ``reason`` says what to do.
    ``of`` (the refused message's type), ``run_id`` and ``index`` are echoed
    when they could be read.
    """

    field: str
    reason: str
    of: str | None = None
    run_id: str | None = None
    index: int | None = None
    t_ack: float = 0.0
    type: Literal["reject"] = field(default="reject", init=False)


@dataclass(eq=False)
class Result:
    """What the session decided for one volume, published every TR (PUB).

    Attributes
    ----------
    run_id, index : str, int
        The volume that triggered this result.
    decoded_index : int or None
        The moment the decoder input refers to (``index - lag``), None before
        the delay stack is full.
    timestamps : dict of str -> float
        Unix seconds: ``acquired``, ``received``, ``preprocessed``, ``decoded``,
        ``decided``, ``audio_scheduled`` (those reached), all on the session
        computer's clock: ``acquired`` is the scanner side's stamp moved by
        the estimated difference between the two clocks
        (``realtime.clocks``).
    latency_ms : dict of str -> float
        Per stage, from the previous stage.
    motion : list of 6 float or None
        (tx, ty, tz) mm, (rx, ry, rz) radians.
    fd_mm : float or None
    flagged : bool
        FD over threshold: the policy held its state.
    embedding : ndarray of shape (dim,), float32, or None
    topk : list of (clip_id, score)
    tags : list of (tag, probability)
    action : str
        ``neutral``, ``keep``, ``switch``, ``hold`` (motion) or ``error``.
    clip : str or None
        The clip playing (or about to) after this decision (None in silence).
    dvars_pct : float or None
        DVARS of this volume from the previous one, percent of the mean
        signal (``realtime.preprocessing.qc``). Optional on the wire.
    tsnr : float or None
        The run's temporal SNR so far: the median over the decoder's voxels
        of mean / s.d. of the high-passed series (``realtime.preprocessing.qc``),
        None for the run's first volumes. Optional on the wire.
    tsnr_training : float or None
        What ``tsnr`` is compared with: the Training runs' running median
        after as many volumes (the model bundle's ``qc.tsnr`` curve), None
        where ``tsnr`` is None or the bundle has no such figure. Optional on
        the wire.
    condition : str or None
        The block design's condition at this decision (``feedback``,
        ``silence`` or ``neutral``), None without a block design. Optional
        on the wire: a result without it decodes as None.
    alerts : list of str
        What the operator should see now, wherever they watch (at most
        :data:`MAX_ALERTS`, each under :data:`MAX_ALERT_CHARS` characters):
        a trigger input that closed, volumes acquired but not received, a
        disk that refuses the record. Optional on the wire: absent is none.
    """

    run_id: str
    index: int
    decoded_index: int | None = None
    timestamps: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    motion: list | None = None
    fd_mm: float | None = None
    flagged: bool = False
    embedding: np.ndarray | None = None
    topk: list = field(default_factory=list)
    tags: list = field(default_factory=list)
    action: str = "neutral"
    clip: str | None = None
    condition: str | None = None
    dvars_pct: float | None = None
    tsnr: float | None = None
    tsnr_training: float | None = None
    alerts: list = field(default_factory=list)
    type: Literal["result"] = field(default="result", init=False)


Message = Union[VolumeMessage, RunStart, RunEnd, Heartbeat, Ack, Reject, Result]


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def _base(kind: str) -> dict:
    return {"proto": PROTOCOL_MAGIC, "v": PROTOCOL_VERSION, "type": kind}


def _affine_list(affine) -> list[float]:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise MessageError("affine", f"expected shape (4, 4), got {a.shape}")
    return [float(v) for v in a.ravel()]


def encode(msg: Message) -> list:
    """Encode a message into ZeroMQ frames.

    Returns
    -------
    frames : list of bytes-like
        ``[header]`` or, for a volume, ``[header, payload]``. The payload is a
        zero-copy view of ``msg.data`` when it is C- or F-contiguous.
    """
    if isinstance(msg, VolumeMessage):
        data = msg.data
        if data.flags.c_contiguous:
            order = "C"
        elif data.flags.f_contiguous:
            order = "F"
        else:
            data = np.ascontiguousarray(data)
            order = "C"
        payload = memoryview(data.reshape(-1, order="A") if data.ndim else data).cast("B")
        h = _base("volume")
        h.update(
            run_id=msg.run_id,
            index=int(msg.index),
            n_volumes=None if msg.n_volumes is None else int(msg.n_volumes),
            shape=[int(s) for s in data.shape],
            dtype=_dtype_str(data.dtype),
            order=order,
            affine=_affine_list(msg.affine),
            tr_s=float(msg.tr_s),
            t_acq=float(msg.t_acquired),
            t_send=float(msg.t_sent or time.time()),
            crc32=payload_checksum(payload),
        )
        return [msgpack.packb(h, use_bin_type=True), payload]
    if isinstance(msg, RunStart):
        h = _base("run_start")
        h.update(
            run_id=msg.run_id,
            tr_s=float(msg.tr_s),
            n_volumes=None if msg.n_volumes is None else int(msg.n_volumes),
            shape=None if msg.shape is None else [int(s) for s in msg.shape],
            dtype=None if msg.dtype is None else _dtype_str(np.dtype(msg.dtype)),
            affine=None if msg.affine is None else _affine_list(msg.affine),
            meta=dict(msg.meta),
            t_send=float(msg.t_sent or time.time()),
        )
    elif isinstance(msg, RunEnd):
        h = _base("run_end")
        h.update(run_id=msg.run_id, n_volumes=int(msg.n_volumes),
                 t_send=float(msg.t_sent or time.time()))
    elif isinstance(msg, Heartbeat):
        h = _base("heartbeat")
        h.update(t_send=float(msg.t_sent or time.time()))
    elif isinstance(msg, Ack):
        h = _base("ack")
        h.update(of=msg.of, run_id=msg.run_id, index=msg.index, status=msg.status,
                 t_ack=float(msg.t_ack or time.time()))
    elif isinstance(msg, Result):
        h = _base("result")
        emb = None if msg.embedding is None else np.asarray(msg.embedding, "<f4").tobytes()
        h.update(run_id=msg.run_id, index=int(msg.index), decoded_index=msg.decoded_index,
                 timestamps={k: float(v) for k, v in msg.timestamps.items()},
                 latency_ms={k: float(v) for k, v in msg.latency_ms.items()},
                 motion=None if msg.motion is None else [float(v) for v in msg.motion],
                 fd_mm=None if msg.fd_mm is None else float(msg.fd_mm), flagged=bool(msg.flagged),
                 embedding=emb, topk=[[str(c), float(v)] for c, v in msg.topk],
                 tags=[[str(t), float(v)] for t, v in msg.tags], action=msg.action, clip=msg.clip)
        if msg.condition is not None:
            h["condition"] = str(msg.condition)
        if msg.dvars_pct is not None:
            h["dvars_pct"] = float(msg.dvars_pct)
        if msg.tsnr is not None:
            h["tsnr"] = float(msg.tsnr)
        if msg.tsnr_training is not None:
            h["tsnr_training"] = float(msg.tsnr_training)
        if msg.alerts:
            h["alerts"] = [str(a) for a in msg.alerts]
    elif isinstance(msg, Reject):
        h = _base("reject")
        h.update(field=msg.field, reason=msg.reason, of=msg.of, run_id=msg.run_id, index=msg.index,
                 t_ack=float(msg.t_ack or time.time()))
    else:
        raise TypeError(f"cannot encode {type(msg).__name__}; expected one of {Message}")
    return [msgpack.packb(h, use_bin_type=True)]


# --------------------------------------------------------------------------
# Decoding and validation
# --------------------------------------------------------------------------

_MISSING = object()


def _get(h: dict, key: str, kinds, *, optional: bool = False, what: str = "") -> Any:
    v = h.get(key, _MISSING)
    if v is _MISSING or (v is None and optional):
        if optional:
            return None
        raise MessageError(f"header.{key}", f"required field is missing{what}")
    # bool is an int subclass in Python; never accept it for numbers.
    if isinstance(v, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise MessageError(f"header.{key}", f"expected {_kind_names(kinds)}, got a boolean")
    if not isinstance(v, kinds):
        raise MessageError(f"header.{key}", f"expected {_kind_names(kinds)}, got {type(v).__name__} {_short(v)}")
    return v


def _kind_names(kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a map", bytes: "bytes", bool: "a boolean"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _finite(h: dict, key: str, *, optional: bool = False) -> float | None:
    v = _get(h, key, (int, float), optional=optional)
    if v is None:
        return None
    v = float(v)
    if not math.isfinite(v):
        raise MessageError(f"header.{key}", f"must be a finite number, got {v}")
    return v


def valid_run_id(run_id: str) -> bool:
    """True if ``run_id`` is one the protocol accepts: 1-128 characters of ``[A-Za-z0-9._-]``, starting
    with a letter or digit (it names a folder in the session record)."""
    return bool(_RUN_ID.fullmatch(run_id))


def _run_id(h: dict, *, optional: bool = False) -> str | None:
    v = _get(h, "run_id", str, optional=optional)
    if v is not None and not valid_run_id(v):
        raise MessageError(
            "header.run_id",
            f"{_short(v)} is not a valid run id: use 1-128 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit",
        )
    return v


def _index(h: dict, key: str = "index", *, optional: bool = False) -> int | None:
    """A volume's 0-based index in its run: in [0, MAX_RUN_VOLUMES)."""
    v = _get(h, key, int, optional=optional)
    if v is not None and not 0 <= v < MAX_RUN_VOLUMES:
        raise MessageError(f"header.{key}", f"must be in [0, {MAX_RUN_VOLUMES - 1}], got {v}: a run's volumes are "
                                            "numbered from 0 in acquisition order")
    return v


def _n_volumes(h: dict, *, optional: bool = False) -> int | None:
    """A run's volume count: in [1, MAX_RUN_VOLUMES]."""
    v = _get(h, "n_volumes", int, optional=optional)
    if v is not None and not 1 <= v <= MAX_RUN_VOLUMES:
        raise MessageError("header.n_volumes", f"must be in [1, {MAX_RUN_VOLUMES}], got {v}: the number of "
                           "volumes the run has" + (" (nil if not known yet)" if optional else ""))
    return v


def _tr(h: dict, *, optional: bool = False) -> float | None:
    v = _finite(h, "tr_s", optional=optional)
    if v is not None and not 0.0 < v <= _MAX_TR_S:
        raise MessageError(
            "header.tr_s", f"TR must be in seconds, in (0, {_MAX_TR_S}], got {v} "
            "(a value like 1500 is milliseconds: divide by 1000)"
        )
    return v


def _shape(h: dict, *, optional: bool = False) -> tuple[int, ...] | None:
    v = _get(h, "shape", list, optional=optional)
    if v is None:
        return None
    if len(v) != 3:
        raise MessageError("header.shape", f"a volume is 3-D (x, y, z), got {len(v)} dimension(s) {_short(v)}: "
                           + ("send a 4-D series as one message per 3-D volume" if len(v) > 3 else
                              "send whole volumes (b2m scanner watch assembles a GE scanner's slices)"))
    for s in v:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_AXIS:
            raise MessageError("header.shape", f"each extent must be an integer in [1, {MAX_AXIS}], got {_short(v)}")
    return tuple(v)


def _dtype(h: dict, *, optional: bool = False) -> np.dtype | None:
    v = _get(h, "dtype", str, optional=optional)
    if v is None:
        return None
    if v not in ALLOWED_DTYPES:
        raise MessageError(
            "header.dtype",
            f"{_short(v)} is not allowed; send one of {', '.join(ALLOWED_DTYPES)} "
            "(explicit byte order; never widen int16 to float64)",
        )
    return np.dtype(v)


def _affine(h: dict, *, optional: bool = False) -> np.ndarray | None:
    v = _get(h, "affine", list, optional=optional)
    if v is None:
        return None
    if len(v) != 16 or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
        raise MessageError("header.affine", "expected 16 numbers (the 4x4 matrix, row by row)")
    a = np.asarray(v, dtype=np.float64).reshape(4, 4)
    if not np.all(np.isfinite(a)):
        raise MessageError("header.affine", "contains NaN or infinity; send the scanner's voxel-to-mm matrix")
    if not np.array_equal(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise MessageError("header.affine", f"last row must be [0, 0, 0, 1], got {a[3].tolist()}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise MessageError("header.affine", "is singular (zero voxel size?)")
    return a


def decode_header(frame) -> dict:
    """Unpack and check the envelope of a header frame (size, magic, version, type).

    Raises
    ------
    MessageError
        With ``field`` set to ``"header"``, ``"header.proto"``, ``"header.v"``
        or ``"header.type"``.
    """
    n = len(frame)
    if n > MAX_HEADER_BYTES:
        raise MessageError("header", f"is {n} bytes; the limit is {MAX_HEADER_BYTES}: keep the header "
                                     "small and send bulky metadata once, in the run start's meta")
    if n == 0:
        raise MessageError("header", "is empty; the first frame must be a msgpack map")
    try:
        h = msgpack.unpackb(
            bytes(frame), raw=False, strict_map_key=True, use_list=True,
            timestamp=0,
        )
    except Exception as e:  # msgpack raises several unrelated types
        raise MessageError("header", f"is not valid msgpack ({type(e).__name__}{': ' + str(e) if str(e) else ''});"
                                     " this port speaks "
                                     "brain2music-rt wire v1: send a msgpack map (protocols/README.md), and check "
                                     "that nothing else is pointed at this port") from None
    if not isinstance(h, dict):
        raise MessageError("header", f"must be a msgpack map, got {type(h).__name__}; send the header "
                                     "map described in protocols/README.md")
    if h.get("proto") != PROTOCOL_MAGIC:
        raise MessageError("header.proto", f"expected {PROTOCOL_MAGIC!r}, got {_short(h.get('proto'))}; "
                                           "this is not a brain2music-rt message")
    v = h.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise MessageError("header.v", f"protocol version {_short(v)} is not supported; "
                                       f"this end speaks version {PROTOCOL_VERSION}: upgrade the older side")
    t = h.get("type")
    if not isinstance(t, str) or t not in _DECODERS:
        raise MessageError("header.type", f"unknown message type {_short(t)}; expected one of {sorted(_DECODERS)}")
    return h


def decode(frames) -> Message:
    """Decode and validate ZeroMQ frames into a message.

    Parameters
    ----------
    frames : sequence of bytes-like
        The frames after any ROUTER identity frame.

    Raises
    ------
    MessageError
        Naming the first offending field; never any other exception type.
    """
    if len(frames) == 0:
        raise MessageError("frames", "no frames received")
    h = decode_header(frames[0])
    kind = h["type"]
    want = 2 if kind == "volume" else 1
    if len(frames) != want:
        raise MessageError(
            "frames", f"a {kind} message has {want} frame(s) "
            f"({'header and payload' if want == 2 else 'header only'}), got {len(frames)}"
        )
    try:
        return _DECODERS[kind](h, frames)
    except MessageError:
        raise
    except Exception as e:  # belt and braces: no other exception type escapes
        raise MessageError("header", f"could not be decoded ({type(e).__name__}: {e})") from None


def _decode_volume(h: dict, frames) -> VolumeMessage:
    run_id = _run_id(h)
    index = _index(h)
    n_volumes = _n_volumes(h, optional=True)
    if n_volumes is not None and index >= n_volumes:
        raise MessageError("header.index", f"volume {index} is past the run's own n_volumes={n_volumes} "
                                           "(indices are 0-based)")
    shape = _shape(h)
    dtype = _dtype(h)
    order = _get(h, "order", str)
    if order not in ("C", "F"):
        raise MessageError("header.order", f"expected 'C' or 'F', got {_short(order)}")
    affine = _affine(h)
    tr_s = _tr(h)
    t_acq = _finite(h, "t_acq")
    t_send = _finite(h, "t_send")
    crc = _get(h, "crc32", int)
    payload = frames[1]
    expected = math.prod(shape) * dtype.itemsize
    if len(payload) != expected:
        raise MessageError(
            "payload", f"is {len(payload)} bytes but shape {list(shape)} of {dtype.str} "
            f"needs {expected}: the frame was truncated or the header is wrong"
        )
    if expected > MAX_PAYLOAD_BYTES:
        raise MessageError("payload", f"{expected} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit: check the "
                                      "header's shape and dtype (one 3-D volume per message)")
    got = payload_checksum(payload)
    if got != crc:
        raise MessageError("header.crc32", f"payload CRC-32 is {got:#010x} but the header says "
                                           f"{crc & 0xFFFFFFFF:#010x}: the payload was corrupted in transit")
    data = np.frombuffer(payload, dtype=dtype).reshape(shape, order=order)
    return VolumeMessage(run_id=run_id, index=index, data=data, affine=affine, tr_s=tr_s,
                         n_volumes=n_volumes, t_acquired=t_acq, t_sent=t_send, checksum=got)


def _decode_run_start(h: dict, frames) -> RunStart:
    meta = _get(h, "meta", dict, optional=True) or {}
    for k in meta:
        if not isinstance(k, str):
            raise MessageError("header.meta", f"keys must be strings, got {_short(k)}")
    dtype = _dtype(h, optional=True)
    return RunStart(
        run_id=_run_id(h), tr_s=_tr(h), n_volumes=_n_volumes(h, optional=True),
        shape=_shape(h, optional=True), dtype=None if dtype is None else dtype.str,
        affine=_affine(h, optional=True), meta=meta, t_sent=_finite(h, "t_send"),
    )


def _decode_run_end(h: dict, frames) -> RunEnd:
    return RunEnd(run_id=_run_id(h), n_volumes=_n_volumes(h), t_sent=_finite(h, "t_send"))


def _decode_heartbeat(h: dict, frames) -> Heartbeat:
    return Heartbeat(t_sent=_finite(h, "t_send"))


def _decode_ack(h: dict, frames) -> Ack:
    status = _get(h, "status", str)
    if status not in ("recorded", "duplicate", "ok"):
        raise MessageError("header.status", f"unknown ack status {_short(status)}")
    return Ack(of=_get(h, "of", str), run_id=_run_id(h, optional=True),
               index=_index(h, optional=True), status=status, t_ack=_finite(h, "t_ack"))


def _decode_reject(h: dict, frames) -> Reject:
    return Reject(field=_get(h, "field", str), reason=_get(h, "reason", str),
                  of=_get(h, "of", str, optional=True),
                  run_id=_get(h, "run_id", str, optional=True), index=_index(h, optional=True),
                  t_ack=_finite(h, "t_ack"))


def _decode_result(h: dict, frames) -> Result:
    emb = _get(h, "embedding", bytes, optional=True)
    if emb is not None and len(emb) % 4:
        raise MessageError("header.embedding", "must be little-endian float32 bytes")
    motion = _get(h, "motion", list, optional=True)
    return Result(run_id=_run_id(h), index=_index(h), decoded_index=_index(h, "decoded_index", optional=True),
                  timestamps=_get(h, "timestamps", dict), latency_ms=_get(h, "latency_ms", dict),
                  motion=motion, fd_mm=_finite(h, "fd_mm", optional=True), flagged=bool(_get(h, "flagged", bool)),
                  embedding=None if emb is None else np.frombuffer(emb, "<f4"),
                  topk=[(c, v) for c, v in _get(h, "topk", list)], tags=[(t, v) for t, v in _get(h, "tags", list)],
                  action=_get(h, "action", str), clip=_get(h, "clip", str, optional=True),
                  condition=_get(h, "condition", str, optional=True),
                  dvars_pct=_finite(h, "dvars_pct", optional=True), tsnr=_finite(h, "tsnr", optional=True),
                  tsnr_training=_finite(h, "tsnr_training", optional=True), alerts=_alerts(h))


def _alerts(h: dict) -> list:
    alerts = _get(h, "alerts", list, optional=True) or []
    if len(alerts) > MAX_ALERTS:
        raise MessageError("header.alerts", f"{len(alerts)} alerts; at most {MAX_ALERTS}")
    for a in alerts:
        if not isinstance(a, str) or len(a) >= MAX_ALERT_CHARS:
            raise MessageError("header.alerts", f"each alert must be a string under {MAX_ALERT_CHARS} characters, "
                                                f"got {_short(a)}")
    return list(alerts)


_DECODERS = {
    "volume": _decode_volume,
    "run_start": _decode_run_start,
    "run_end": _decode_run_end,
    "heartbeat": _decode_heartbeat,
    "ack": _decode_ack,
    "reject": _decode_reject,
    "result": _decode_result,
}
