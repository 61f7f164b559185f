"""When a safety driver takes over: the one definition of an intervention.

An intervention ends autonomous driving for a moment: the car is put back on its lane
centre (`DrivingEnv.recover`) and the drive goes on, as the paper counted manual
recoveries. Causes, checked in this order after every world step:

- ``collision``: the ego touched another vehicle or object (``info["collision"]``; an env
  that reports only ``crashed`` while still on the road counts as a collision);
- ``off_road``: the car's centre left the road (``info["on_road"]`` False);
- ``lane_invasion`` (``strict`` rule only): the car's edge is more than
  ``lane_invasion_m`` (default 0.5 m, about half the car in the next lane) past its own
  lane's line, on either side. The roads have two lanes: without this rule a car could
  drive in the oncoming lane and never be stopped, and on the right only the centre
  passing the road edge would count. A safety driver takes over long before that.

``lenient`` is the rule used by every report before the strict rule existed (collision or
off-road only); it stays available for comparison (``--intervention lenient``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RULES = ("strict", "lenient")
CAUSES = ("collision", "off_road", "lane_invasion")
DEFAULT_LANE_INVASION_M = 0.5
DEFAULT_LANE_WIDTH_M = 4.0  # highway-env's default lane width
DEFAULT_CAR_WIDTH_M = 2.0  # highway-env's Vehicle.WIDTH


def lane_invasion_depth(info: Mapping[str, Any]) -> float:
    """How far (m) the car's edge is past its own lane's line; negative while inside.

    ``info["lane_invasion_m"]`` when the env reports it, else computed from
    ``cross_track_m``, ``lane_width_m`` and ``car_width_m`` (highway-env defaults).
    """
    if "lane_invasion_m" in info:
        return float(info["lane_invasion_m"])
    cte = abs(float(info.get("cross_track_m", 0.0)))
    lane_w = float(info.get("lane_width_m", DEFAULT_LANE_WIDTH_M))
    car_w = float(info.get("car_width_m", DEFAULT_CAR_WIDTH_M))
    return cte + car_w / 2 - lane_w / 2


@dataclass(frozen=True)
class InterventionRule:
    """``strict`` (default) or ``lenient``; see the module docstring."""

    mode: str = "strict"
    lane_invasion_m: float = DEFAULT_LANE_INVASION_M

    def __post_init__(self) -> None:
        if self.mode not in RULES:
            raise ValueError(f"intervention rule {self.mode!r} does not exist; choose strict or lenient")
        if not (math.isfinite(self.lane_invasion_m) and self.lane_invasion_m >= 0):
            raise ValueError(f"lane_invasion_m must be a finite distance >= 0 m, got {self.lane_invasion_m!r}")

    def cause(self, info: Mapping[str, Any]) -> str | None:
        """The intervention cause after a world step, or None when the car drives on."""
        on_road = bool(info.get("on_road", True))
        if bool(info.get("collision", False)) or (bool(info.get("crashed", False)) and on_road):
            return "collision"
        if not on_road:
            return "off_road"
        if self.mode == "strict" and lane_invasion_depth(info) > self.lane_invasion_m:
            return "lane_invasion"
        return None

    def settings(self) -> dict[str, Any]:
        """What a report records about the rule."""
        out: dict[str, Any] = {"intervention": self.mode}
        if self.mode == "strict":
            out["lane_invasion_m"] = self.lane_invasion_m
        return out


STRICT = InterventionRule("strict")
LENIENT = InterventionRule("lenient")
