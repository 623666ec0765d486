"""Background work (scoring, fine-tuning) yields the CPU to clinicians' interactive requests.

MONAI Label runs scoring and training in child processes (``monailabel.interfaces.utils.app``);
there, and only there (never in the server process itself), the work lowers its scheduling
priority, so on a shared CPU the server's inference threads are served first.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

BACKGROUND_NICENESS = 10


def is_background_child() -> bool:
    """Started by MONAI Label as ``python -m monailabel.interfaces.utils.app -m <method>``?"""
    started_as = os.path.normpath(sys.argv[0] if sys.argv else "")
    return started_as.endswith(os.path.join("monailabel", "interfaces", "utils", "app.py"))


def yield_to_interactive(what: str, niceness: int = BACKGROUND_NICENESS) -> bool:
    """Lower this process's priority if it is a background child of the server; True if it did."""
    if not is_background_child():
        return False
    try:
        os.nice(niceness)
    except OSError as err:
        logger.warning("%s: could not lower priority (%s)", what, err)
        return False
    logger.info("%s runs at lower priority (nice +%d) than interactive requests", what, niceness)
    return True
