"""How many CPU threads a command gives torch: the cores this process may use, fewer when the machine is busy.

torch's default (every core) is right on an idle machine and very wrong on a shared one: on 2 cores with one other
busy process, two processes that each use both cores thrash each other (``make demo`` took 72 minutes instead of
about 4). The rule: ``threads = max(1, usable cores - round(1-minute load average))``, where the load average
counts the other runnable processes on this machine, so a process started next to one busy job on 2 cores takes 1
thread. ``--threads N`` (or ``model.threads``) overrides it; sweeps give each cell 1 thread.
"""

from __future__ import annotations

import os

# The variables that BLAS/OpenMP libraries read at start-up: set for child processes (sweep cells, graders).
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which container limits shrink), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """The thread count for a new compute process under the rule above (arguments for tests)."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, cores - round(load)))


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``None`` or 0 = ``default_threads()``); returns the number used."""
    import torch

    n = threads if threads else default_threads()
    if n < 0:
        raise ValueError(f"threads must be >= 0 (0 = automatic), got {n}")
    torch.set_num_threads(n)
    return n
