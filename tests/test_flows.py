"""Bandwidth sharing (engine/flows.py) against its closed forms.

Discipline: after its path latency, a flow moves bytes at its max-min fair share of every
resource on its path, recomputed whenever a flow starts or ends.
"""
import math

import pytest
import simpy

from simulator.engine.flows import Flow, FlowNetwork, Resource, max_min_rates


def test_lone_transfer_is_latency_plus_bytes_over_min_bandwidth():
    net = FlowNetwork(simpy.Environment())
    dev, link, dst = Resource("dram", 200e9), Resource("pcie", 55e9), Resource("hbm", 3000e9)
    f = Flow(352_321_536, (dev, link, dst), latency=110e-9 + 10e-6)
    assert net.run_isolated([f], 0.0, math.inf)
    assert f.done_at == pytest.approx(110e-9 + 10e-6 + 352_321_536 / 55e9, rel=1e-12)
    # every resource on the path carried exactly the flow's bytes
    assert dev.bytes == link.bytes == dst.bytes == pytest.approx(352_321_536)


@pytest.mark.parametrize("b1,b2", [(1e9, 1e9), (1e9, 3e9), (5e8, 2e9)])
def test_two_concurrent_transfers_share_equally(b1, b2):
    """Processor sharing: the smaller ends at lat + 2*b1/C, the larger at lat + (b1+b2)/C."""
    C, lat = 25e9, 5e-6
    net = FlowNetwork(simpy.Environment())
    link = Resource("pcie", C)
    a, b = Flow(b1, (link,), lat), Flow(b2, (link,), lat)
    assert net.run_isolated([a, b], 1.0, math.inf)
    assert a.done_at - 1.0 == pytest.approx(lat + 2 * b1 / C, rel=1e-9)
    assert b.done_at - 1.0 == pytest.approx(lat + (b1 + b2) / C, rel=1e-9)
    assert link.busy_time == pytest.approx((b1 + b2) / C, rel=1e-9)


def test_event_path_matches_closed_form_when_second_flow_arrives_midway():
    """Flow A (10 B) alone at 10 B/s for 0.5 s, then shares with B: A ends at 1.5, B at 2.0."""
    env = simpy.Environment()
    net = FlowNetwork(env)
    link = Resource("l", 10.0)
    log = []

    def start(delay, name):
        yield env.timeout(delay)
        (ev,) = net.start([Flow(10, (link,), 0.0)])
        yield ev
        log.append((name, env.now))

    env.process(start(0.0, "a"))
    env.process(start(0.5, "b"))
    env.run()
    assert log == [("a", pytest.approx(1.5)), ("b", pytest.approx(2.0))]
    assert link.bytes == pytest.approx(20.0)


def test_max_min_fairness_with_a_bottleneck_elsewhere():
    """Flow x crosses a 2 B/s link; y and x share a 10 B/s link: x gets 2, y gets 8."""
    slow, shared = Resource("slow", 2.0), Resource("shared", 10.0)
    x, y = Flow(1, (slow, shared), 0.0), Flow(1, (shared,), 0.0)
    max_min_rates([x, y])
    assert (x.rate, y.rate) == (pytest.approx(2.0), pytest.approx(8.0))


def test_isolated_refuses_when_an_event_is_due_first():
    net = FlowNetwork(simpy.Environment())
    f = Flow(10, (Resource("l", 10.0),), 0.0)
    assert not net.run_isolated([f], 0.0, horizon=0.5)     # would end at 1.0 > 0.5
    assert net.idle and math.isnan(f.done_at)


def test_background_flows_get_only_what_demand_leaves():
    """A demand flow on a 10 B/s link runs at full rate beside a background flow, which gets
    nothing until the demand flow ends: demand 10 B ends at 1.0; background 10 B at 2.0."""
    env = simpy.Environment()
    net = FlowNetwork(env)
    link = Resource("l", 10.0)
    bg = Flow(10, (link,), 0.0, priority=1)
    fg = Flow(10, (link,), 0.0)
    net.start([bg, fg])
    env.run()
    assert fg.done_at == pytest.approx(1.0) and bg.done_at == pytest.approx(2.0)


def test_promoted_background_flow_shares_as_demand():
    """Promoted at t=0.5 (5 B left; the demand flow has 5 B left too), both then share
    equally: they end together at 1.5."""
    env = simpy.Environment()
    net = FlowNetwork(env)
    link = Resource("l", 10.0)
    bg = Flow(10, (link,), 0.0, priority=1)
    net.start([bg])
    def later():
        yield env.timeout(0.5)         # bg alone moved 5 B by now
        fg = Flow(5, (link,), 0.0)
        net.start([fg])
        net.promote([bg])
        yield fg.event
        log.append(("fg", env.now))
    log = []
    env.process(later())
    env.run()
    assert log == [("fg", pytest.approx(1.5))] and bg.done_at == pytest.approx(1.5)
