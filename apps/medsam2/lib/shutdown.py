"""The server is stopping: long-lived responses end now, so a SIGTERM is not held up by open tabs.

uvicorn, on SIGTERM or Ctrl+C, stops accepting and then waits for every open response to finish,
without a time limit. The page's event stream (``GET /medsam2/events``) never finishes by itself
while its tab is open, so a restart (systemd, the replica runner, an operator's Ctrl+C) waited
for the stream's ten-minute reconnect, or for a SIGKILL. :func:`install` chains a handler in front
of uvicorn's that sets :data:`STOPPING`; streams end within a second of it and the browser's
EventSource reconnects to whichever server answers next.
"""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)

STOPPING = threading.Event()
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install() -> None:
    """Chain :data:`STOPPING` in front of the handlers uvicorn installed (call in the server's main
    thread, after uvicorn started serving: an app's start-up is)."""
    for signum in _SIGNALS:
        previous = signal.getsignal(signum)
        if getattr(previous, "sets_stopping", False):
            continue  # installed already (the app initialised twice in one process)

        def handler(sig, frame, previous=previous):
            STOPPING.set()
            if callable(previous):
                previous(sig, frame)
            elif previous == signal.SIG_DFL:  # nobody else handles it: what it would have done
                signal.signal(sig, signal.SIG_DFL)
                signal.raise_signal(sig)

        handler.sets_stopping = True
        try:
            signal.signal(signum, handler)
        except ValueError as err:  # not the main thread: streams then end at their own time limit
            logger.warning("stop signal not watched (%s): open event streams may delay a shutdown", err)
            return

