"""Simulators: first-person dashcam envs on highway-env, experts, CARLA backend."""
