"""A child of `invmesh up` never outlives it: should up die without stopping its children
(SIGKILL, the OOM killer), Linux sends each of them SIGTERM, and it shuts down as usual
instead of holding its port as an orphan that the next `invmesh up` would find in the way."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# The environment variable through which up tells its children its pid.
SUPERVISOR_PID = "INVMESH_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stop_with_supervisor() -> None:
    """Asks for SIGTERM when the supervisor (this process's parent) dies; nothing elsewhere."""
    supervisor = os.environ.get(SUPERVISOR_PID)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not allowed here (a sandbox): the child lives on as before
    if os.getppid() != int(supervisor):  # up died before the request took hold
        os.kill(os.getpid(), signal.SIGTERM)
