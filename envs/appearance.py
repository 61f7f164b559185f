"""How a road looks, drawn per episode from a seed, with a train/test split.

Why a split of appearance: an agent judged on the looks it trained on says little about
roads it has never seen. Each episode draws one `Appearance` from an *appearance seed*:
four categorical factors (surface, centre-line style, centre-line colour, shoulder) and a
time-of-day band make a *combination*; everything else (colours, wear, lane width, the
camera mount, sun azimuth, clutter) is continuous and drawn from the seed's generator.

The split (`split="train"` / `"test"`):

* combinations: the test split holds the combinations whose level indices sum to a
  multiple of 4 (`is_test_combination`), 1/4 of all; every single level (e.g. "yellow",
  "kerb", "dusk") still occurs in both splits, so the test asks for new *combinations* of
  known parts, never for a part the agent has not seen;
* seeds: train appearance seeds are even, test seeds odd (as the road seeds of
  `RandomRoad-v0`), so no continuous draw of the test split is ever made in training.
`split=None` (Racetrack, LaneKeeping by default) draws from every combination and seed.

All ranges live in `APPEARANCE_RANGES` / `default_appearance_options()` and are documented
in docs/simulator.md; `validate_options` rejects values outside them with the valid range.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SPLITS = ("train", "test")

SURFACES = ("new", "worn", "patched", "cracked")
MARKING_STYLES = ("dashed", "solid", "double")  # the centre line between the two lanes
MARKING_COLOURS = ("white", "yellow")  # of the centre line (edge lines are white)
SHOULDERS = ("grass", "gravel", "kerb", "pavement")
TIME_BANDS = ("dawn", "morning", "noon", "afternoon", "dusk")  # 5 equal bands of [0, 1]

FACTORS = {
    "surfaces": SURFACES,
    "marking_styles": MARKING_STYLES,
    "marking_colours": MARKING_COLOURS,
    "shoulders": SHOULDERS,
    "time_bands": TIME_BANDS,
}

#: Numeric options: (lowest, highest) allowed; a [lo, hi] option must lie inside.
APPEARANCE_RANGES: dict[str, tuple[float, float]] = {
    "lane_width_m": (3.0, 4.5),  # random roads when config lane_width_m is None
    "time_of_day": (0.0, 1.0),  # 0 = dawn, 0.5 = noon, 1 = dusk
    "marking_wear": (0.0, 1.0),  # 0 fresh paint .. 1 almost gone
    "camera_height_jitter_m": (0.0, 0.1),  # +- around camera height_m
    "camera_pitch_jitter_deg": (0.0, 2.0),  # +- around camera pitch_deg
    "camera_roll_jitter_deg": (0.0, 1.0),  # +- (the nominal roll is 0)
    "overcast_prob": (0.0, 1.0),  # overcast sky: no sun, no cast shadows
    "clutter": (0.0, 3.0),  # multiplier of the extra roadside clutter (rocks, posts, buildings)
}

#: Options given as [lo, hi] intervals (the others are single numbers).
INTERVAL_OPTIONS = ("lane_width_m", "time_of_day", "marking_wear")


def default_appearance_options() -> dict[str, Any]:
    """Every appearance option with its default (config key `appearance`)."""
    return {
        "lane_width_m": [3.0, 4.5],
        "time_of_day": [0.0, 1.0],
        "marking_wear": [0.0, 0.6],
        "camera_height_jitter_m": 0.1,
        "camera_pitch_jitter_deg": 2.0,
        "camera_roll_jitter_deg": 1.0,
        "overcast_prob": 0.2,
        "clutter": 1.0,
        "surfaces": list(SURFACES),
        "marking_styles": list(MARKING_STYLES),
        "marking_colours": list(MARKING_COLOURS),
        "shoulders": list(SHOULDERS),
        "time_bands": list(TIME_BANDS),
    }


def _number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def validate_options(options: dict | None) -> dict[str, Any]:
    """`default_appearance_options()` updated by `options`; ValueError names the valid range."""
    opts = default_appearance_options()
    for k, v in dict(options or {}).items():
        if k not in opts:
            raise ValueError(f"unknown appearance option {k!r}; valid options: {', '.join(sorted(opts))}")
        if k in FACTORS:
            levels = FACTORS[k]
            vals = [v] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else None
            if not vals or any(x not in levels for x in vals):
                raise ValueError(f"appearance {k} must be a non-empty list of {', '.join(levels)}; got {v!r}")
            opts[k] = list(dict.fromkeys(vals))
            continue
        lo, hi = APPEARANCE_RANGES[k]
        if k in INTERVAL_OPTIONS:
            pair = [v, v] if _number(v) else list(v) if isinstance(v, (list, tuple)) else None
            if not pair or len(pair) != 2 or not all(_number(x) for x in pair) \
                    or not lo <= pair[0] <= pair[1] <= hi:
                raise ValueError(f"appearance {k} must be a value or a [low, high] range within "
                                 f"[{lo:g}, {hi:g}]; got {v!r}")
            opts[k] = [float(pair[0]), float(pair[1])]
        else:
            if not _number(v) or not lo <= float(v) <= hi:
                raise ValueError(f"appearance {k} must be a number in [{lo:g}, {hi:g}]; got {v!r}")
            opts[k] = float(v)
    return opts


def check_split(split: Any) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"config split must be 'train', 'test' or None (every look), got {split!r}")


# ----------------------------------------------------------------------------- combinations


def all_combinations() -> list[tuple[str, str, str, str, str]]:
    """Every (surface, marking style, marking colour, shoulder, time band)."""
    return list(itertools.product(SURFACES, MARKING_STYLES, MARKING_COLOURS, SHOULDERS, TIME_BANDS))


def combination_index(combo: tuple) -> tuple[int, ...]:
    return tuple(levels.index(v) for levels, v in zip(FACTORS.values(), combo))


def is_test_combination(combo: tuple) -> bool:
    """Held out for the test split: the level indices sum to a multiple of 4."""
    return sum(combination_index(combo)) % 4 == 0


def split_combinations(split: str | None, opts: dict) -> list[tuple]:
    """The combinations a split may draw, restricted by the options' level lists."""
    allowed = [c for c in all_combinations()
               if all(v in opts[k] for k, v in zip(FACTORS, c))]
    if split is not None:
        allowed = [c for c in allowed if is_test_combination(c) == (split == "test")]
    lo, hi = opts["time_of_day"]
    allowed = [c for c in allowed if _band_overlaps(TIME_BANDS.index(c[4]), lo, hi)]
    if not allowed:
        raise ValueError(f"no appearance combination of the {split or 'full'} split fits the "
                         "appearance options (surfaces, marking_styles, marking_colours, shoulders, "
                         "time_bands, time_of_day); widen them")
    return allowed


def _band_overlaps(i: int, lo: float, hi: float) -> bool:
    b0, b1 = i / len(TIME_BANDS), (i + 1) / len(TIME_BANDS)
    return max(lo, b0) < min(hi, b1) or (lo == hi and b0 <= lo <= b1)


def appearance_seed_for(rng: np.random.Generator, split: str | None) -> int:
    """A fresh appearance seed: even for train, odd for test, any for None."""
    k = int(rng.integers(0, 2**30))
    if split is None:
        return 2 * k + int(rng.integers(2))
    return 2 * k + (1 if split == "test" else 0)


def seed_in_split(seed: int, split: str | None) -> bool:
    return split is None or seed % 2 == (split == "test")


# ----------------------------------------------------------------------------- one draw


@dataclass(frozen=True)
class Appearance:
    """One episode's look (JSON-safe via `as_dict`)."""

    seed: int
    split: str | None
    surface: str
    marking_style: str
    marking_colour: str
    shoulder: str
    time_band: str
    time_of_day: float
    overcast: bool
    marking_wear: float
    lane_width_m: float
    camera_height_offset_m: float
    camera_pitch_offset_deg: float
    camera_roll_deg: float
    sun_azimuth_rad: float  # world azimuth the sun is in (shadows point away from it)
    sun_elevation_deg: float
    clutter: float

    @property
    def combination(self) -> tuple[str, str, str, str, str]:
        return (self.surface, self.marking_style, self.marking_colour, self.shoulder, self.time_band)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sun_elevation_deg(time_of_day: float) -> float:
    """5 degrees at dawn and dusk, 65 at noon."""
    return 5.0 + 60.0 * math.sin(math.pi * float(time_of_day))


def sample_appearance(seed: int, split: str | None = None, options: dict | None = None) -> Appearance:
    """The appearance of appearance seed `seed` (deterministic); the seed must be in the split."""
    check_split(split)
    if not seed_in_split(int(seed), split):
        raise ValueError(f"appearance seed {seed} is not in the {split} split: train seeds are even, "
                         "test seeds odd")
    opts = validate_options(options)
    rng = np.random.default_rng([int(seed), 0xA99E])
    combos = split_combinations(split, opts)
    combo = combos[int(rng.integers(len(combos)))]
    band = TIME_BANDS.index(combo[4])
    lo, hi = opts["time_of_day"]
    b0, b1 = band / len(TIME_BANDS), (band + 1) / len(TIME_BANDS)
    t0, t1 = max(lo, b0), min(hi, b1)
    tod = float(rng.uniform(t0, t1)) if t1 > t0 else float(t0)
    w0, w1 = opts["marking_wear"]
    wear = float(rng.uniform(w0, w1))
    if combo[0] == "new":
        wear *= 0.3  # fresh asphalt, fresh paint
    l0, l1 = opts["lane_width_m"]
    jh, jp, jr = (opts["camera_height_jitter_m"], opts["camera_pitch_jitter_deg"],
                  opts["camera_roll_jitter_deg"])
    return Appearance(
        seed=int(seed), split=split, surface=combo[0], marking_style=combo[1],
        marking_colour=combo[2], shoulder=combo[3], time_band=combo[4], time_of_day=tod,
        overcast=bool(rng.random() < opts["overcast_prob"]), marking_wear=wear,
        lane_width_m=float(rng.uniform(l0, l1)),
        camera_height_offset_m=float(rng.uniform(-jh, jh)),
        camera_pitch_offset_deg=float(rng.uniform(-jp, jp)),
        camera_roll_deg=float(rng.uniform(-jr, jr)),
        sun_azimuth_rad=float(rng.uniform(0, 2 * math.pi)),
        sun_elevation_deg=sun_elevation_deg(tod),
        clutter=float(opts["clutter"]),
    )
