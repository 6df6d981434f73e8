from __future__ import annotations

import torch

from saferule_core.algos.lagrangian import PIDGains, PIDLagrangian


def test_multiplier_rises_while_cost_stays_above_the_threshold() -> None:
    pid = PIDLagrangian(threshold=1.0)
    values = [float(pid.update(torch.full((16,), 3.0))) for _ in range(50)]
    assert values[0] > 0
    assert all(b > a for a, b in zip(values, values[1:]))        # the integral keeps growing
    # First step: KP * e + KI * e + KD * e with e = 2.
    g = PIDGains()
    assert abs(values[0] - 2.0 * (g.kp + g.ki + g.kd)) < 1e-6


def test_multiplier_is_never_negative_and_falls_back_when_cost_is_below() -> None:
    pid = PIDLagrangian(threshold=1.0, gains=PIDGains(kp=0.5, ki=0.1, kd=0.1))
    for _ in range(10):
        pid.update(torch.tensor([4.0]))
    high = float(pid.multiplier)
    lows = [float(pid.update(torch.tensor([-5.0]))) for _ in range(30)]
    assert all(v >= 0.0 for v in lows)
    assert lows[-1] < high and lows[-1] == 0.0
    fresh = PIDLagrangian(threshold=1.0)
    assert float(fresh.update(torch.tensor([0.0]))) == 0.0


def test_state_round_trips_through_state_dict() -> None:
    pid = PIDLagrangian(threshold=0.5)
    for v in (2.0, 3.0, 1.0):
        pid.update(torch.tensor([v]))
    other = PIDLagrangian(threshold=0.5)
    other.load_state_dict(pid.state_dict())
    assert float(other.update(torch.tensor([2.0]))) == float(pid.update(torch.tensor([2.0])))
