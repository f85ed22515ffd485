"""Worker processes of a build that end with the process that started them."""

from __future__ import annotations

import os
import threading
import time

_WATCHING: set[int] = set()


def die_with_parent(parent_pid: int, interval_s: float = 0.2) -> None:
    """In a worker process started by ``parent_pid``: exit as soon as that parent is gone.

    A worker pool's processes outlive a parent killed with SIGKILL (or SIGTERM, which ends
    Python without cleanup): they would finish their recording, then sit idle holding their
    memory. A daemon thread checks every ``interval_s`` seconds whether the worker was handed
    to another parent (its own died) and ends the process then. Nothing happens in the parent
    itself (``jobs=1`` runs there) or in a worker that another process started (Dask).
    """
    if os.getpid() == parent_pid or parent_pid in _WATCHING or os.getppid() != parent_pid:
        return
    _WATCHING.add(parent_pid)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="brainlm-die-with-parent", daemon=True).start()
