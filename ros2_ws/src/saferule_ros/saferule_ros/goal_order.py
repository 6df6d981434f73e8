"""Unlearn goals admitted in the order the action server accepted them (see AcceptanceOrder)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class AcceptanceOrder:
    """Admits accepted Unlearn goals into the queue in the order they were accepted.

    rclpy sends a goal's acceptance before it runs the accepted callback, so a client that sends
    its next goal as soon as the first is accepted could, on a multi-threaded executor, see the
    second one admitted (and run) first. Each goal takes a ticket when the goal callback accepts it;
    its accepted callback admits it only once every earlier ticket has been admitted. A ticket
    whose goal never gets that far (the goal response could not be sent) holds the others back
    for at most `patience_s`.
    """

    def __init__(self, patience_s: float = 2.0) -> None:
        self.patience_s = patience_s
        self._changed = threading.Condition()
        self._tickets: list[object] = []       # accepted goal messages, oldest first

    def take_ticket(self, goal: object) -> None:
        with self._changed:
            self._tickets.append(goal)

    @contextmanager
    def turn(self, goal: object) -> Iterator[None]:
        """Wait until `goal` is the oldest accepted goal not yet admitted; admit it in the block."""
        def its_turn() -> bool:
            return self._tickets[0] is goal if any(t is goal for t in self._tickets) else True

        with self._changed:
            if not self._changed.wait_for(its_turn, timeout=self.patience_s):
                while self._tickets and self._tickets[0] is not goal:   # goals that never got to their turn
                    self._tickets.pop(0)
        try:
            yield
        finally:
            with self._changed:
                self._tickets = [t for t in self._tickets if t is not goal]
                self._changed.notify_all()
