"""Explanatory video frames: panels composed with OpenCV, written as H.264 mp4, gif or png.

A frame (default 1280×720) shows, left to right:
camera as the policy sees it, its VisualBackProp overlay and the chosen neurons' gradient
saliency overlays | the wiring diagram with live neuron states, steering (policy vs
expert) and a HUD | scrolling traces of every neuron's state (and τ_eff for LTC).

Everything static (background, titles, wiring edges and layout) is drawn once in
`Composer.__init__`; a frame copies it and draws only what changes, so composing stays far
above 10 frames/s on one core (scripts/bench_explain.py measures it).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
BG = (18, 20, 26)
PANEL = (30, 33, 42)
TEXT = (235, 235, 235)
MUTED = (150, 155, 165)
EXC = (70, 200, 90)  # excitatory synapse (RGB)
INH = (230, 70, 70)  # inhibitory synapse
POLICY_C = (80, 200, 255)
EXPERT_C = (255, 170, 60)
GROUP_C = {"motor": (255, 120, 120), "command": (255, 200, 90), "inter": (120, 200, 255),
           "unit": (190, 190, 210)}
GROUP_TAG = {"motor": "m", "command": "c", "inter": "i", "unit": "u"}


def put(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5,
        color: tuple[int, int, int] = TEXT, thick: int = 1) -> None:
    """Anti-aliased text (RGB image)."""
    cv2.putText(img, text, (int(org[0]), int(org[1])), FONT, scale, color, thick, cv2.LINE_AA)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a [0,1] map over an RGB image with the JET colour map (both the same H×W)."""
    h8 = np.clip(heat * 255.0, 0, 255).astype(np.uint8)
    col = cv2.applyColorMap(h8, cv2.COLORMAP_JET)[..., ::-1]  # BGR → RGB
    return cv2.addWeighted(image, 1.0 - alpha, col, alpha, 0.0)


@dataclass
class FrameData:
    """What one video frame shows (numbers in SI units; maps at camera resolution)."""

    camera: np.ndarray  # uint8 (h,w,3) RGB as the policy sees it
    vbp: np.ndarray | None = None  # (h,w) in [0,1]
    neuron_maps: dict[Any, np.ndarray] = field(default_factory=dict)  # key → (h,w) ≥ 0
    states: np.ndarray | None = None  # (units,)
    tau: np.ndarray | None = None  # (units,) τ_eff in seconds (LTC only)
    features: np.ndarray | None = None  # (F,) sensory inputs (CNN features)
    steering: float = 0.0
    expert: float | None = None
    cross_track_m: float = float("nan")
    crashes: int = 0
    step: int = 0
    time_s: float = 0.0
    speed_mps: float | None = None


def unit_groups(units: int, wiring: Any | None) -> list[str]:
    """Group name of each unit ("motor", "command", "inter"; "unit" without a wiring)."""
    out = ["unit"] * units
    if wiring is not None:
        for g, members in getattr(wiring, "groups", {}).items():
            for i in members:
                if 0 <= int(i) < units:
                    out[int(i)] = g
    return out


def neuron_label(k: Any, groups: list[str]) -> str:
    if k == "motor":
        return "steering output"
    g = groups[int(k)]
    return f"n{k} {g}" if g != "unit" else f"unit {k}"


class Composer:
    """Builds frames of one video; keeps the scrolling history between calls to `compose`."""

    def __init__(
        self,
        units: int,
        neurons: list[Any],
        wiring: Any | None = None,
        title: str = "",
        subtitle: str = "",
        has_tau: bool = False,
        size: tuple[int, int] = (1280, 720),
        history: int = 150,
    ) -> None:
        self.W, self.H = int(size[0]), int(size[1])
        if self.W < 1280 or self.H < 720:
            raise ValueError(f"video frames must be at least 1280×720, got {self.W}×{self.H}")
        self.units = int(units)
        self.neurons = list(neurons)
        self.wiring = wiring
        self.has_tau = bool(has_tau)
        self.groups = unit_groups(self.units, wiring)
        self.history = int(history)
        self._states: deque[np.ndarray] = deque(maxlen=self.history)
        self._taus: deque[np.ndarray] = deque(maxlen=self.history)
        self._steer: deque[float] = deque(maxlen=self.history)
        self._expert: deque[float] = deque(maxlen=self.history)
        self._lo = np.full(self.units, np.inf)
        self._hi = np.full(self.units, -np.inf)
        self._tlo = np.full(self.units, np.inf)
        self._thi = np.full(self.units, -np.inf)
        sx, sy = self.W / 1280.0, self.H / 720.0
        self.s = min(sx, sy)  # scale for fonts/sizes on bigger canvases

        def R(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
            return int(x0 * sx), int(y0 * sy), int(x1 * sx), int(y1 * sy)

        # panel rectangles (x0, y0, x1, y1)
        self.r_cam = R(12, 56, 432, 220)
        self.r_vbp = R(12, 250, 432, 414)
        self.r_sal = R(12, 440, 432, 712)
        self.r_wire = R(446, 56, 846, 420)
        self.r_steer = R(446, 446, 846, 586)
        self.r_hud = R(446, 596, 846, 712)
        tr_bottom = 376 if self.has_tau else 712
        self.r_trace = R(860, 56, 1268, tr_bottom)
        self.r_tau = R(860, 410, 1268, 712) if self.has_tau else None
        self._sal_cells = self._grid(self.r_sal, max(1, len(self.neurons)))
        self._base = self._static(title, subtitle)
        self._wire_nodes = None
        self._sens = np.zeros((0, 2), np.int32)
        self._flo: np.ndarray | None = None
        self._fhi: np.ndarray | None = None
        self._features: np.ndarray | None = None
        if self.units:
            self._wire_base, self._wire_nodes, self._node_r = self._static_wiring()

    # ------------------------------------------------------------------ static layers
    def _grid(self, rect, n: int) -> list[tuple[int, int, int, int]]:
        """Cells (x0,y0,x1,y1) for n saliency overlays, aspect 200:78, label row above each."""
        x0, y0, x1, y1 = rect
        w, h = x1 - x0, y1 - y0
        lab = int(20 * self.s)
        best = None
        for cols in range(1, n + 1):
            rows = -(-n // cols)
            cw = (w - (cols - 1) * 8) / cols
            ch = cw * 78 / 200
            if rows * (ch + lab) + (rows - 1) * 4 > h:
                ch = (h - (rows - 1) * 4) / rows - lab
                cw = ch * 200 / 78
            if best is None or cw > best[0]:
                best = (cw, ch, cols)
        cw, ch, cols = best
        cells = []
        for i in range(n):
            r, c = divmod(i, cols)
            cx = int(x0 + c * (cw + 8))
            cy = int(y0 + r * (ch + lab + 4) + lab)
            cells.append((cx, cy, cx + int(cw), cy + int(ch)))
        return cells

    def _static(self, title: str, subtitle: str) -> np.ndarray:
        img = np.empty((self.H, self.W, 3), np.uint8)
        img[:] = BG
        s = self.s
        put(img, title, (12, int(26 * s)), 0.7 * s, TEXT, 2)
        (tw, _), _ = cv2.getTextSize(title, FONT, 0.7 * s, 2)
        put(img, subtitle, (12 + tw + int(24 * s), int(26 * s)), 0.5 * s, MUTED)
        rects = [self.r_cam, self.r_vbp, self.r_wire, self.r_steer, self.r_hud, self.r_trace]
        if self.r_tau:
            rects.append(self.r_tau)
        for x0, y0, x1, y1 in rects:
            cv2.rectangle(img, (x0 - 2, y0 - 2), (x1 + 1, y1 + 1), PANEL, -1)
        labels = [
            (self.r_cam, "camera, as the policy sees it"),
            (self.r_vbp, "VisualBackProp (what the conv head passes on)"),
            (self.r_sal, "gradient saliency |d state / d frame|"),
            (self.r_wire, "wiring: neurons by live state, synapses by sign"),
            (self.r_steer, "steering: policy vs expert"),
            (self.r_trace, f"neuron states, last {self.history} frames"),
        ]
        if self.r_tau:
            labels.append((self.r_tau, "effective time constant tau_eff (log scale)"))
        for (x0, y0, _, _), text in labels:
            put(img, text, (x0, y0 - int(8 * s)), 0.5 * s, TEXT)
        for (x0, y0, x1, _), k in zip(self._sal_cells, self.neurons):
            narrow = (x1 - x0) < 150 * s
            text = ("steer" if k == "motor" else f"n{k}") if narrow else neuron_label(k, self.groups)
            put(img, text, (x0, y0 - int(5 * s)), 0.45 * s, MUTED)
        # steering axes
        x0, y0, x1, y1 = self.r_steer
        ym = (y0 + y1) // 2
        cv2.line(img, (x0, ym), (x1, ym), (70, 74, 86), 1)
        put(img, "+1", (x0 + 3, y0 + int(14 * s)), 0.4 * s, MUTED)
        put(img, "-1", (x0 + 3, y1 - 4), 0.4 * s, MUTED)
        put(img, "policy", (x1 - int(130 * s), y0 - int(8 * s)), 0.5 * s, POLICY_C)
        put(img, "expert", (x1 - int(62 * s), y0 - int(8 * s)), 0.5 * s, EXPERT_C)
        # trace row labels
        for rect in [self.r_trace] + ([self.r_tau] if self.r_tau else []):
            for i, (ry0, ry1) in enumerate(self._rows(rect)):
                if self.units <= 24:
                    tag = f"{GROUP_TAG[self.groups[i]]}{i}"
                    put(img, tag, (rect[0] + 3, (ry0 + ry1) // 2 + int(5 * s)), 0.4 * s,
                        GROUP_C[self.groups[i]])
        return img

    def _rows(self, rect) -> list[tuple[int, int]]:
        x0, y0, x1, y1 = rect
        n = max(1, self.units)
        hh = (y1 - y0) / n
        return [(int(y0 + i * hh), int(y0 + (i + 1) * hh)) for i in range(self.units)]

    def _static_wiring(self):
        x0, y0, x1, y1 = self.r_wire
        w, h = x1 - x0, y1 - y0
        img = np.empty((h, w, 3), np.uint8)
        img[:] = PANEL
        s = self.s
        node_r = max(6, int(min(w, h) / 34))
        nodes = np.zeros((self.units, 2), np.int32)
        wiring = self.wiring
        if wiring is not None and getattr(wiring, "groups", None):
            cols = [wiring.groups.get("inter", []), wiring.groups.get("command", []),
                    wiring.groups.get("motor", [])]
            xs = [int(w * f) for f in (0.36, 0.64, 0.9)]
            sens_x = int(w * 0.07)
            top, bot = int(28 * s), h - int(14 * s)
            n_in = int(getattr(wiring, "input_dim", 0))
            sens = np.zeros((n_in, 2), np.int32)
            if n_in:
                ys = np.linspace(top, bot, n_in) if n_in > 1 else np.array([(top + bot) / 2])
                sens[:, 0], sens[:, 1] = sens_x, ys.astype(np.int32)
            placed = np.zeros(self.units, bool)
            for x, members in zip(xs, cols):
                m = len(members)
                if m == 0:
                    continue
                ys = np.linspace(top + node_r, bot - node_r, m) if m > 1 else np.array([(top + bot) / 2])
                for k, y in zip(members, ys):
                    nodes[int(k)] = (x, int(y))
                    placed[int(k)] = True
            for k in np.flatnonzero(~placed):  # units outside every group: a spare column
                nodes[k] = (int(w * 0.5), top + int(k) * 2 * node_r)
            sadj = np.asarray(getattr(wiring, "sensory_adjacency", np.zeros((0, self.units))))
            faint = {1: tuple(int(0.35 * c + 0.65 * p) for c, p in zip(EXC, PANEL)),
                     -1: tuple(int(0.35 * c + 0.65 * p) for c, p in zip(INH, PANEL))}
            for a, b in zip(*np.nonzero(sadj)):
                cv2.line(img, tuple(sens[a]), tuple(nodes[b]), faint[int(np.sign(sadj[a, b]))], 1,
                         cv2.LINE_AA)
            for p in sens:
                cv2.circle(img, tuple(p), max(2, node_r // 3), (140, 140, 150), -1, cv2.LINE_AA)
            self._sens = sens
            adj = np.asarray(wiring.adjacency)
            for a, b in zip(*np.nonzero(adj)):
                c = EXC if adj[a, b] > 0 else INH
                pa, pb = nodes[a].astype(float), nodes[b].astype(float)
                if a == b:
                    cv2.circle(img, (int(pa[0] + node_r), int(pa[1] - node_r)), node_r, c, 1,
                               cv2.LINE_AA)
                    continue
                if abs(pa[0] - pb[0]) < 1:  # same column: bow outwards so edges stay visible
                    mid = (pa + pb) / 2 + np.array([0.35 * abs(pa[1] - pb[1]) + 2 * node_r, 0])
                    t = np.linspace(0, 1, 16)[:, None]
                    curve = ((1 - t) ** 2 * pa + 2 * (1 - t) * t * mid + t**2 * pb).astype(np.int32)
                    cv2.polylines(img, [curve], False, c, 1, cv2.LINE_AA)
                else:
                    d = pb - pa
                    end = pb - d / max(np.hypot(*d), 1e-9) * node_r
                    cv2.arrowedLine(img, tuple(pa.astype(int)), tuple(end.astype(int)), c, 1,
                                    cv2.LINE_AA, tipLength=min(0.25, 8 * s / max(np.hypot(*d), 1)))
            for x, name in zip([sens_x, *xs], ("sensory", "inter", "command", "motor")):
                put(img, name, (x - int(24 * s), int(16 * s)), 0.45 * s, MUTED)
            put(img, "excitatory", (int(6 * s), h - 2), 0.4 * s, EXC)
            put(img, "inhibitory", (int(90 * s), h - 2), 0.4 * s, INH)
        else:  # no wiring (LSTM/GRU/CT-RNN/CNN head): a grid of units
            cols = int(np.ceil(np.sqrt(self.units * w / h)))
            rows = -(-self.units // cols)
            node_r = max(4, min(int(18 * s), int(min(w / cols, (h - 30 * s) / rows) / 2.6)))
            for k in range(self.units):
                r, c = divmod(k, cols)
                nodes[k] = (int((c + 0.5) * w / cols), int(24 * s + (r + 0.5) * (h - 30 * s) / rows))
            put(img, "no sparse wiring (dense core or feed-forward head): units",
                (int(6 * s), int(16 * s)),
                0.45 * s, MUTED)
        return img, nodes, node_r

    # ------------------------------------------------------------------ dynamic parts
    def _norm_states(self, st: np.ndarray) -> np.ndarray:
        span = np.maximum(self._hi - self._lo, 1e-6)
        return np.clip(2 * (st - self._lo) / span - 1, -1, 1)

    @staticmethod
    def _diverging(z: np.ndarray) -> np.ndarray:
        """z in [−1,1] → RGB: blue (−) … grey (0) … orange (+)."""
        mid = np.array([120.0, 120.0, 130.0])
        neg, pos = np.array([40.0, 110.0, 255.0]), np.array([255.0, 150.0, 40.0])
        z = z[:, None]
        return np.where(z >= 0, mid + z * (pos - mid), mid - z * (neg - mid)).astype(np.uint8)

    def _draw_wiring(self, img: np.ndarray, st: np.ndarray | None) -> None:
        x0, y0, x1, y1 = self.r_wire
        panel = self._wire_base.copy()
        cols = (np.full((self.units, 3), 90, np.uint8) if st is None
                else self._diverging(self._norm_states(st)))
        fs = 0.38 * self.s if self.node_r_small else 0.45 * self.s
        f = self._features
        if f is not None and len(f) == len(self._sens) and self._flo is not None:
            z = np.clip(2 * (f - self._flo) / np.maximum(self._fhi - self._flo, 1e-6) - 1, -1, 1)
            fc = self._diverging(z)
            rr = max(2, self._node_r // 3)
            for p, c in zip(self._sens, fc):
                cv2.circle(panel, (int(p[0]), int(p[1])), rr, tuple(int(v) for v in c), -1,
                           cv2.LINE_AA)
        for k in range(self.units):
            p = (int(self._wire_nodes[k, 0]), int(self._wire_nodes[k, 1]))
            cv2.circle(panel, p, self._node_r, tuple(int(v) for v in cols[k]), -1, cv2.LINE_AA)
            cv2.circle(panel, p, self._node_r, (235, 235, 235), 1, cv2.LINE_AA)
            if not self.node_r_small or self.units <= 24:
                t = str(k)
                put(panel, t, (p[0] - int(4 * len(t) * self.s), p[1] + int(4 * self.s)), fs,
                    (0, 0, 0), 1)
        img[y0:y1, x0:x1] = panel

    @property
    def node_r_small(self) -> bool:
        return self._node_r < 9

    def _traces(self, img: np.ndarray, rect, hist: deque, lo: np.ndarray, hi: np.ndarray,
                log: bool, unit_txt: str) -> None:
        if not hist or self.units == 0:
            return
        x0, y0, x1, y1 = rect
        data = np.stack(hist)  # (T, units)
        if log:
            data = np.log10(np.maximum(data, 1e-9))
            lo, hi = np.log10(np.maximum(lo, 1e-9)), np.log10(np.maximum(hi, 1e-9))
        lx = x0 + int(30 * self.s)
        rx = x1 - int(74 * self.s)
        T = data.shape[0]
        xs = rx - (np.arange(T)[::-1] * (rx - lx) / max(1, self.history - 1))
        span = np.maximum(hi - lo, 1e-6)
        if self.units > 24:  # too many for strips: a heat map of normalised states
            z = np.clip((data - lo) / span, 0, 1).T  # (units, T)
            hm = cv2.applyColorMap((z * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
            w = max(1, int(xs[-1] - xs[0]) + 1)
            img[y0:y1, int(xs[0]):int(xs[0]) + w] = cv2.resize(hm, (w, y1 - y0),
                                                                interpolation=cv2.INTER_NEAREST)
            return
        rows = self._rows(rect)
        lines = []
        for i, (ry0, ry1) in enumerate(rows):
            yy = ry1 - 2 - (data[:, i] - lo[i]) / span[i] * (ry1 - ry0 - 4)
            lines.append((np.stack([xs, yy], 1).astype(np.int32), GROUP_C[self.groups[i]]))
            v = hist[-1][i]
            put(img, f"{v:+.2f}" if not log else f"{v:.2g}{unit_txt}",
                (rx + 6, (ry0 + ry1) // 2 + int(5 * self.s)),
                0.38 * self.s, MUTED)
        for pts, c in lines:
            cv2.polylines(img, [pts], False, c, 1, cv2.LINE_AA)

    def _steering(self, img: np.ndarray) -> None:
        x0, y0, x1, y1 = self.r_steer
        T = len(self._steer)
        if T == 0:
            return
        xs = x1 - 4 - np.arange(T)[::-1] * (x1 - x0 - 30) / max(1, self.history - 1)
        mid, half = (y0 + y1) / 2, (y1 - y0) / 2 - 4

        def poly(vals, c):
            y = mid - np.clip(np.asarray(vals, float), -1, 1) * half
            cv2.polylines(img, [np.stack([xs, y], 1).astype(np.int32)], False, c, 2, cv2.LINE_AA)

        ex = [v for v in self._expert]
        if ex and not any(np.isnan(ex)):
            poly(ex, EXPERT_C)
        poly(list(self._steer), POLICY_C)

    def _hud(self, img: np.ndarray, fd: FrameData) -> None:
        x0, y0, _, _ = self.r_hud
        s = self.s
        xt = fd.cross_track_m
        put(img, f"cross-track {xt:+.2f} m" if np.isfinite(xt) else "cross-track  n/a",
            (x0 + 8, y0 + int(30 * s)), 0.75 * s, TEXT, 2)
        put(img, f"crashes {fd.crashes}", (x0 + int(250 * s), y0 + int(30 * s)), 0.75 * s,
            (255, 110, 110) if fd.crashes else TEXT, 2)
        ex = "n/a" if fd.expert is None or not np.isfinite(fd.expert) else f"{fd.expert:+.3f}"
        put(img, f"steering policy {fd.steering:+.3f}   expert {ex}", (x0 + 8, y0 + int(62 * s)),
            0.55 * s, TEXT)
        sp = "" if fd.speed_mps is None else f"   speed {fd.speed_mps:.1f} m/s"
        put(img, f"frame {fd.step}   t = {fd.time_s:.1f} s{sp}", (x0 + 8, y0 + int(92 * s)),
            0.55 * s, MUTED)

    def _place(self, img: np.ndarray, rect, rgb: np.ndarray) -> None:
        x0, y0, x1, y1 = rect
        img[y0:y1, x0:x1] = cv2.resize(rgb, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)

    def push(self, fd: FrameData) -> None:
        """Add one frame's numbers to the scrolling history (without drawing)."""
        if fd.states is not None and self.units:
            st = np.asarray(fd.states, np.float64).reshape(-1)[: self.units]
            self._states.append(st)
            self._lo = np.minimum(self._lo, st)
            self._hi = np.maximum(self._hi, st)
        if fd.tau is not None and self.has_tau:
            ta = np.asarray(fd.tau, np.float64).reshape(-1)[: self.units]
            self._taus.append(ta)
            self._tlo = np.minimum(self._tlo, ta)
            self._thi = np.maximum(self._thi, ta)
        self._features = None
        if fd.features is not None:
            f = np.asarray(fd.features, np.float64).reshape(-1)
            self._flo = f.copy() if self._flo is None or len(self._flo) != len(f) else np.minimum(self._flo, f)
            self._fhi = f.copy() if self._fhi is None or len(self._fhi) != len(f) else np.maximum(self._fhi, f)
            self._features = f
        self._steer.append(float(fd.steering))
        self._expert.append(float("nan") if fd.expert is None else float(fd.expert))

    def draw(self, fd: FrameData) -> np.ndarray:
        """Render the frame for `fd` from the current history (call `push` first)."""
        img = self._base.copy()
        cam = np.ascontiguousarray(fd.camera)
        self._place(img, self.r_cam, cam)
        if fd.vbp is not None:
            self._place(img, self.r_vbp, heat_overlay(cam, fd.vbp))
        for rect, k in zip(self._sal_cells, self.neurons):
            m = fd.neuron_maps.get(k)
            if m is None:
                continue
            peak = float(m.max())
            # sqrt: show weak tails; below 1e-30 (float32 dust, e.g. saturated tanh units) the
            # map is shown as zero rather than amplifying rounding noise to full scale
            heat = np.sqrt(m / peak) if peak > 1e-30 else np.zeros_like(m)
            self._place(img, rect, heat_overlay(cam, heat.astype(np.float32), 0.6))
            if rect[2] - rect[0] >= 150 * self.s:  # room for the peak value beside the label
                txt = f"max {peak:.1e}"
                (tw, _), _ = cv2.getTextSize(txt, FONT, 0.4 * self.s, 1)
                put(img, txt, (rect[2] - tw, rect[1] - int(5 * self.s)), 0.4 * self.s, MUTED)
        if self.units:
            self._draw_wiring(img, self._states[-1] if self._states else None)
            self._traces(img, self.r_trace, self._states, self._lo, self._hi, False, "")
            if self.r_tau is not None:
                self._traces(img, self.r_tau, self._taus, self._tlo, self._thi, True, "s")
        self._steering(img)
        self._hud(img, fd)
        return img

    def compose(self, fd: FrameData) -> np.ndarray:
        """`push` then `draw`: the next video frame, RGB uint8 (H, W, 3)."""
        self.push(fd)
        return self.draw(fd)


# --------------------------------------------------------------------------- writers


class FrameWriter:
    """Writes RGB frames to .mp4 (H.264, yuv420p, via imageio-ffmpeg) or .gif, atomically.

    Frames go to a temporary file next to `path` that replaces it on `close()`, so a crash
    mid-render never leaves a half-written video under the final name.
    """

    def __init__(self, path: str, fps: float) -> None:
        import imageio.v2 as iio

        self.path = str(path)
        ext = os.path.splitext(self.path)[1].lower()
        if ext not in (".mp4", ".gif"):
            raise ValueError(f"video output must end in .mp4 or .gif, got {self.path!r}")
        self.tmp = f"{self.path}.tmp{os.getpid()}{ext}"
        self.count = 0
        if ext == ".mp4":
            self._w = iio.get_writer(self.tmp, format="FFMPEG", mode="I", fps=float(fps),
                                     codec="libx264", pixelformat="yuv420p", quality=7,
                                     output_params=["-preset", "veryfast"],
                                     macro_block_size=8, ffmpeg_log_level="error")
        else:
            self._w = iio.get_writer(self.tmp, format="GIF", mode="I",
                                     duration=1000.0 / float(fps), loop=0)

    def append(self, frame: np.ndarray) -> None:
        try:
            self._w.append_data(frame)
        except OSError as exc:
            # ffmpeg quit (a full disk): imageio-ffmpeg raises a bare IOError with ffmpeg's log
            if exc.errno is None and _no_space_left(os.path.dirname(os.path.abspath(self.path))):
                raise OSError(errno.ENOSPC, "No space left on device", self.path) from None
            raise
        self.count += 1

    def _close_writer(self) -> None:
        try:
            self._w.close()
        except BaseException:
            # A close that failed (a full disk while Pillow flushes a GIF) is retried by
            # imageio's __del__, which prints "Exception ignored" tracebacks: make it a no-op.
            with contextlib.suppress(Exception):  # v2 (ffmpeg) writers have no such attributes
                self._w.closed = True
                self._w.instance.close = lambda: None
            raise

    def close(self, keep: bool = True) -> None:
        try:
            self._close_writer()
        except BaseException:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
            raise
        if keep and self.count:
            if self.tmp.endswith(".mp4") and not _mp4_complete(self.tmp):
                # imageio-ffmpeg ignores ffmpeg's exit code: a full disk left a file without
                # its index (no moov box). Never rename that over the old video.
                os.remove(self.tmp)
                full = _no_space_left(os.path.dirname(os.path.abspath(self.path)))
                raise OSError(errno.ENOSPC if full else errno.EIO,
                              "No space left on device" if full else "ffmpeg could not finish the video",
                              self.path)
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(keep=exc_type is None)


def _mp4_complete(path: str) -> bool:
    """True when the file's top-level MP4 boxes tile it exactly and include `moov` (the index
    ffmpeg writes last); a video cut short by a full disk fails this."""
    import struct

    size = os.path.getsize(path)
    pos, seen = 0, set()
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            head = f.read(16)
            if len(head) < 8:
                return False
            n, kind = struct.unpack(">I4s", head[:8])
            if n == 1 and len(head) == 16:
                n = struct.unpack(">Q", head[8:16])[0]
            elif n == 0:
                n = size - pos
            if n < 8:
                return False
            seen.add(kind)
            pos += n
    return pos == size and b"moov" in seen


def _no_space_left(folder: str) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def write_png(path: str, frame: np.ndarray) -> None:
    """Save one RGB frame as PNG atomically (policies.atomicio: no partial or temp file left)."""
    from policies.atomicio import atomic_write_png

    atomic_write_png(path, frame, compression=9)
