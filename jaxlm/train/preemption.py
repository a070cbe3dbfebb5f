"""Stop cleanly on SIGTERM / SIGINT: finish the step, save, exit 0.

Single process: a handler sets a flag read at the next step boundary (a second SIGINT
interrupts at once). Multi-process: JAX's preemption service, started by
``jax.distributed.initialize``, catches SIGTERM, and orbax's ``reached_preemption`` makes
every process stop at the same step, so their checkpoints agree.
"""

from __future__ import annotations

import signal

import jax


class PreemptionGuard:
    def __init__(self, manager):
        self.manager = manager
        self.signal_name: str | None = None
        self.multiprocess = jax.process_count() > 1
        signals = [] if self.multiprocess else [signal.SIGTERM, signal.SIGINT]
        self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the step
        self.signal_name = signal.Signals(signum).name

    def reached(self, step: int) -> bool:
        if self.multiprocess and self.manager.reached_preemption(step):
            self.signal_name = "SIGTERM"
        return self.signal_name is not None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
