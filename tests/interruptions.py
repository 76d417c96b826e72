"""Interruptions for the resume tests: a SIGTERM arriving at a chosen batch boundary, a kill after an epoch."""

from __future__ import annotations

from entropy_ft.training.preemption import StopFlag


class StopAfter(StopFlag):
    """Asks to stop at the ``n``-th batch boundary, as a SIGTERM arriving then would."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    @property
    def requested(self) -> bool:
        self.left -= 1
        return self.left <= 0

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


class Killed(Exception):
    pass


def kill_after_epoch(n: int):
    """An ``on_epoch_end`` callback that dies right after epoch ``n``'s checkpoint, as a killed process would."""
    def on_epoch_end(epoch: int, _metrics: dict) -> None:
        if epoch == n:
            raise Killed()
    return on_epoch_end
