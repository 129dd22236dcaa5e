"""Signals during a run: the first SIGINT/SIGTERM ends it at the end of the step (checkpointed), a second at
once; SIGTERM ends it as `Terminated` (the CLI's exit code 143)."""
from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """The run was stopped by SIGTERM (a scheduler's, `kill`): as Ctrl-C, a KeyboardInterrupt; the CLI exits 143."""


def interruption(terminated: bool, message: str) -> KeyboardInterrupt:
    """What ends a run stopped by a signal: Terminated, its message led by "SIGTERM", or a KeyboardInterrupt."""
    return Terminated(f"SIGTERM; {message}" if message else "SIGTERM") if terminated else KeyboardInterrupt(message)


def _interrupt_now(signum, frame):
    raise interruption(signum == signal.SIGTERM, "")


class InterruptAtStepEnd:
    """While installed, the first SIGINT or SIGTERM only sets `requested` (to the signal's number): the loop then
    checkpoints the step it was in once that step is complete (a step cut in half would save a D updated and a G
    not). A second one interrupts at once, with no new checkpoint (the last one is intact: checkpoints are written
    by rename). Only signals left at Python's defaults are taken (a handler someone else installed is theirs)."""

    DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def __init__(self, at_once: bool = False):
        """at_once: every signal interrupts at once (a run setting up, which has no step to end: SIGTERM's
        default would kill the process, leaving what the run had written)."""
        self.requested, self.previous = 0, {}
        if threading.current_thread() is threading.main_thread():
            for sig, default in self.DEFAULTS.items():
                if signal.getsignal(sig) is default:
                    self.previous[sig] = signal.signal(sig, _interrupt_now if at_once else self._handle)

    def _handle(self, signum, frame):
        self.requested = signum
        signal.signal(signum, _interrupt_now)

    def interrupt(self, message: str) -> KeyboardInterrupt:
        """The exception that ends the run for the signal requested, with `message`."""
        return interruption(self.requested == signal.SIGTERM, message)

    def at_once(self):
        """From here on (the final evaluation) a signal interrupts at once instead of at the step's end."""
        for sig in self.previous:
            signal.signal(sig, _interrupt_now)

    def restore(self):
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous = {}
