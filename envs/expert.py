"""Privileged expert: pure pursuit on the ego lane centre.

The expert reads the true state (pose, route position) rather than the image, as in
imitation-learning data collection. The target point lies `lookahead` metres ahead on
the lane centre (`Track.pose_at`, i.e. highway-env's `lane.position(s, 0)`); pure
pursuit turns the bearing to it into a path curvature, which is inverted through
highway-env's kinematic bicycle (heading rate = v sin(beta) / (L/2), beta =
atan(tan(delta)/2)) into a steering angle, then normalised to the action range.

DART noise (Laskey et al. 2017) is applied by the env (`config["dart_noise"]`): the
executed action is perturbed, the label `info["expert_steering"]` stays the expert's.
"""

from __future__ import annotations

import numpy as np

from envs.tracks import Track

VEHICLE_LENGTH_M = 5.0  # highway_env.vehicle.kinematics.Vehicle.LENGTH


def pure_pursuit(track: Track, route_s: float, position: np.ndarray, heading: float,
                 speed: float, max_steering_rad: float, lookahead_time_s: float = 0.45,
                 lookahead_min_m: float = 4.0) -> float:
    """Steering action in [-1, 1] that drives the car towards the lane centre ahead."""
    ld = max(lookahead_min_m, lookahead_time_s * abs(speed))
    target, _ = track.pose_at(route_s + ld)
    rel = target - position
    c, s = np.cos(heading), np.sin(heading)
    x = rel[0] * c + rel[1] * s  # forward
    y = -rel[0] * s + rel[1] * c  # right
    dist2 = x * x + y * y
    if dist2 < 1e-6:
        return 0.0
    kappa = 2.0 * y / dist2  # = 2 sin(alpha) / distance
    sin_beta = float(np.clip(kappa * VEHICLE_LENGTH_M / 2, -0.99, 0.99))
    delta = np.arctan(2.0 * np.tan(np.arcsin(sin_beta)))
    return float(np.clip(delta / max_steering_rad, -1.0, 1.0))


def expert_steering(env) -> float:
    """The expert's action for the env's current state (same as `info["expert_steering"]`)."""
    env = getattr(env, "unwrapped", env)
    return env.expert_action()
