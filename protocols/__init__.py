"""The contracts of brain2music-rt: wire messages, record formats, validation.

Imports only numpy and msgpack, so any process (a scanner-side sender, a
feedback display) can speak the protocol without the rest of the system.
The specification is ``protocols/README.md``.
"""

from .errors import MessageError, ProtocolError, RecordError
from .record import RecordLog, scan_records
from .session import SessionRecord, list_runs, load_run
from .wire import (
    ALLOWED_DTYPES,
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Heartbeat,
    Reject,
    Result,
    RunEnd,
    RunStart,
    VolumeMessage,
    decode,
    encode,
)

__all__ = [
    "ALLOWED_DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "Heartbeat",
    "MessageError",
    "ProtocolError",
    "RecordError",
    "RecordLog",
    "Reject",
    "Result",
    "RunEnd",
    "RunStart",
    "SessionRecord",
    "VolumeMessage",
    "decode",
    "encode",
    "list_runs",
    "load_run",
    "scan_records",
]
