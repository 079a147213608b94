"""A child of `invmesh up` never outlives it: should up die without stopping its children
(SIGKILL, the OOM killer), Linux sends each of them SIGTERM, and it shuts down as usual
instead of holding its port as an orphan that the next `invmesh up` would find in the way.

A one-shot command (migrate, keys, users) ends at once on SIGTERM, as on Ctrl-C, also as PID 1
of a container, where the kernel gives a signal without a handler no default action."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from types import FrameType
from typing import NoReturn

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


def stop_on_sigterm() -> None:
    """SIGTERM ends this process with status 143 (128 + 15), its open work rolled back as on
    Ctrl-C: without a handler, Python as PID 1 would ignore it and `podman stop` or the kubelet
    would wait out the grace period, then kill it."""
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: FrameType | None) -> NoReturn:
    print("invmesh: stopped by SIGTERM", file=sys.stderr)
    raise SystemExit(128 + signum)
