"""Linux inotify through ctypes: which files in a folder were closed after writing or moved in.

Used by the export-folder watcher to react the moment the scanner closes a
file, instead of at the next directory scan. Network mounts (SMB, NFS)
usually deliver no events for writes made on another machine, so the
watcher keeps scanning as well; this only makes local exports faster.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct

__all__ = ["FolderEvents"]

log = logging.getLogger("b2m.scanner.watch")

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_Q_OVERFLOW = 0x00004000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)


class FolderEvents:
    """Names of files closed after writing (or moved in) in one folder.

    Parameters
    ----------
    folder : path-like

    Attributes
    ----------
    fd : int or None
        The inotify descriptor to wait on (readable when events are queued);
        None where inotify is not available, and then :meth:`read` returns
        nothing.
    overflowed : bool
        The kernel queue overflowed at least once (events were dropped; the
        folder scans still find every file).
    """

    def __init__(self, folder):
        self.fd: int | None = None
        self.overflowed = False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            wd = libc.inotify_add_watch(fd, os.fsencode(os.fspath(folder)), _IN_CLOSE_WRITE | _IN_MOVED_TO)
            if wd < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, f"inotify_add_watch({folder})")
        except (OSError, AttributeError) as e:  # not Linux, or no inotify left (max_user_watches)
            log.info("no inotify on %s (%s): finding files by folder scans only", folder, e)
            return
        self.fd = fd

    def read(self) -> list[str]:
        """The names reported since the last call (may repeat a name)."""
        if self.fd is None:
            return []
        names = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            pos = 0
            while pos + _HEADER.size <= len(buf):
                _, mask, _, length = _HEADER.unpack_from(buf, pos)
                pos += _HEADER.size
                if mask & _IN_Q_OVERFLOW:
                    self.overflowed = True
                elif length:
                    names.append(os.fsdecode(buf[pos:pos + length].rstrip(b"\0")))
                pos += length

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
