"""Scripted behaviour policies that span the reward/cost plane, one knob per episode.

`aggressiveness` in [0, 1] moves an episode's driver from cautious (slow, well inside the safety
boundaries: cost 0, modest reward) to reckless (fast, over the speed limit and across the
boundaries: high reward, high cost). All controllers are vectorised over a batch of episodes that
run in lockstep; each call is one time step.

What costs in bullet-safety-gym (read from its source):
  Run tasks:    cost 1 per step when |y| > 2 or the planar speed exceeds the agent's limit
                (Ball 2.5, Car 1.5). Reward is progress along +x.
  Circle tasks: cost 1 per step when |x| > 6. Reward favours running clockwise on the radius-7
                circle, fast, so the best circle crosses both boundaries.
Observations (first entries): Ball [0.1 x, 0.1 y, 0.2 vx, 0.2 vy, ...];
Car [0.1 x, 0.1 y, vx, vy, sin yaw, cos yaw, ...]; the car drives along its body's -x axis, so
its heading is yaw + pi, forward throttle is a negative action[0] and a positive steering action
turns it clockwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from saferule_core.errors import TaskError
from saferule_core.tasks.spec import TaskSpec

# obs[B, obs_dim] -> actions[B, act_dim]; called once per time step, in order.
BehaviourPolicy = Callable[[NDArray[Any]], NDArray[Any]]

SUPPORTED_TASKS: tuple[str, ...] = ("BallRun", "CarRun", "BallCircle", "CarCircle")
RUN_HALF_WIDTH = 2.0        # |y| beyond this costs (Run tasks)
CIRCLE_RADIUS = 7.0         # the circle the Circle reward is centred on
SPEED_LIMIT = {"Ball": 2.5, "Car": 1.5}
CAR_SPEED_PER_THROTTLE = 3.4  # steady-state speed of the race car at |action[0]| = 1
SAFE_SHARE = 0.4            # aggressiveness below this stays safe by design
RECKLESS_CRUISE_MAX = 1.15  # reckless drivers' cruise speed, as a multiple of the speed limit, is below this
CIRCLE_MAX_SPEED = {"Ball": 7.0, "Car": 3.0}
# the cautious circle's radius range; the car turns wide, so its circle stays nearer the clip lines
SAFE_CIRCLE_RADIUS = {"Ball": (5.5, 7.0), "Car": (4.5, 6.0)}
BARRIER_GAIN = {"Ball": 1.0, "Car": 0.5}  # 1/s; the car needs room to turn


@dataclass(frozen=True)
class RunKnobs:
    """Per-episode settings of the Run driver (arrays of length B)."""

    cruise_speed: NDArray[Any]
    burst_speed: NDArray[Any]
    burst_start: NDArray[Any]      # step at which the over-the-limit burst begins
    burst_stop: NDArray[Any]
    lane: NDArray[Any]             # target y outside the burst (inside the boundaries)
    burst_lane: NDArray[Any]       # target y during the burst (across the boundary for reckless drivers)
    noise: NDArray[Any]            # std of Gaussian action noise


@dataclass(frozen=True)
class CircleKnobs:
    """Per-episode settings of the Circle driver (arrays of length B)."""

    radius: NDArray[Any]
    x_clip: NDArray[Any]           # outside the burst the driver keeps |x| below this
    speed: NDArray[Any]
    burst_x_clip: NDArray[Any]     # during the burst: wider clip lines, full speed
    burst_speed: NDArray[Any]
    burst_start: NDArray[Any]
    burst_stop: NDArray[Any]
    noise: NDArray[Any]


def _lerp(lo: float, hi: float, t: NDArray[Any]) -> NDArray[Any]:
    return lo + (hi - lo) * t


def _jitter(u: NDArray[Any], rng: np.random.Generator) -> NDArray[Any]:
    return np.clip(u + rng.normal(0.0, 0.25, size=u.shape[0]), 0.0, 1.0)


def _burst_window(share: NDArray[Any], episode_len: int, rng: np.random.Generator) -> tuple[NDArray[Any], NDArray[Any]]:
    """A window covering `share` of the episode at a random place: (start, stop) steps."""
    length = np.round(share * episode_len).astype(np.int64)
    start = (rng.uniform(size=share.shape[0]) * (episode_len - length + 1)).astype(np.int64)
    return start, start + length


def run_knobs(agent: str, aggressiveness: NDArray[Any], episode_len: int, rng: np.random.Generator) -> RunKnobs:
    """Cautious drivers cruise below the limit in their lane; reckless ones cruise at up to just over
    it and add a burst over the limit lasting a growing share of the episode, drifting across the
    boundary during it and steering back into a lane inside it afterwards (so the data shows
    recoveries from unsafe states, not only drivers that stay unsafe)."""
    a = np.asarray(aggressiveness, dtype=np.float64)
    n = a.shape[0]
    limit = SPEED_LIMIT[agent]
    safe = a < SAFE_SHARE
    u_safe = np.clip(a / SAFE_SHARE, 0.0, 1.0)
    u_risk = np.clip((a - SAFE_SHARE) / (1.0 - SAFE_SHARE), 0.0, 1.0)
    top_factor = 4.0 if agent == "Ball" else 2.0
    # reckless drivers vary independently in cruise and burst speed, so that episodes fill the
    # area below the reward/cost frontier instead of lying on one curve
    # (reckless cruise speeds reach just over the limit, so the data labels the speeds on both
    # sides of it: a learner that drives at the limit must know where cost starts)
    cruise = np.where(safe, _lerp(0.45, 0.95, u_safe), rng.uniform(0.6, RECKLESS_CRUISE_MAX, size=n)) * limit
    burst = _lerp(1.3, top_factor, _jitter(u_risk, rng)) * limit
    burst_start, burst_stop = _burst_window(u_risk, episode_len, rng)
    side = rng.choice([-1.0, 1.0], size=n)
    lane = side * rng.uniform(0.0, 0.8, size=n)
    burst_drift = np.where(safe, np.abs(lane),
                           _lerp(0.8, 1.6 * RUN_HALF_WIDTH, u_risk**2) + rng.uniform(-0.3, 0.3, size=n))
    return RunKnobs(cruise_speed=cruise, burst_speed=burst, burst_start=burst_start,
                    burst_stop=burst_stop, lane=lane, burst_lane=side * burst_drift,
                    noise=rng.uniform(0.05, 0.25, size=n))


def circle_knobs(agent: str, aggressiveness: NDArray[Any], episode_len: int,
                 rng: np.random.Generator) -> CircleKnobs:
    """Cautious drivers run a circle clipped inside the x-limits, faster the less cautious they
    are; reckless ones add a burst on the full radius-7 circle, across the limits, lasting a
    growing share of the episode."""
    a = np.asarray(aggressiveness, dtype=np.float64)
    n = a.shape[0]
    u_safe = np.clip(a / SAFE_SHARE, 0.0, 1.0)
    u_risk = np.clip((a - SAFE_SHARE) / (1.0 - SAFE_SHARE), 0.0, 1.0)
    burst_start, burst_stop = _burst_window(u_risk, episode_len, rng)
    max_speed = CIRCLE_MAX_SPEED[agent]
    return CircleKnobs(radius=_lerp(*SAFE_CIRCLE_RADIUS[agent], u_safe),
                       x_clip=_lerp(4.5, 5.4, u_safe) + rng.uniform(-0.15, 0.15, size=n),
                       speed=_lerp(0.3, 0.85, u_safe) * max_speed * rng.uniform(0.9, 1.1, size=n),
                       burst_x_clip=_lerp(6.5, 8.0, u_risk),
                       burst_speed=_lerp(0.75, 1.0, _jitter(u_risk, rng)) * max_speed,
                       burst_start=burst_start, burst_stop=burst_stop,
                       noise=rng.uniform(0.05, 0.25, size=n))


def _wrap(angle: NDArray[Any]) -> NDArray[Any]:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def _planar_state(agent: str, obs: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """(positions [B, 2], velocities [B, 2]) in metres and m/s."""
    pos = 10.0 * obs[:, 0:2]
    vel = obs[:, 2:4] * (5.0 if agent == "Ball" else 1.0)
    return pos.astype(np.float64), vel.astype(np.float64)


def _drive(agent: str, obs: NDArray[Any], vel: NDArray[Any], desired_vel: NDArray[Any]) -> NDArray[Any]:
    """Actions that steer the agent's planar velocity towards `desired_vel` [B, 2]."""
    if agent == "Ball":  # force control in world coordinates
        return np.clip(1.5 * (desired_vel - vel), -1.0, 1.0)
    heading = np.arctan2(-obs[:, 4], -obs[:, 5])
    desired_heading = np.arctan2(desired_vel[:, 1], desired_vel[:, 0])
    heading_error = _wrap(desired_heading - heading)
    # slow down while the heading is far off: a fast car turns wide and overshoots
    desired_speed = np.linalg.norm(desired_vel, axis=1) * np.clip(np.cos(heading_error), 0.3, 1.0)
    forward_speed = np.einsum("bi,bi->b", vel, np.stack([np.cos(heading), np.sin(heading)], axis=1))
    throttle = desired_speed / CAR_SPEED_PER_THROTTLE + 0.5 * (desired_speed - forward_speed)
    steer = -2.0 * heading_error
    return np.clip(np.stack([-throttle, steer], axis=1), -1.0, 1.0)


class RunDriver:
    """Drives along +x in a lane, at cruise speed except during the burst window."""

    def __init__(self, agent: str, knobs: RunKnobs, rng: np.random.Generator) -> None:
        self.agent, self.knobs, self.rng = agent, knobs, rng
        self.step = 0

    def __call__(self, obs: NDArray[Any]) -> NDArray[Any]:
        k = self.knobs
        pos, vel = _planar_state(self.agent, obs)
        bursting = (self.step >= k.burst_start) & (self.step < k.burst_stop)
        speed = np.where(bursting, k.burst_speed, k.cruise_speed)
        lane = np.where(bursting, k.burst_lane, k.lane)
        lookahead = 2.0
        lateral = np.clip((lane - pos[:, 1]) / lookahead, -1.0, 1.0) * speed
        if self.agent == "Ball":
            lateral = lateral - 0.8 * vel[:, 1]  # damp the sideways swing of the force-driven ball
        forward = np.sqrt(np.maximum(speed**2 - lateral**2, 0.25 * speed**2))
        actions = _drive(self.agent, obs, vel, np.stack([forward, lateral], axis=1))
        self.step += 1
        return _noisy(actions, k.noise, self.rng)


class CircleDriver:
    """Runs clockwise round the origin, braking its x-velocity near the clip lines |x| = x_clip
    so that outside the burst it never reaches the cost boundary."""

    def __init__(self, agent: str, knobs: CircleKnobs, rng: np.random.Generator) -> None:
        self.agent, self.knobs, self.rng = agent, knobs, rng
        self.step = 0

    def __call__(self, obs: NDArray[Any]) -> NDArray[Any]:
        k = self.knobs
        pos, vel = _planar_state(self.agent, obs)
        bursting = (self.step >= k.burst_start) & (self.step < k.burst_stop)
        radius = np.where(bursting, CIRCLE_RADIUS, k.radius)
        x_clip = np.where(bursting, k.burst_x_clip, k.x_clip)
        speed = np.where(bursting, k.burst_speed, k.speed)
        dist = np.maximum(np.linalg.norm(pos, axis=1), 1e-6)
        radial = pos / dist[:, None]
        tangent = np.stack([radial[:, 1], -radial[:, 0]], axis=1)  # clockwise
        # steer back onto the radius, but never so hard that the driver leaves the tangent by
        # more than ~30 degrees (the car cannot turn tighter without overshooting)
        correction = np.clip(radius - dist, -0.6 * speed, 0.6 * speed)
        desired = speed[:, None] * tangent + correction[:, None] * radial
        # barrier: the velocity towards a clip line is bounded by the distance left to it
        gain = BARRIER_GAIN[self.agent]
        desired[:, 0] = np.clip(desired[:, 0], gain * (-x_clip - pos[:, 0]), gain * (x_clip - pos[:, 0]))
        actions = _drive(self.agent, obs, vel, desired)
        self.step += 1
        return _noisy(actions, k.noise, self.rng)


def _noisy(actions: NDArray[Any], noise: NDArray[Any], rng: np.random.Generator) -> NDArray[Any]:
    jitter = rng.standard_normal(actions.shape) * noise[:, None]
    return np.clip(actions + jitter, -1.0, 1.0).astype(np.float32)


def make_behaviour(task: TaskSpec, aggressiveness: NDArray[Any], rng: np.random.Generator) -> BehaviourPolicy:
    """A fresh batched driver for episodes with the given aggressiveness (one per env row)."""
    if task.name not in SUPPORTED_TASKS:
        raise TaskError(f"no scripted behaviour family for task {task.name!r}; "
                        f"supported: {', '.join(SUPPORTED_TASKS)}")
    agent = "Ball" if task.name.startswith("Ball") else "Car"
    if task.name.endswith("Run"):
        return RunDriver(agent, run_knobs(agent, aggressiveness, task.episode_len, rng), rng)
    knobs = circle_knobs(agent, aggressiveness, task.episode_len, rng)
    return CircleDriver(agent, knobs, rng)
