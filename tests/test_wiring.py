"""Wiring: the paper NCP preset, its ablations, serialisation, ncps import and drawing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policies.wiring import Wiring


def test_paper_preset_structure() -> None:
    w = Wiring.ncp(seed=3)
    assert (w.units, w.input_dim, w.output_dim) == (19, 32, 1)
    g = w.groups
    assert g["motor"] == [0] and len(g["command"]) == 6 and len(g["inter"]) == 12
    inter, cmd, mot = g["inter"], g["command"], g["motor"]
    A, S = np.abs(w.adjacency), np.abs(w.sensory_adjacency)
    # sensory inputs reach inter neurons only, exactly `sensory_fanout` of them each
    assert S[:, cmd + mot].sum() == 0
    assert (S[:, inter].sum(1) == 6).all()
    # inter neurons fan out to command neurons only (4 each, plus top-ups for unreached ones)
    assert (A[np.ix_(inter, cmd)].sum(1) >= 4).all()
    assert A[np.ix_(inter, inter + mot)].sum() == 0
    assert A[np.ix_(cmd, cmd)].sum() == 6  # recurrent command synapses, exact
    assert A[np.ix_(cmd, mot)].sum(0).min() >= 6  # motor fan-in
    assert A[np.ix_(mot, range(19))].sum() == 0  # motor neurons have no outgoing synapses
    # every neuron is reachable and the polarities are signed
    assert S.sum(0)[inter].min() > 0 and A.sum(0)[cmd].min() > 0
    assert set(np.unique(w.adjacency)) == {-1, 0, 1}
    assert w.synapse_count == int(A.sum()) and 55 <= w.synapse_count <= 70
    assert w.layers == [inter, cmd, mot]


def test_seeded_and_ablations_match_counts() -> None:
    a, b, c = Wiring.ncp(seed=1), Wiring.ncp(seed=1), Wiring.ncp(seed=2)
    assert a == b and a != c
    r = Wiring.random(seed=1)
    assert r.synapse_count == a.synapse_count
    assert r.sensory_synapse_count == a.sensory_synapse_count
    assert r.units == a.units and r.output_dim == 1 and not np.array_equal(r.adjacency, a.adjacency)
    f = Wiring.fully_connected(seed=1)
    assert f.synapse_count == 19 * 19 and f.sensory_synapse_count == 32 * 19
    assert Wiring.random(units=10, output_dim=2, input_dim=4, synapses=20, sensory_synapses=8,
                         seed=0).synapse_count == 20


def test_json_round_trip() -> None:
    for w in (Wiring.ncp(seed=5), Wiring.random(seed=5), Wiring.fully_connected(units=4, input_dim=3)):
        d = json.loads(json.dumps(w.to_dict()))
        w2 = Wiring.from_dict(d)
        assert w2 == w and w2.layers == w.layers and w2.groups == w.groups
        assert w2.adjacency.dtype == np.int8


def test_from_ncps_keeps_adjacency_and_layers() -> None:
    nw = pytest.importorskip("ncps.wirings")
    src = nw.NCP(12, 6, 1, 6, 4, 6, 6)
    src.build(32)
    w = Wiring.from_ncps(src)
    assert np.array_equal(w.adjacency, src.adjacency_matrix)
    assert np.array_equal(w.sensory_adjacency, src.sensory_adjacency_matrix)
    assert w.layers == [src.get_neurons_of_layer(i) for i in range(3)]
    assert w.groups["command"] == list(range(1, 7))
    with pytest.raises(ValueError, match="not built"):
        Wiring.from_ncps(nw.AutoNCP(10, 2))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sensory_fanout"):
        Wiring.ncp(sensory_fanout=13)
    with pytest.raises(ValueError, match="motor_fanin"):
        Wiring.ncp(motor_fanin=7)
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        Wiring(np.full((2, 2), 2), np.zeros((1, 2)), 1)
    with pytest.raises(ValueError, match="sensory_adjacency"):
        Wiring(np.zeros((2, 2)), np.zeros((1, 3)), 1)
    with pytest.raises(ValueError, match="synapses="):
        Wiring.random(units=7)


def test_draw_and_draw_image() -> None:
    import matplotlib

    matplotlib.use("Agg")
    w = Wiring.ncp()
    ax = w.draw(states=np.linspace(-1, 1, 19))
    assert len(ax.collections) >= 2
    img = w.draw_image(size=(320, 240))
    assert img.shape == (240, 320, 3) and img.dtype == np.uint8
    hot = w.draw_image(np.ones(19), size=(320, 240))
    cold = w.draw_image(-np.ones(19), size=(320, 240))
    # positive states paint neurons red, negative blue
    diff = np.any(hot != cold, axis=2)
    assert diff.sum() > 100
    assert hot[diff][:, 0].mean() > hot[diff][:, 2].mean()
    assert cold[diff][:, 2].mean() > cold[diff][:, 0].mean()
    with pytest.raises(ValueError, match="states must have shape"):
        w.draw_image(np.ones(5))
