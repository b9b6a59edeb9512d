"""Writing to the spool's disk: files that are there whole or not at all, and a full disk
told apart from the other OS errors (it is waited out, they are failures).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

from manas_infer.data.derived import fsync_dir


def write_synced(path: Path, data: bytes) -> None:
    """``data`` in a new file at ``path``, flushed to the disk; nothing left if it fails."""
    try:
        with open(path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        path.unlink(missing_ok=True)  # a full disk must not leave the half-written copy
        raise


def write_atomically(path: Path, data: bytes) -> None:
    """Temporary file beside ``path``, fsync, rename, fsync the folder: all or nothing."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    write_synced(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def disk_full_reason(exc: BaseException | None) -> str:
    """The OS's words for the full disk (not the wrapping message with its long path)."""
    cause = exc
    while cause is not None and not (isinstance(cause, OSError) and cause.strerror):
        cause = cause.__cause__ or cause.__context__
    return cause.strerror if isinstance(cause, OSError) else str(exc)


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether an error is (or was caused by) a full disk or quota: transient, unlike the
    other OS errors. Follows the cause chain (the series writer wraps its OSError)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
