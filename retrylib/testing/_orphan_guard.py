"""Run a Python module as ``__main__`` and exit when the parent process goes away.

``python _orphan_guard.py MODULE ARGS...``: the parent holds the write end of this
process's stdin. When the parent dies, however it dies (SIGKILL included), the pipe
reaches EOF and this process exits, so a model server never outlives its owner. Linux's
PR_SET_PDEATHSIG cannot do this reliably: it fires when the *thread* that started the
child exits, and servers are often started from worker threads (``asyncio.to_thread``).

Run by path, not as ``retrylib.testing._orphan_guard``: importing the package would import
litellm, which costs seconds at every server start.
"""

import os
import runpy
import sys
import threading


def _watch_parent() -> None:
    try:
        while sys.stdin.buffer.read(1):
            pass
    except (OSError, ValueError):
        pass
    os._exit(0)  # the parent is gone: end now, from this thread


if __name__ == "__main__":
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    threading.Thread(target=_watch_parent, name="orphan-guard", daemon=True).start()
    runpy.run_module(module, run_name="__main__", alter_sys=True)
