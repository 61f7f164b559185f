"""Road geometry: closed racetrack, sine road, seeded procedural roads.

Every track is a highway-env `RoadNetwork` of `StraightLane`/`CircularLane`/`SineLane`
segments (so highway-env stays the source of truth for lane coordinates), plus a
`route`: the ego lane's segments in driving order. On top of that, the track keeps
a dense sampling of the route (points, lateral unit vectors, headings) so that the
renderer and the top-down view never have to call highway-env per frame.

Conventions (those of highway-env): the world is the (x, y) plane; headings are
`atan2(dy, dx)`; a lane's lateral coordinate grows towards heading + 90 degrees,
which highway-env draws as the driver's right (its screen y axis points down). The
dashcam uses the same handedness, so positive steering turns right in both views.
The ego lane is the rightmost lane; other lanes lie at negative lateral offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from highway_env.road.lane import AbstractLane, CircularLane, LineType, SineLane, StraightLane
from highway_env.road.road import RoadNetwork

# highway-env draws striped lines as 3 m dashes every 5 m (road/graphics.py LaneGraphics).
STRIPE_LENGTH_M = 3.0
STRIPE_PERIOD_M = 5.0

TRACK_NAMES = ("racetrack", "sine", "random")


@dataclass
class Track:
    """A road network plus the ego route and its precomputed dense sampling."""

    name: str
    network: RoadNetwork
    route: list[AbstractLane]
    closed: bool
    lane_width: float
    n_lanes: int
    lane_lines: list[tuple[float, int]]  # (lateral offset from ego centre, LineType)
    seed: int | None = None
    sample_step_m: float = 1.0
    seg_start: np.ndarray = field(init=False)
    length: float = field(init=False)

    def __post_init__(self) -> None:
        lengths = np.array([lane.length for lane in self.route], dtype=np.float64)
        self.seg_start = np.concatenate(([0.0], np.cumsum(lengths)[:-1]))
        self.length = float(lengths.sum())
        self._sample()

    # ---------------------------------------------------------------- geometry
    @property
    def left_edge(self) -> float:
        """Lateral offset of the road's left edge (all lanes), from the ego lane centre."""
        return -(self.n_lanes - 1) * self.lane_width - self.lane_width / 2

    @property
    def right_edge(self) -> float:
        return self.lane_width / 2

    def _sample(self) -> None:
        """Sample the route every `sample_step_m` metres (segment ends included)."""
        pts, lat_u, heads, s_all, seg_ids = [], [], [], [], []
        for i, lane in enumerate(self.route):
            n = max(2, int(np.ceil(lane.length / self.sample_step_m)) + 1)
            last = i == len(self.route) - 1
            ss = np.linspace(0.0, lane.length, n)
            if not (last and not self.closed):
                ss = ss[:-1]  # the next segment starts where this one ends
            for s in ss:
                p0 = lane.position(s, 0.0)
                pts.append(p0)
                lat_u.append(lane.position(s, 1.0) - p0)
                heads.append(lane.heading_at(s))
                s_all.append(self.seg_start[i] + s)
                seg_ids.append(i)
        self.points = np.asarray(pts, dtype=np.float64)
        self.lateral_u = np.asarray(lat_u, dtype=np.float64)
        self.headings = np.asarray(heads, dtype=np.float64)
        self.s = np.asarray(s_all, dtype=np.float64)
        self.sample_seg = np.asarray(seg_ids, dtype=np.int64)

    def offset_polyline(self, lateral: float) -> np.ndarray:
        """World points of the curve at a lateral offset from the ego lane centre."""
        return self.points + float(lateral) * self.lateral_u

    def segment_of(self, s_route: float) -> tuple[int, float]:
        """(segment index, local s) for a route arc length (wrapped on closed tracks)."""
        if self.closed:
            s_route = s_route % self.length
        else:
            s_route = min(max(s_route, 0.0), self.length)
        i = int(np.searchsorted(self.seg_start, s_route, side="right") - 1)
        i = min(max(i, 0), len(self.route) - 1)
        return i, s_route - self.seg_start[i]

    def pose_at(self, s_route: float, lateral: float = 0.0) -> tuple[np.ndarray, float]:
        i, s = self.segment_of(s_route)
        lane = self.route[i]
        return lane.position(s, lateral), float(lane.heading_at(s))

    def curvature(self, seg: int, s_local: float, ds: float = 0.5) -> float:
        """Signed curvature 1/m of the ego lane (positive = turning right)."""
        lane = self.route[seg]
        a, b = s_local - ds, s_local + ds
        h0 = lane.heading_at(a)
        h1 = lane.heading_at(b)
        return float(_wrap(h1 - h0) / (b - a))

    def locate(self, position: np.ndarray, seg: int) -> tuple[int, float, float]:
        """Track the ego along the route from a hint segment: (segment, local s, lateral).

        Cheap per-step alternative to highway-env's `get_closest_lane_index`, which
        loops over every lane of the network.
        """
        n = len(self.route)
        for _ in range(n):
            lane = self.route[seg]
            s, lat = lane.local_coordinates(position)
            if s > lane.length:
                if seg == n - 1 and not self.closed:
                    return seg, float(s), float(lat)
                nxt = (seg + 1) % n
                s2, lat2 = self.route[nxt].local_coordinates(position)
                if s2 < 0 and abs(lat) <= abs(lat2):
                    return seg, float(s), float(lat)
                seg = nxt
                continue
            if s < 0:
                if seg == 0 and not self.closed:
                    return seg, float(s), float(lat)
                prv = (seg - 1) % n
                s2, lat2 = self.route[prv].local_coordinates(position)
                if s2 > self.route[prv].length and abs(lat) <= abs(lat2):
                    return seg, float(s), float(lat)
                seg = prv
                continue
            return seg, float(s), float(lat)
        return self.nearest(position)

    def nearest(self, position: np.ndarray) -> tuple[int, float, float]:
        """Global nearest point on the ego route: (segment, local s, lateral)."""
        k = int(np.argmin(np.sum((self.points - position) ** 2, axis=1)))
        seg = int(self.sample_seg[k])
        lane = self.route[seg]
        s, lat = lane.local_coordinates(position)
        s = float(np.clip(s, 0.0, lane.length))
        return seg, s, float(lat)

    def route_s(self, seg: int, s_local: float) -> float:
        return float(self.seg_start[seg] + s_local)

    def bounds(self, margin: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
        lo = np.minimum(self.offset_polyline(self.left_edge).min(0), self.points.min(0))
        hi = np.maximum(self.offset_polyline(self.right_edge).max(0), self.points.max(0))
        return lo - margin, hi + margin


def _wrap(a: float | np.ndarray) -> float | np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


# ------------------------------------------------------------------ builders
def _pieces_to_lanes(
    pieces: list[tuple], lane_width: float, n_lanes: int, start=(0.0, 0.0), heading=0.0,
    speed_limit: float = 10.0,
) -> tuple[list[list[AbstractLane]], np.ndarray, float]:
    """Turn ('S', length) / ('A', radius, signed angle deg, + = right) pieces into lanes.

    Returns per piece the lanes from leftmost to ego (rightmost), and the end pose.
    """
    p = np.array(start, dtype=np.float64)
    h = float(heading)
    out = []
    offsets = [-(n_lanes - 1 - k) * lane_width for k in range(n_lanes)]
    for piece in pieces:
        nrm = np.array([-np.sin(h), np.cos(h)])
        d = np.array([np.cos(h), np.sin(h)])
        lanes = []
        if piece[0] == "S":
            length = float(piece[1])
            for off in offsets:
                a = p + off * nrm
                lanes.append(StraightLane(a, a + length * d, width=lane_width, speed_limit=speed_limit))
            p = p + length * d
        else:
            radius, ang = float(piece[1]), np.deg2rad(float(piece[2]))
            if ang > 0:  # right turn: clockwise in highway-env's phase convention
                c = p + radius * nrm
                ph0 = h - np.pi / 2
                for off in offsets:
                    lanes.append(CircularLane(c, radius - off, ph0, ph0 + ang, clockwise=True,
                                              width=lane_width, speed_limit=speed_limit))
                p = c + radius * np.array([np.cos(ph0 + ang), np.sin(ph0 + ang)])
            else:
                c = p - radius * nrm
                ph0 = h + np.pi / 2
                for off in offsets:
                    lanes.append(CircularLane(c, radius + off, ph0, ph0 + ang, clockwise=False,
                                              width=lane_width, speed_limit=speed_limit))
                p = c + radius * np.array([np.cos(ph0 + ang), np.sin(ph0 + ang)])
            h = h + ang
        out.append(lanes)
    return out, p, h


def _markings(lanes: list[AbstractLane], lane_width: float) -> list[tuple[float, int]]:
    """Markings from the lanes' highway-env `line_types` (side 0 = lateral -w/2 = left).

    A line shared by two lanes takes the stronger type (CONTINUOUS > STRIPED > NONE);
    offsets are lateral metres from the ego (last, rightmost) lane's centre.
    """
    n = len(lanes)
    found: dict[float, int] = {}
    for k, lane in enumerate(lanes):
        centre = -(n - 1 - k) * lane_width
        for side, kind in zip((-0.5, 0.5), lane.line_types):
            lat = round(centre + side * lane_width, 6)
            found[lat] = max(found.get(lat, LineType.NONE), int(kind))
    return sorted(found.items())


def _assemble(name: str, piece_lanes: list[list[AbstractLane]], closed: bool, lane_width: float,
              n_lanes: int, seed: int | None = None, centre_line: int = LineType.STRIPED) -> Track:
    """Network + route; outer edges CONTINUOUS, lines between lanes `centre_line`."""
    net = RoadNetwork()
    for i, lanes in enumerate(piece_lanes):
        a = f"n{i}"
        b = f"n{(i + 1) % len(piece_lanes)}" if closed else f"n{i + 1}"
        for k, lane in enumerate(lanes):
            left = LineType.CONTINUOUS if k == 0 else centre_line
            right = LineType.CONTINUOUS if k == n_lanes - 1 else LineType.NONE
            lane.line_types = [left, right]
            net.add_lane(a, b, lane)
    route = [lanes[-1] for lanes in piece_lanes]
    lines = _markings(piece_lanes[0], lane_width)
    return Track(name, net, route, closed, lane_width, n_lanes, lines, seed)


# Racetrack pieces: two straights (marked None) are solved so that the loop closes.
_RACETRACK = [
    ("S", None), ("A", 30, 90), ("S", 40), ("A", 15, 60), ("A", 15, -60), ("A", 12, 90),
    ("S", 50), ("A", 20, 90), ("S", None), ("A", 35, 45), ("A", 10, 45),
]


def _close_loop(pieces: list[tuple]) -> list[tuple]:
    """Solve the two free straights' lengths so that the loop ends where it starts."""
    free = [i for i, p in enumerate(pieces) if p[0] == "S" and p[1] is None]
    assert len(free) == 2
    trial = [("S", 1.0) if i in free else p for i, p in enumerate(pieces)]
    _, p_end, h_end = _pieces_to_lanes(trial, 4.0, 1)
    assert abs(_wrap(h_end)) < 1e-9, "racetrack turns must sum to 360 degrees"
    dirs = []
    for i in free:
        h = np.deg2rad(sum(p[2] for p in pieces[:i] if p[0] == "A"))
        dirs.append([np.cos(h), np.sin(h)])
    lengths = 1.0 + np.linalg.solve(np.array(dirs).T, -p_end)
    if np.any(lengths < 5):
        raise ValueError(f"racetrack pieces do not close with positive straights: {lengths}")
    return [("S", float(lengths[free.index(i)])) if i in free else p for i, p in enumerate(pieces)]


LINE_NAMES = {"striped": LineType.STRIPED, "continuous": LineType.CONTINUOUS, "none": LineType.NONE}


def _line(name: str) -> int:
    if name not in LINE_NAMES:
        raise ValueError(f"centre_line must be one of {sorted(LINE_NAMES)}, got {name!r}")
    return LINE_NAMES[name]


def make_racetrack(lane_width: float = 4.0, n_lanes: int = 2, centre_line: str = "striped") -> Track:
    """A closed loop, 2 lanes, right and left curves of radius 10-35 m (an S-bend too)."""
    pieces = _close_loop(_RACETRACK)
    lanes, _, _ = _pieces_to_lanes(pieces, lane_width, n_lanes)
    return _assemble("racetrack", lanes, True, lane_width, n_lanes, centre_line=_line(centre_line))


def make_sine_road(length: float = 800.0, amplitude: float = 5.0, period: float = 100.0,
                   lane_width: float = 4.0, n_lanes: int = 2, phase: float = 0.0,
                   centre_line: str = "striped") -> Track:
    """highway-env's lane-keeping road: a SineLane (amplitude 5 m, period 100 m)."""
    lanes = []
    for k in range(n_lanes):
        off = -(n_lanes - 1 - k) * lane_width
        lanes.append(SineLane([0.0, off], [length, off], amplitude=amplitude,
                              pulsation=2 * np.pi / period, phase=phase, width=lane_width,
                              speed_limit=10.0))
    return _assemble("sine", [lanes], False, lane_width, n_lanes, centre_line=_line(centre_line))


RANDOM_RADIUS_M = (15.0, 60.0)  # the arcs' radius range of the default random roads
RADIUS_LIMITS_M = (8.0, 200.0)  # what `radius_m` may ask for
STRAIGHT_PROB = 0.75  # chance that a straight follows an arc on the default random roads


def random_pieces(rng: np.random.Generator, length: float,
                  radius_m: tuple[float, float] = RANDOM_RADIUS_M,
                  straight_prob: float = STRAIGHT_PROB) -> list[tuple]:
    """Alternate straights (15-70 m) and arcs (radius `radius_m`, default 15-60 m, 20-110 degrees).

    The radius is drawn uniformly in 1/r (curvature), so a wider range adds tight bends
    without making gentle ones rare; the default range keeps the uniform-in-r draw every
    recorded dataset and evaluation road of earlier versions used (same seed, same road).
    After each arc a straight follows with probability `straight_prob`; otherwise the next
    arc starts at once, which makes S-bends (chicanes) when its sign flips; the default keeps
    the earlier roads (same seed, same road).
    """
    lo, hi = radius_m
    tight = (lo, hi) != RANDOM_RADIUS_M
    pieces: list[tuple] = [("S", float(rng.uniform(20, 40)))]
    total, heading = pieces[0][1], 0.0
    while total < length:
        r = 1.0 / float(rng.uniform(1.0 / hi, 1.0 / lo)) if tight else float(rng.uniform(lo, hi))
        ang = float(rng.uniform(20, 110))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if abs(heading + sign * ang) > 150:  # steer back towards the start direction
            sign = -sign
        heading += sign * ang
        pieces.append(("A", r, sign * ang))
        total += r * np.deg2rad(ang)
        if rng.random() < straight_prob:
            s = float(rng.uniform(15, 70))
            pieces.append(("S", s))
            total += s
    return pieces


def check_radius_range(radius_m, lane_width: float, n_lanes: int) -> tuple[float, float]:
    """`radius_m` as a (low, high) pair of metres, or a ValueError naming the valid range."""
    lo_lim = max(RADIUS_LIMITS_M[0], (n_lanes - 1) * lane_width + 3.0)
    try:
        lo, hi = (float(v) for v in radius_m)
    except (TypeError, ValueError):
        raise ValueError(f"track_kwargs radius_m must be a [low, high] pair of metres, got {radius_m!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo_lim <= lo <= hi <= RADIUS_LIMITS_M[1]):
        raise ValueError(f"track_kwargs radius_m must satisfy {lo_lim:g} <= low <= high <= "
                         f"{RADIUS_LIMITS_M[1]:g} m (inner lane at least 3 m radius), got {radius_m!r}")
    return lo, hi


def check_straight_prob(straight_prob) -> float:
    """`straight_prob` as a float in [0, 1], or a ValueError naming the valid range."""
    try:
        p = float(straight_prob)
    except (TypeError, ValueError):
        raise ValueError(f"track_kwargs straight_prob must be a number in [0, 1], got {straight_prob!r}") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"track_kwargs straight_prob must be in [0, 1] (default {STRAIGHT_PROB:g}; "
                         f"lower means more back-to-back bends), got {straight_prob!r}")
    return p


def _self_clearance(points: np.ndarray, s: np.ndarray, min_gap_s: float) -> float:
    """Smallest distance between route samples farther apart than `min_gap_s` along it."""
    sub = points[::2]
    ss = s[::2]
    d = np.sqrt(((sub[:, None, :] - sub[None, :, :]) ** 2).sum(-1))
    far = np.abs(ss[:, None] - ss[None, :]) > min_gap_s
    return float(d[far].min()) if far.any() else np.inf


def make_random_road(seed: int, length: float = 800.0, lane_width: float = 3.6,
                     n_lanes: int = 2, centre_line: str = "striped",
                     radius_m: tuple[float, float] = RANDOM_RADIUS_M,
                     straight_prob: float = STRAIGHT_PROB) -> Track:
    """A seeded open road of straights and arcs that never comes near itself.

    `radius_m` widens the arcs' radius range, e.g. (10, 60) for bends as tight as the
    racetrack's; a lower `straight_prob` puts bends back to back, as in the racetrack's
    chicane (docs/simulator.md). The defaults draw the roads of every earlier version.
    """
    radius_m = check_radius_range(radius_m, lane_width, n_lanes)
    straight_prob = check_straight_prob(straight_prob)
    rng = np.random.default_rng(seed)
    road_w = lane_width * n_lanes
    for _ in range(200):
        pieces = random_pieces(rng, length, radius_m, straight_prob)
        lanes, _, _ = _pieces_to_lanes(pieces, lane_width, n_lanes)
        track = _assemble("random", lanes, False, lane_width, n_lanes, seed=seed,
                          centre_line=_line(centre_line))
        if _self_clearance(track.points, track.s, 60.0) > road_w + 30.0:
            return track
    raise RuntimeError(f"could not generate a non-self-intersecting road for seed {seed} in 200 draws "
                       f"(radius_m {radius_m}, straight_prob {straight_prob:g}, length {length:g} m): "
                       "tight bends with few straights curl the road onto itself; raise straight_prob "
                       "(>= 0.1 works for every tested radius range), widen radius_m or shorten the road")


def build_track(name: str, seed: int | None = None, **kw) -> Track:
    """Build a track by name ('racetrack', 'sine', 'random'); clear error otherwise."""
    makers = {"racetrack": make_racetrack, "sine": make_sine_road, "random": make_random_road}
    if name not in makers:
        raise ValueError(f"unknown track {name!r}; choose one of {', '.join(TRACK_NAMES)}")
    import inspect

    allowed = set(inspect.signature(makers[name]).parameters) - {"seed"}
    bad = set(kw) - allowed
    if bad:
        raise ValueError(f"unknown track_kwargs {sorted(bad)} for track {name!r}; allowed: {sorted(allowed)}")
    if name == "random":
        if seed is None:
            raise ValueError("track 'random' needs a seed")
        return make_random_road(seed, **kw)
    return makers[name](**kw)
