"""The unlearning server's queue bookkeeping without DDS: acceptance order."""

from __future__ import annotations

import threading
import time

from saferule_ros.goal_order import AcceptanceOrder


def test_goals_are_admitted_in_the_order_they_were_accepted_even_when_callbacks_run_out_of_order() -> None:
    order = AcceptanceOrder(patience_s=5.0)
    first, second = object(), object()
    order.take_ticket(first)
    order.take_ticket(second)
    admitted: list[str] = []

    def admit(goal: object, name: str) -> None:
        with order.turn(goal):
            admitted.append(name)

    late_second = threading.Thread(target=admit, args=(second, "second"))
    late_second.start()            # the second goal's accepted callback runs first
    time.sleep(0.2)
    assert admitted == []          # it waits for the first
    admit(first, "first")
    late_second.join(timeout=5.0)
    assert admitted == ["first", "second"]


def test_a_ticket_whose_goal_never_arrives_holds_the_others_back_only_for_the_patience() -> None:
    order = AcceptanceOrder(patience_s=0.3)
    lost, next_goal = object(), object()
    order.take_ticket(lost)        # accepted, but its response could not be sent: no accepted callback
    order.take_ticket(next_goal)
    started = time.monotonic()
    with order.turn(next_goal):
        waited = time.monotonic() - started
    assert 0.25 <= waited < 2.0
    started = time.monotonic()
    later = object()
    order.take_ticket(later)
    with order.turn(later):        # the lost ticket is gone: no second wait
        assert time.monotonic() - started < 0.1


def test_a_goal_without_a_ticket_is_admitted_at_once() -> None:
    order = AcceptanceOrder(patience_s=5.0)
    order.take_ticket(object())    # someone else's, still waiting for its turn
    started = time.monotonic()
    with order.turn(object()):
        assert time.monotonic() - started < 0.1
