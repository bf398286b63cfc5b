"""Wire protocol v1: exact round trips (hypothesis) and typed errors for
every mangled field of a volume message."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocols.errors import MessageError
from protocols.wire import (
    ALLOWED_DTYPES,
    MAX_HEADER_BYTES,
    MAX_RUN_VOLUMES,
    PROTOCOL_VERSION,
    Ack,
    Heartbeat,
    Reject,
    RunEnd,
    RunStart,
    VolumeMessage,
    decode,
    decode_header,
    encode,
    payload_checksum,
)

# No timing in tests: hypothesis' per-example deadline is off.
fuzz = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------

run_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z", fullmatch=True)
indices = st.integers(0, MAX_RUN_VOLUMES - 1)
n_volumes = st.none() | st.integers(1, MAX_RUN_VOLUMES)
trs = st.floats(min_value=0.0, max_value=60.0, exclude_min=True, allow_nan=False)
times = st.floats(min_value=1.0, max_value=4e9, allow_nan=False)  # 0.0 means "now" to encode
finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
shapes = st.lists(st.integers(1, 5), min_size=3, max_size=3).map(tuple)  # a volume is 3-D


@st.composite
def affines(draw):
    """A finite, nonsingular 4x4 with last row [0, 0, 0, 1]."""
    top = np.array(draw(st.lists(finite, min_size=12, max_size=12)), dtype=np.float64).reshape(3, 4)
    with np.errstate(all="ignore"):
        det = np.linalg.det(top[:, :3])
    assume(np.isfinite(det) and abs(det) > 1e-6)
    return np.vstack([top, [0.0, 0.0, 0.0, 1.0]])


@st.composite
def volumes(draw):
    """Arbitrary bytes viewed as an array of an allowed dtype, in C or F order."""
    shape = draw(shapes)
    dtype = np.dtype(draw(st.sampled_from(ALLOWED_DTYPES)))
    raw = draw(st.binary(min_size=math.prod(shape) * dtype.itemsize,
                         max_size=math.prod(shape) * dtype.itemsize))
    data = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if draw(st.sampled_from("CF")) == "F":
        data = np.asfortranarray(data)
    return data


meta_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | finite | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)
metas = st.dictionaries(st.text(max_size=16), meta_values, max_size=5)


def _assert_bit_exact(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype.str == want.dtype.str
    assert got.shape == want.shape
    # Bytes in logical (C) order: NaN payloads and -0.0 must survive too.
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()
    assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f")


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


@fuzz
@given(run_id=run_ids, index=indices, data=volumes(), affine=affines(), tr_s=trs, n=n_volumes,
       t_acq=times, t_send=times)
def test_decode_volume_roundtrip_exact(run_id, index, data, affine, tr_s, n, t_acq, t_send):
    assume(n is None or index < n)  # a volume's index lies inside its own run
    before = data.copy(order="A")
    msg = VolumeMessage(run_id=run_id, index=index, data=data, affine=affine, tr_s=tr_s, n_volumes=n,
                        t_acquired=t_acq, t_sent=t_send)
    frames = encode(msg)
    assert len(frames) == 2
    got = decode([bytes(f) for f in frames])
    assert isinstance(got, VolumeMessage)
    assert (got.run_id, got.index, got.n_volumes) == (run_id, index, n)
    assert got.tr_s == tr_s and got.t_acquired == t_acq and got.t_sent == t_send
    _assert_bit_exact(got.data, data)
    if data.flags.f_contiguous and not data.flags.c_contiguous:
        assert got.data.flags.f_contiguous  # the sender's memory order is kept
    assert got.affine.dtype == np.float64 and np.array_equal(got.affine, affine)  # exact, not allclose
    assert got.checksum == payload_checksum(frames[1])
    _assert_bit_exact(data, before)  # input untouched


@fuzz
@given(data=volumes())
def test_encode_volume_payload_is_native_bytes(data):
    frames = encode(VolumeMessage("run1", 0, data, np.eye(4), 2.0))
    header = msgpack.unpackb(frames[0], raw=False)
    assert header["dtype"] == data.dtype.str  # byte order explicit, never swapped
    assert len(frames[1]) == data.size * data.dtype.itemsize
    assert bytes(frames[1]) == data.tobytes(order=header["order"])


def test_encode_int16_volume_never_widened(rng):
    data = rng.integers(-32768, 32767, size=(7, 6, 5), dtype=np.int16)
    frames = encode(VolumeMessage("run1", 3, data, np.eye(4), 1.5))
    header = msgpack.unpackb(frames[0], raw=False)
    assert header["dtype"] == "<i2"
    assert len(frames[1]) == data.size * 2
    assert bytes(frames[1]) == data.tobytes()
    big = data.astype(">i2")
    frames = encode(VolumeMessage("run1", 3, big, np.eye(4), 1.5))
    assert msgpack.unpackb(frames[0], raw=False)["dtype"] == ">i2"
    assert len(frames[1]) == data.size * 2
    np.testing.assert_array_equal(decode(frames).data, data)


def test_encode_noncontiguous_volume_roundtrips(rng):
    base = rng.integers(0, 1000, size=(8, 6, 4), dtype=np.uint16)
    view = base[::2, 1:, ::-1]
    assert not (view.flags.c_contiguous or view.flags.f_contiguous)
    got = decode(encode(VolumeMessage("run1", 0, view, np.eye(4), 2.0)))
    _assert_bit_exact(got.data, view)


@fuzz
@given(run_id=run_ids, tr_s=trs, n=n_volumes, shape=st.none() | shapes,
       dtype=st.none() | st.sampled_from(ALLOWED_DTYPES), affine=st.none() | affines(), meta=metas,
       t_send=times)
def test_decode_run_start_roundtrip_exact(run_id, tr_s, n, shape, dtype, affine, meta, t_send):
    meta = dict(meta, nifti_header=b"\x5c\x01\x00\x00" + bytes(range(256)))
    msg = RunStart(run_id=run_id, tr_s=tr_s, n_volumes=n, shape=shape, dtype=dtype, affine=affine,
                   meta=meta, t_sent=t_send)
    got = decode(encode(msg))
    assert isinstance(got, RunStart)
    assert (got.run_id, got.tr_s, got.n_volumes, got.dtype, got.t_sent) == (run_id, tr_s, n, dtype, t_send)
    assert got.shape == shape
    if affine is None:
        assert got.affine is None
    else:
        assert np.array_equal(got.affine, affine)
    assert got.meta == meta
    assert isinstance(got.meta["nifti_header"], bytes)  # bytes stay bytes, not str


@fuzz
@given(run_id=run_ids, n=st.integers(1, MAX_RUN_VOLUMES), t_send=times)
def test_decode_run_end_roundtrip_exact(run_id, n, t_send):
    got = decode(encode(RunEnd(run_id=run_id, n_volumes=n, t_sent=t_send)))
    assert isinstance(got, RunEnd)
    assert (got.run_id, got.n_volumes, got.t_sent) == (run_id, n, t_send)


@fuzz
@given(t_send=times)
def test_decode_heartbeat_roundtrip_exact(t_send):
    got = decode(encode(Heartbeat(t_sent=t_send)))
    assert isinstance(got, Heartbeat) and got.t_sent == t_send


@fuzz
@given(of=st.sampled_from(["volume", "run_start", "run_end", "heartbeat"]), run_id=st.none() | run_ids,
       index=st.none() | indices, status=st.sampled_from(["recorded", "duplicate", "ok"]), t_ack=times)
def test_decode_ack_roundtrip_exact(of, run_id, index, status, t_ack):
    got = decode(encode(Ack(of=of, run_id=run_id, index=index, status=status, t_ack=t_ack)))
    assert isinstance(got, Ack)
    assert (got.of, got.run_id, got.index, got.status, got.t_ack) == (of, run_id, index, status, t_ack)


@fuzz
@given(field=st.text(min_size=1, max_size=40), reason=st.text(min_size=1, max_size=300),
       of=st.none() | st.text(max_size=12), run_id=st.none() | st.text(max_size=40),
       index=st.none() | indices, t_ack=times)
def test_decode_reject_roundtrip_exact(field, reason, of, run_id, index, t_ack):
    got = decode(encode(Reject(field=field, reason=reason, of=of, run_id=run_id, index=index, t_ack=t_ack)))
    assert isinstance(got, Reject)
    assert (got.field, got.reason, got.of, got.run_id, got.index, got.t_ack) == (
        field, reason, of, run_id, index, t_ack)


# --------------------------------------------------------------------------
# Mangled messages: a typed error naming the field
# --------------------------------------------------------------------------

_DROP = object()


def _valid_frames():
    data = np.arange(4 * 3 * 2, dtype="<i2").reshape(4, 3, 2)
    affine = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    return [bytes(f) for f in encode(VolumeMessage("run1", 5, data, affine, 1.5, n_volumes=10,
                                                   t_acquired=1.7e9, t_sent=1.7e9 + 0.01))]


def _mangled(key, value):
    header, payload = _valid_frames()
    h = msgpack.unpackb(header, raw=False)
    if value is _DROP:
        del h[key]
    else:
        h[key] = value
    return [msgpack.packb(h, use_bin_type=True), payload]


_IDENT = np.eye(4).ravel().tolist()
_BAD_FIELDS = [
    ("run_id", 5), ("run_id", ""), ("run_id", "../etc"), ("run_id", "run 1"), ("run_id", "a" * 129),
    ("run_id", "-run"), ("run_id", True), ("run_id", None), ("run_id", _DROP),
    ("index", -1), ("index", 2**31), ("index", MAX_RUN_VOLUMES), ("index", 5.0), ("index", True), ("index", "5"),
    ("index", _DROP),
    ("n_volumes", -1), ("n_volumes", 0), ("n_volumes", MAX_RUN_VOLUMES + 1), ("n_volumes", True),
    ("n_volumes", 10.0), ("n_volumes", "10"),
    ("shape", []), ("shape", [1, 1, 1, 1, 24]), ("shape", [0, 3, 2]), ("shape", [4, 3, True]),
    ("shape", [4.0, 3, 2]), ("shape", [-4, 3, 2]), ("shape", [5000, 3, 2]), ("shape", "4x3x2"),
    ("shape", [24]), ("shape", [4, 6]), ("shape", [4, 3, 2, 1]),
    ("shape", {"x": 4}), ("shape", _DROP),
    ("dtype", "<f16"), ("dtype", "float64"), ("dtype", "f8"), ("dtype", "int16"), ("dtype", "<c8"),
    ("dtype", "|O"), ("dtype", "<i8"), ("dtype", 3), ("dtype", b"<i2"), ("dtype", _DROP),
    ("order", "A"), ("order", "c"), ("order", 1), ("order", None), ("order", _DROP),
    ("affine", [float("nan")] + _IDENT[1:]), ("affine", _IDENT[:5] + [float("inf")] + _IDENT[6:]),
    ("affine", _IDENT[:15]), ("affine", _IDENT + [0.0]), ("affine", [True] + _IDENT[1:]),
    ("affine", ["1"] + _IDENT[1:]), ("affine", np.eye(4).tolist()), ("affine", _IDENT[:15] + [2.0]),
    ("affine", [0.0] * 15 + [1.0]), ("affine", "eye"), ("affine", _DROP),
    ("tr_s", 1500), ("tr_s", 1500.0), ("tr_s", 0), ("tr_s", -2.0), ("tr_s", 60.5),
    ("tr_s", float("nan")), ("tr_s", float("inf")), ("tr_s", "2.0"), ("tr_s", True), ("tr_s", _DROP),
    ("t_acq", float("nan")), ("t_acq", float("-inf")), ("t_acq", "now"), ("t_acq", True),
    ("t_acq", _DROP),
    ("t_send", float("nan")), ("t_send", None), ("t_send", [1.0]), ("t_send", _DROP),
    ("crc32", 0), ("crc32", "0x1234"), ("crc32", True), ("crc32", 1.5), ("crc32", -1), ("crc32", _DROP),
    ("v", 2), ("v", 0), ("v", "1"), ("v", True), ("v", None), ("v", [1]), ("v", _DROP),
    ("proto", "b2n"), ("proto", "B2M"), ("proto", 1), ("proto", None), ("proto", b"b2m"), ("proto", _DROP),
    ("type", "volumes"), ("type", "Volume"), ("type", 1), ("type", None), ("type", _DROP),
]


@pytest.mark.parametrize("key,value", _BAD_FIELDS,
                         ids=[f"{k}={'missing' if v is _DROP else repr(v)[:20]}" for k, v in _BAD_FIELDS])
def test_decode_mangled_header_field_names_field(key, value):
    with pytest.raises(MessageError) as e:
        decode(_mangled(key, value))
    assert e.value.field == f"header.{key}"
    assert e.value.reason.strip()
    assert str(e.value).startswith(f"header.{key}: ")


def test_decode_valid_frames_baseline():
    # The frames that every mangled case starts from are themselves valid.
    msg = decode(_valid_frames())
    assert isinstance(msg, VolumeMessage) and msg.index == 5 and msg.data.shape == (4, 3, 2)


def test_decode_tr_in_milliseconds_reason_says_divide():
    with pytest.raises(MessageError) as e:
        decode(_mangled("tr_s", 1500))
    assert "seconds" in e.value.reason and "1000" in e.value.reason


def test_decode_bad_dtype_reason_lists_allowed():
    with pytest.raises(MessageError) as e:
        decode(_mangled("dtype", "float64"))
    assert all(d in e.value.reason for d in ALLOWED_DTYPES)


def test_decode_float_version_rejected():
    with pytest.raises(MessageError) as e:
        decode(_mangled("v", 1.0))
    assert e.value.field == "header.v"


@pytest.mark.parametrize("value", [["volume"], {"volume": 1}])
def test_decode_unhashable_type_raises_message_error(value):
    with pytest.raises(MessageError) as e:
        decode(_mangled("type", value))
    assert e.value.field == "header.type"


def test_decode_run_id_trailing_newline_rejected():
    with pytest.raises(MessageError) as e:
        decode(_mangled("run_id", "run1\n"))
    assert e.value.field == "header.run_id"


@pytest.mark.parametrize("cut", [1, 2, 47])
def test_decode_short_payload_names_payload(cut):
    header, payload = _valid_frames()
    with pytest.raises(MessageError) as e:
        decode([header, payload[:-cut]])
    assert e.value.field == "payload"
    assert str(len(payload)) in e.value.reason  # says how many bytes were needed


@pytest.mark.parametrize("extra", [1, 48])
def test_decode_long_payload_names_payload(extra):
    header, payload = _valid_frames()
    with pytest.raises(MessageError) as e:
        decode([header, payload + b"\x00" * extra])
    assert e.value.field == "payload" and e.value.reason.strip()


def test_decode_float64_payload_for_int16_header_names_payload():
    header, payload = _valid_frames()
    widened = np.frombuffer(payload, "<i2").astype("<f8").tobytes()
    with pytest.raises(MessageError) as e:
        decode([header, widened])
    assert e.value.field == "payload"


@pytest.mark.parametrize("pos", [0, 17, -1])
def test_decode_corrupted_payload_byte_names_crc32(pos):
    header, payload = _valid_frames()
    bad = bytearray(payload)
    bad[pos] ^= 0x10
    with pytest.raises(MessageError) as e:
        decode([header, bytes(bad)])
    assert e.value.field == "header.crc32"
    assert "corrupt" in e.value.reason


@pytest.mark.parametrize("frames", [
    lambda h, p: [],
    lambda h, p: [h],
    lambda h, p: [h, p, p],
    lambda h, p: [encode(Heartbeat(t_sent=1.0))[0], p],
    lambda h, p: [encode(RunEnd("run1", 3, t_sent=1.0))[0], b"", b""],
], ids=["none", "volume-without-payload", "volume-extra-frame", "heartbeat-with-payload",
        "run-end-three-frames"])
def test_decode_wrong_frame_count_names_frames(frames):
    with pytest.raises(MessageError) as e:
        decode(frames(*_valid_frames()))
    assert e.value.field == "frames" and e.value.reason.strip()


def _padded_header(total: int) -> bytes:
    """The valid volume header with a padding key, exactly ``total`` bytes long."""
    h = msgpack.unpackb(_valid_frames()[0], raw=False)
    for pad in range(total, 0, -1):
        packed = msgpack.packb(dict(h, pad="x" * pad), use_bin_type=True)
        if len(packed) == total:
            return packed
    raise AssertionError(f"cannot pad a header to {total} bytes")


def test_decode_header_at_limit_accepted():
    header = _padded_header(MAX_HEADER_BYTES)
    assert len(header) == MAX_HEADER_BYTES
    assert decode([header, _valid_frames()[1]]).index == 5  # unknown keys are ignored


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 1, 10 * MAX_HEADER_BYTES])
def test_decode_oversized_header_names_header(size):
    header = _padded_header(size)
    with pytest.raises(MessageError) as e:
        decode([header, _valid_frames()[1]])
    assert e.value.field == "header"
    assert str(MAX_HEADER_BYTES) in e.value.reason


@pytest.mark.parametrize("header", [b"", b"\xc1", b"\x93\x01\x02\x03", msgpack.packb("b2m"),
                                    msgpack.packb({1: 2}), b"GET / HTTP/1.1\r\n\r\n"],
                         ids=["empty", "reserved-byte", "array", "string", "int-keys", "http"])
def test_decode_header_not_a_map_names_header(header):
    with pytest.raises(MessageError) as e:
        decode([header])
    assert e.value.field == "header" and e.value.reason.strip()


def test_decode_header_checks_envelope_only():
    h = decode_header(_valid_frames()[0])
    assert h["v"] == PROTOCOL_VERSION and h["type"] == "volume"


@fuzz
@given(header=st.binary(max_size=256), payload=st.none() | st.binary(max_size=64))
def test_decode_random_bytes_only_message_error(header, payload):
    frames = [header] if payload is None else [header, payload]
    with pytest.raises(MessageError) as e:
        decode(frames)
    assert e.value.field and e.value.reason


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


@fuzz
@given(kind=st.sampled_from(["volume", "run_start", "run_end", "heartbeat", "ack", "reject"]),
       fields=st.dictionaries(st.sampled_from(["run_id", "index", "n_volumes", "shape", "dtype", "order",
                                               "affine", "tr_s", "t_acq", "t_send", "t_ack", "crc32",
                                               "meta", "of", "status", "field", "reason"]),
                              _msgpack_values, max_size=17),
       payload=st.binary(max_size=32))
def test_decode_random_fields_only_message_error(kind, fields, payload):
    # A valid envelope with random field values: the decoder answers with a
    # MessageError or a message, and never with any other exception.
    h = {"proto": "b2m", "v": PROTOCOL_VERSION, "type": kind, **fields}
    frames = [msgpack.packb(h, use_bin_type=True)] + ([payload] if kind == "volume" else [])
    try:
        msg = decode(frames)
    except MessageError as e:
        assert e.field.startswith(("header", "payload")) and e.reason
    else:
        assert msg.type == kind


def test_decode_volume_index_past_own_n_volumes_rejected(rng):
    msg = VolumeMessage(run_id="r", index=5, data=np.zeros((2, 2, 2), "<i2"), affine=np.eye(4), tr_s=1.5,
                        n_volumes=5)
    with pytest.raises(MessageError) as e:
        decode([bytes(f) for f in encode(msg)])
    assert e.value.field == "header.index" and "0-based" in e.value.reason


def test_result_roundtrip_exact(rng):
    from protocols.wire import Result

    emb = rng.standard_normal(200).astype(np.float32)
    r = Result(run_id="run1", index=17, decoded_index=13, timestamps={"received": 1.5, "decided": 1.6},
               latency_ms={"decode": 0.4}, motion=[0.1, 0, 0, 0.001, 0, 0], fd_mm=0.12, flagged=False,
               embedding=emb, topk=[("gen.jazz.00001", 0.91)], tags=[("jazz", 0.7)], action="switch",
               clip="gen.jazz.00001")
    got = decode(encode(r))
    assert isinstance(got, Result) and got.index == 17 and got.decoded_index == 13 and got.action == "switch"
    np.testing.assert_array_equal(got.embedding, emb)
    assert got.topk == [("gen.jazz.00001", 0.91)] and got.timestamps == r.timestamps and got.fd_mm == 0.12


def test_result_condition_is_optional_on_the_wire():
    from protocols.wire import Result

    silent = Result(run_id="run1", index=3, action="silence", clip=None, condition="silence")
    got = decode(encode(silent))
    assert (got.action, got.clip, got.condition) == ("silence", None, "silence")
    frames = encode(Result(run_id="run1", index=3, action="keep", clip="c"))
    assert b"condition" not in bytes(frames[0])  # without a block design nothing is added
    assert decode(frames).condition is None and decode(frames).dvars_pct is None  # optional, as condition
    assert decode(encode(Result(run_id="run1", index=3, dvars_pct=0.42))).dvars_pct == 0.42
    h = msgpack.unpackb(bytes(frames[0]), raw=False)
    h["condition"] = 7
    with pytest.raises(MessageError) as e:
        decode([msgpack.packb(h, use_bin_type=True), *frames[1:]])
    assert e.value.field == "header.condition"


def test_result_alerts_are_optional_and_bounded_on_the_wire():
    from protocols.wire import MAX_ALERT_CHARS, MAX_ALERTS, Result

    frames = encode(Result(run_id="run1", index=3))
    assert b"alerts" not in bytes(frames[0]) and decode(frames).alerts == []  # none: nothing on the wire
    said = ["trigger: input closed after 12 pulses: check the trigger box's cable", "disk: 3 message(s) ..."]
    assert decode(encode(Result(run_id="run1", index=3, alerts=said))).alerts == said
    h = msgpack.unpackb(bytes(frames[0]), raw=False)
    for bad, why in (([1], "string"), (["x" * MAX_ALERT_CHARS], "under"), (["a"] * (MAX_ALERTS + 1), "at most"),
                     ("one", "a list")):
        h["alerts"] = bad
        with pytest.raises(MessageError, match=why) as e:
            decode([msgpack.packb(h, use_bin_type=True)])
        assert e.value.field == "header.alerts"


@pytest.mark.parametrize("key", ["tsnr", "tsnr_training"])
def test_result_tsnr_is_optional_and_finite_on_the_wire(key):
    from protocols.wire import Result

    got = decode(encode(Result(run_id="run1", index=30, **{key: 41.5})))
    assert getattr(got, key) == 41.5 and isinstance(getattr(got, key), float)
    frames = encode(Result(run_id="run1", index=3))  # a run's first volumes: no figure yet
    h = msgpack.unpackb(bytes(frames[0]), raw=False)
    assert key not in h and getattr(decode(frames), key) is None
    h[key] = 40  # an integer from another sender is a number
    assert getattr(decode([msgpack.packb(h, use_bin_type=True), *frames[1:]]), key) == 40.0
    for bad, why in (("x", "a number"), (math.inf, "finite"), (math.nan, "finite"), (True, "boolean")):
        h[key] = bad
        with pytest.raises(MessageError, match=why) as e:
            decode([msgpack.packb(h, use_bin_type=True), *frames[1:]])
        assert e.value.field == f"header.{key}"
