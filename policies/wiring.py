"""NCP wiring: which neuron talks to which, with what sign.

A `Wiring` is plain data (two signed int8 adjacency matrices plus neuron groups), so the
same cell math runs on the paper's Neural Circuit Policy, on a fully connected graph and on
a randomly wired one (the paper's ablations). Conventions follow ncps: rows are sources,
columns targets, motor neurons are indices ``0..output_dim-1``, then command, then inter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Wiring"]

_GROUPS = ("motor", "command", "inter")


class Wiring:
    """Signed synapse graph of ``units`` neurons fed by ``input_dim`` sensory inputs.

    ``layers`` is the update order used by the wired CfC (sources in an earlier layer are
    read after their update in the same step): ``[inter, command, motor]`` for an NCP, one
    layer of all units otherwise.
    """

    def __init__(
        self,
        adjacency: np.ndarray,
        sensory_adjacency: np.ndarray,
        output_dim: int,
        groups: dict[str, list[int]] | None = None,
        layers: list[list[int]] | None = None,
        kind: str = "custom",
        params: dict[str, Any] | None = None,
    ) -> None:
        adj = np.asarray(adjacency)
        sadj = np.asarray(sensory_adjacency)
        if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
            raise ValueError(f"adjacency must be a square (units, units) matrix, got shape {adj.shape}")
        units = adj.shape[0]
        if sadj.ndim != 2 or sadj.shape[1] != units:
            raise ValueError(
                f"sensory_adjacency must be (input_dim, units={units}), got shape {sadj.shape}"
            )
        for name, m in (("adjacency", adj), ("sensory_adjacency", sadj)):
            if not np.all(np.isin(m, (-1, 0, 1))):
                raise ValueError(f"{name} entries must be -1, 0 or +1 (synapse polarity)")
        if not 1 <= int(output_dim) <= units:
            raise ValueError(f"output_dim must be in 1..units={units}, got {output_dim}")
        self.adjacency = adj.astype(np.int8)
        self.sensory_adjacency = sadj.astype(np.int8)
        self.units = int(units)
        self.input_dim = int(sadj.shape[0])
        self.output_dim = int(output_dim)
        if groups is None:
            groups = {
                "motor": list(range(self.output_dim)),
                "command": [],
                "inter": list(range(self.output_dim, units)),
            }
        self.groups = {g: [int(i) for i in groups.get(g, [])] for g in _GROUPS}
        members = sorted(i for g in _GROUPS for i in self.groups[g])
        if members != list(range(units)):
            raise ValueError("groups must partition the neurons 0..units-1 into motor/command/inter")
        if self.groups["motor"] != list(range(self.output_dim)):
            raise ValueError("motor neurons must be indices 0..output_dim-1 (ncps convention)")
        if layers is None:
            layers = [list(range(units))]
        self.layers = [[int(i) for i in layer] for layer in layers]
        if sorted(i for layer in self.layers for i in layer) != list(range(units)):
            raise ValueError("layers must partition the neurons 0..units-1")
        self.kind = kind
        self.params = dict(params or {})

    # ------------------------------------------------------------------ constructors
    @classmethod
    def ncp(
        cls,
        inter: int = 12,
        command: int = 6,
        motor: int = 1,
        sensory_fanout: int = 6,
        inter_fanout: int = 4,
        recurrent_command_synapses: int = 6,
        motor_fanin: int = 6,
        input_dim: int = 32,
        seed: int = 0,
    ) -> Wiring:
        """Layered NCP (defaults: the paper's 32 → 12 inter → 6 command → 1 motor)."""
        if min(inter, command, motor, input_dim) < 1:
            raise ValueError("inter, command, motor and input_dim must all be >= 1")
        if not 1 <= sensory_fanout <= inter:
            raise ValueError(f"sensory_fanout must be in 1..inter={inter}, got {sensory_fanout}")
        if not 1 <= inter_fanout <= command:
            raise ValueError(f"inter_fanout must be in 1..command={command}, got {inter_fanout}")
        if not 1 <= motor_fanin <= command:
            raise ValueError(f"motor_fanin must be in 1..command={command}, got {motor_fanin}")
        if not 0 <= recurrent_command_synapses <= command * command:
            raise ValueError(
                f"recurrent_command_synapses must be in 0..command**2={command * command}"
            )
        rng = np.random.default_rng(seed)
        units = inter + command + motor
        motors = np.arange(motor)
        commands = np.arange(motor, motor + command)
        inters = np.arange(motor + command, units)
        adj = np.zeros((units, units), np.int8)
        sadj = np.zeros((input_dim, units), np.int8)

        def sign() -> int:
            return int(rng.choice((-1, 1)))

        # sensory -> inter: every sensory input reaches exactly `sensory_fanout` inter neurons
        for s in range(input_dim):
            for d in rng.choice(inters, sensory_fanout, replace=False):
                sadj[s, d] = sign()
        fanin = int(np.clip(input_dim * sensory_fanout // inter, 1, input_dim))
        for d in inters:  # an inter neuron nobody reached gets the mean fan-in
            if not sadj[:, d].any():
                for s in rng.choice(input_dim, fanin, replace=False):
                    sadj[s, d] = sign()
        # inter -> command
        for s in inters:
            for d in rng.choice(commands, inter_fanout, replace=False):
                adj[s, d] = sign()
        fanin = int(np.clip(inter * inter_fanout // command, 1, inter))
        for d in commands:
            if not adj[inters, d].any():
                for s in rng.choice(inters, fanin, replace=False):
                    adj[s, d] = sign()
        # command -> command recurrence: distinct pairs, so the count is exact
        pairs = rng.choice(command * command, recurrent_command_synapses, replace=False)
        for p in pairs:
            adj[commands[p // command], commands[p % command]] = sign()
        # command -> motor
        for d in motors:
            for s in rng.choice(commands, motor_fanin, replace=False):
                adj[s, d] = sign()
        fanout = int(np.clip(motor * motor_fanin // command, 1, motor))
        for s in commands:
            if not adj[s, motors].any():
                for d in rng.choice(motors, fanout, replace=False):
                    adj[s, d] = sign()
        params = dict(
            inter=inter, command=command, motor=motor, sensory_fanout=sensory_fanout,
            inter_fanout=inter_fanout, recurrent_command_synapses=recurrent_command_synapses,
            motor_fanin=motor_fanin, input_dim=input_dim, seed=seed,
        )
        groups = {"motor": motors.tolist(), "command": commands.tolist(), "inter": inters.tolist()}
        layers = [inters.tolist(), commands.tolist(), motors.tolist()]
        return cls(adj, sadj, motor, groups, layers, "ncp", params)

    @classmethod
    def fully_connected(
        cls, units: int = 19, output_dim: int = 1, input_dim: int = 32, seed: int = 0
    ) -> Wiring:
        """Every input and neuron connects to every neuron; polarities random (seeded)."""
        if units < 1 or input_dim < 1:
            raise ValueError("units and input_dim must be >= 1")
        rng = np.random.default_rng(seed)
        adj = rng.choice(np.array([-1, 1], np.int8), (units, units))
        sadj = rng.choice(np.array([-1, 1], np.int8), (input_dim, units))
        params = dict(units=units, output_dim=output_dim, input_dim=input_dim, seed=seed)
        return cls(adj, sadj, output_dim, None, None, "fully_connected", params)

    @classmethod
    def random(
        cls,
        units: int = 19,
        output_dim: int = 1,
        input_dim: int = 32,
        synapses: int | None = None,
        sensory_synapses: int | None = None,
        seed: int = 0,
    ) -> Wiring:
        """Random graph with as many synapses as the paper NCP (the paper's ablation).

        By default the counts are taken from ``Wiring.ncp(input_dim=input_dim, seed=seed)``
        when ``units == 19``; otherwise pass them.
        """
        if synapses is None or sensory_synapses is None:
            ref = cls.ncp(input_dim=input_dim, seed=seed)
            if units != ref.units and (synapses is None or sensory_synapses is None):
                raise ValueError(
                    f"Wiring.random(units={units}) needs synapses= and sensory_synapses= "
                    f"(defaults match the {ref.units}-neuron paper NCP)"
                )
            synapses = int(np.abs(ref.adjacency).sum()) if synapses is None else synapses
            if sensory_synapses is None:
                sensory_synapses = int(np.abs(ref.sensory_adjacency).sum())
        if not 0 <= synapses <= units * units:
            raise ValueError(f"synapses must be in 0..units**2={units * units}")
        if not 0 <= sensory_synapses <= input_dim * units:
            raise ValueError(f"sensory_synapses must be in 0..input_dim*units={input_dim * units}")
        rng = np.random.default_rng(seed + 7919)
        adj = np.zeros(units * units, np.int8)
        adj[rng.choice(units * units, synapses, replace=False)] = rng.choice((-1, 1), synapses)
        sadj = np.zeros(input_dim * units, np.int8)
        idx = rng.choice(input_dim * units, sensory_synapses, replace=False)
        sadj[idx] = rng.choice((-1, 1), sensory_synapses)
        params = dict(units=units, output_dim=output_dim, input_dim=input_dim, synapses=synapses,
                      sensory_synapses=sensory_synapses, seed=seed)
        return cls(adj.reshape(units, units), sadj.reshape(input_dim, units), output_dim,
                   None, None, "random", params)

    @classmethod
    def from_ncps(cls, w: Any) -> Wiring:
        """Convert a built ``ncps.wirings.Wiring`` (NCP, AutoNCP, FullyConnected, Random)."""
        if getattr(w, "sensory_adjacency_matrix", None) is None or w.input_dim is None:
            raise ValueError("the ncps wiring is not built: call wiring.build(input_dim) first")
        units, out = int(w.units), int(w.output_dim)
        num_layers = int(getattr(w, "num_layers", 1))
        layers = [list(map(int, w.get_neurons_of_layer(i))) for i in range(num_layers)]
        groups: dict[str, list[int]] = {"motor": list(range(out)), "command": [], "inter": []}
        for i in range(out, units):
            t = w.get_type_of_neuron(i) if hasattr(w, "get_type_of_neuron") else "inter"
            groups["command" if t == "command" else "inter"].append(i)
        kind = "ncp" if num_layers == 3 else type(w).__name__.lower()
        return cls(
            np.asarray(w.adjacency_matrix), np.asarray(w.sensory_adjacency_matrix), out,
            groups, layers, kind, {"ncps_class": type(w).__name__},
        )

    # ------------------------------------------------------------------ properties
    @property
    def synapse_count(self) -> int:
        """Neuron-to-neuron synapses (sensory synapses: ``sensory_synapse_count``)."""
        return int(np.abs(self.adjacency).sum())

    @property
    def sensory_synapse_count(self) -> int:
        return int(np.abs(self.sensory_adjacency).sum())

    def layer_of(self) -> np.ndarray:
        """Layer index of each neuron (position in ``layers``)."""
        out = np.zeros(self.units, np.int64)
        for k, layer in enumerate(self.layers):
            out[layer] = k
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "units": self.units,
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "adjacency": self.adjacency.astype(int).tolist(),
            "sensory_adjacency": self.sensory_adjacency.astype(int).tolist(),
            "groups": {g: list(v) for g, v in self.groups.items()},
            "layers": [list(v) for v in self.layers],
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Wiring:
        try:
            w = cls(np.array(d["adjacency"], dtype=np.int64),
                    np.array(d["sensory_adjacency"], dtype=np.int64).reshape(-1, d["units"]),
                    d["output_dim"], d.get("groups"), d.get("layers"), d.get("kind", "custom"),
                    d.get("params"))
        except KeyError as e:
            raise ValueError(f"wiring dict is missing key {e}") from None
        if w.units != d["units"] or w.input_dim != d.get("input_dim", w.input_dim):
            raise ValueError("wiring dict: units/input_dim disagree with the adjacency shapes")
        return w

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Wiring) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"Wiring(kind={self.kind!r}, units={self.units}, input_dim={self.input_dim}, "
                f"output_dim={self.output_dim}, synapses={self.synapse_count}, "
                f"sensory_synapses={self.sensory_synapse_count})")

    # ------------------------------------------------------------------ drawing
    def _layout(self, width: float, height: float, margin: float,
                top: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of sensory inputs and neurons: four columns, sensory → inter → command → motor."""
        cols = [list(range(self.input_dim)), self.groups["inter"], self.groups["command"],
                self.groups["motor"]]
        top = margin if top is None else top
        xs = np.linspace(margin, width - margin, 4)
        sens = np.zeros((self.input_dim, 2))
        neur = np.zeros((self.units, 2))
        for c, members in enumerate(cols):
            n = len(members)
            if n == 0:
                continue
            ys = (np.linspace(top, height - margin, n) if n > 1
                  else np.array([(top + height - margin) / 2]))
            target = sens if c == 0 else neur
            for m, y in zip(members, ys):
                target[m] = (xs[c], y)
        return sens, neur

    def draw(self, ax: Any = None, states: np.ndarray | None = None, cmap: str = "coolwarm",
             show_sensory: bool = True, title: str | None = None) -> Any:
        """Matplotlib figure of the four layers; green = excitatory, red = inhibitory.

        ``states`` (units,) colours each neuron (e.g. its live potential).
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(8, 6))
        sens, neur = self._layout(1.0, 1.0, 0.06)
        col = {1: "tab:green", -1: "tab:red"}
        if show_sensory:
            for s, d in zip(*np.nonzero(self.sensory_adjacency)):
                ax.plot([sens[s, 0], neur[d, 0]], [sens[s, 1], neur[d, 1]],
                        color=col[int(self.sensory_adjacency[s, d])], lw=0.4, alpha=0.35)
            ax.scatter(sens[:, 0], sens[:, 1], s=12, c="0.5", zorder=3, label="sensory")
        for s, d in zip(*np.nonzero(self.adjacency)):
            c = col[int(self.adjacency[s, d])]
            if s == d:
                ax.add_patch(plt.Circle((neur[s, 0] + 0.02, neur[s, 1]), 0.02, fill=False,
                                        color=c, lw=0.8))
            else:
                ax.annotate("", xy=neur[d], xytext=neur[s],
                            arrowprops=dict(arrowstyle="-|>", color=c, lw=0.8, alpha=0.8,
                                            connectionstyle="arc3,rad=0.15" if (
                                                abs(neur[s, 0] - neur[d, 0]) < 1e-9) else None))
        colours: Any = ["tab:blue"] * self.units
        if states is not None:
            st = np.asarray(states, dtype=float).reshape(-1)
            if st.shape != (self.units,):
                raise ValueError(f"states must have shape ({self.units},), got {np.shape(states)}")
            colours = st
        sc = ax.scatter(neur[:, 0], neur[:, 1], s=90, c=colours, cmap=cmap, zorder=4,
                        edgecolors="k", linewidths=0.6)
        if states is not None:
            ax.figure.colorbar(sc, ax=ax, fraction=0.04, label="neuron state")
        for x, name in zip(np.linspace(0.06, 0.94, 4), ("sensory", "inter", "command", "motor")):
            ax.text(x, -0.02, name, ha="center", va="center", fontsize=9)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(1.06, -0.04)
        ax.axis("off")
        ax.set_title(title or f"{self.kind} wiring: {self.units} neurons, "
                     f"{self.synapse_count} + {self.sensory_synapse_count} sensory synapses")
        return ax

    def draw_image(self, states: np.ndarray | None = None, size: tuple[int, int] = (480, 360),
                   vmax: float = 1.0, show_sensory: bool = True) -> np.ndarray:
        """Fast OpenCV rendering, RGB uint8 (height, width, 3) for ``size=(width, height)``.

        Neurons are coloured blue (negative) → white → red (positive) by ``states / vmax``;
        synapses green (excitatory) or red (inhibitory). The static part is cached, so a
        frame costs about a millisecond (for videos of live neuron states).
        """
        import cv2

        w, h = int(size[0]), int(size[1])
        key = (w, h, show_sensory)
        cache = self.__dict__.setdefault("_img_cache", {})
        if key not in cache:
            img = np.full((h, w, 3), 255, np.uint8)
            sens, neur = self._layout(w, h, 0.08 * min(w, h), top=0.13 * h + 6)
            sens_i, neur_i = sens.astype(np.int32), neur.astype(np.int32)
            green, red = (40, 160, 40), (210, 50, 50)
            if show_sensory:
                for s, d in zip(*np.nonzero(self.sensory_adjacency)):
                    c = green if self.sensory_adjacency[s, d] > 0 else red
                    cv2.line(img, tuple(sens_i[s]), tuple(neur_i[d]),
                             tuple(int(v * 0.35 + 255 * 0.65) for v in c), 1, cv2.LINE_AA)
                for p in sens_i:
                    cv2.circle(img, tuple(p), max(2, h // 120), (120, 120, 120), -1, cv2.LINE_AA)
            r = max(4, min(w, h) // 30)
            for s, d in zip(*np.nonzero(self.adjacency)):
                c = green if self.adjacency[s, d] > 0 else red
                if s == d:
                    cv2.circle(img, (int(neur_i[s, 0] + r), int(neur_i[s, 1] - r)), r, c, 1,
                               cv2.LINE_AA)
                else:  # stop at the target's rim so the arrowhead stays visible
                    vec = (neur_i[d] - neur_i[s]).astype(float)
                    length = max(1.0, float(np.hypot(*vec)))
                    end = neur_i[d] - vec / length * (r + 1)
                    cv2.arrowedLine(img, tuple(neur_i[s]), (int(end[0]), int(end[1])), c, 1,
                                    cv2.LINE_AA, tipLength=min(0.3, 0.6 * r / length))
            font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, min(w, h) / 700)
            for x, name in zip(np.linspace(0.08 * min(w, h), w - 0.08 * min(w, h), 4),
                               ("sensory", "inter", "command", "motor")):
                (tw, th), _ = cv2.getTextSize(name, font, scale, 1)
                tx = int(np.clip(x - tw / 2, 2, w - tw - 2))
                cv2.putText(img, name, (tx, th + 4), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
            cache[key] = (img, neur_i, r)
        base, neur_i, r = cache[key]
        img = base.copy()
        if states is None:
            cols = np.tile(np.array([[70, 110, 200]]), (self.units, 1))
        else:
            st = np.asarray(states, dtype=np.float64).reshape(-1)
            if st.shape != (self.units,):
                raise ValueError(f"states must have shape ({self.units},), got {np.shape(states)}")
            z = np.clip(np.nan_to_num(st / max(vmax, 1e-12)), -1.0, 1.0)[:, None]
            white = np.array([[255.0, 255.0, 255.0]])
            pos, neg = np.array([[214.0, 39.0, 40.0]]), np.array([[31.0, 119.0, 180.0]])
            cols = np.where(z >= 0, white + z * (pos - white), white - z * (neg - white))
        for i in range(self.units):
            c = tuple(int(v) for v in cols[i])
            cv2.circle(img, (int(neur_i[i, 0]), int(neur_i[i, 1])), r, c, -1, cv2.LINE_AA)
            cv2.circle(img, (int(neur_i[i, 0]), int(neur_i[i, 1])), r, (0, 0, 0), 1, cv2.LINE_AA)
        return img
