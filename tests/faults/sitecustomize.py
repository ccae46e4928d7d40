"""Fault injection for tests that start real ``kdbench`` processes.

Put this folder first on ``PYTHONPATH`` of a child process; Python imports it at start-up
in that process and in every worker it spawns.  It does nothing unless asked:

- ``KDBENCH_FAULT_ENOSPC=<regex>``: ``os.fsync`` of a file whose path matches raises
  ``OSError(ENOSPC)`` (where a full disk surfaces for buffered writes), after
  ``KDBENCH_FAULT_ENOSPC_AFTER`` (default 0) matching fsyncs in that process succeeded.
"""

import errno
import os
import re

_pattern = os.environ.get("KDBENCH_FAULT_ENOSPC")
if _pattern:
    _regex = re.compile(_pattern)
    _allowed = [int(os.environ.get("KDBENCH_FAULT_ENOSPC_AFTER", "0"))]
    _fsync = os.fsync

    def _full_fsync(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
        except OSError:
            path = ""
        if _regex.search(path):
            if _allowed[0] <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            _allowed[0] -= 1
        return _fsync(fd)

    os.fsync = _full_fsync
