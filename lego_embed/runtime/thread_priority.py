"""How the runtime's own threads ask the OS to stay out of the game's way.

On Linux a thread under SCHED_BATCH is never let preempt a running thread when it is woken:
it takes an idle core, or waits for the scheduler's next tick. A game's main thread that
wakes the NPC model's threads (an engine event that opens a gap, a new request) then keeps
its core, instead of losing it to the thread it woke for the rest of that thread's turn.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def yield_to_engine_threads() -> bool:
    """Puts the calling thread under SCHED_BATCH (Linux; a per-thread setting). Returns whether
    it did: False where the OS has no such policy or refuses it (logged; the thread goes on
    under its policy)."""
    if not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as error:
        logger.warning("the thread stays under its scheduling policy: SCHED_BATCH refused (%s)",
                       error)
        return False
    return True
