"""Simulators: first-person dashcam envs on highway-env, experts, CARLA backend.

Importing this package registers the gymnasium ids below. Registration only names the
entry points; nothing heavy (and never `carla`) is imported until `gym.make`.
"""

from gymnasium.envs.registration import register, registry

ENV_IDS = (
    "liquid_drive/Racetrack-v0",
    "liquid_drive/LaneKeeping-v0",
    "liquid_drive/RandomRoad-v0",
)
CARLA_ENV_ID = "liquid_drive/Carla-v0"

_ENTRY_POINTS = {
    "liquid_drive/Racetrack-v0": "envs.highway:RacetrackEnv",
    "liquid_drive/LaneKeeping-v0": "envs.highway:LaneKeepingEnv",
    "liquid_drive/RandomRoad-v0": "envs.highway:RandomRoadEnv",
    CARLA_ENV_ID: "envs.carla_env:CarlaEnv",
}

for _id, _entry in _ENTRY_POINTS.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry)
