"""Bandwidth sharing (engine/flows.py) against its closed forms and a per-flow reference.

Discipline: after its path latency, a flow moves bytes at its max-min fair share of every
resource on its path (strict priority between classes, per-flow caps), recomputed whenever a
flow activates, ends or is promoted. The network has no events of its own: tests drive it
with start / promote / advance_to / run_until_done, as the engine's executor does.
"""
import math
import random

import pytest

from simulator.engine.flows import Flow, FlowNetwork, Resource, max_min_rates
import flows_reference as ref

INF = math.inf


def run(net, flows, at=0.0):
    net.start(flows, at)
    return net.run_until_done(flows)


# ---------------------------------------------------------------------- closed forms
def test_lone_transfer_is_latency_plus_bytes_over_min_bandwidth():
    dev, link, dst = Resource("dram", 200e9), Resource("pcie", 55e9), Resource("hbm", 3000e9)
    lat = 110e-9 + 10e-6
    f = Flow(352_321_536, (dev, link, dst), latency=lat)
    net = FlowNetwork()
    assert run(net, [f]) == f.done_at
    assert f.done_at == pytest.approx(lat + 352_321_536 / 55e9, rel=1e-12)
    assert f.start_at == 0.0 and f.activate_at == lat
    # every resource on the path carried exactly the flow's bytes, busy only after latency
    assert dev.bytes == link.bytes == dst.bytes == pytest.approx(352_321_536, rel=1e-12)
    assert dev.busy_time == pytest.approx(352_321_536 / 55e9, rel=1e-12)
    assert net.idle and net.next_change() == INF and net.t == f.done_at


def test_lone_transfer_through_run_isolated():
    link = Resource("pcie", 55e9)
    f = Flow(1e9, (link,), latency=1e-6)
    net = FlowNetwork()
    assert net.run_isolated([f], 2.0, INF)
    assert f.done_at == pytest.approx(2.0 + 1e-6 + 1e9 / 55e9, rel=1e-12)
    assert link.bytes == pytest.approx(1e9)


@pytest.mark.parametrize("b1,b2", [(1e9, 1e9), (1e9, 3e9), (5e8, 2e9)])
@pytest.mark.parametrize("isolated", [False, True])
def test_two_concurrent_transfers_share_equally(b1, b2, isolated):
    """Processor sharing: the smaller ends at lat + 2*b1/C, the larger at lat + (b1+b2)/C."""
    C, lat = 25e9, 5e-6
    net = FlowNetwork()
    link = Resource("pcie", C)
    a, b = Flow(b1, (link,), lat), Flow(b2, (link,), lat)
    if isolated:
        assert net.run_isolated([a, b], 1.0, INF)
    else:
        run(net, [a, b], 1.0)
    assert a.done_at - 1.0 == pytest.approx(lat + 2 * b1 / C, rel=1e-9)
    assert b.done_at - 1.0 == pytest.approx(lat + (b1 + b2) / C, rel=1e-9)
    assert link.busy_time == pytest.approx((b1 + b2) / C, rel=1e-9)
    assert link.bytes == pytest.approx(b1 + b2, rel=1e-12)


@pytest.mark.parametrize("sizes", [(1.0, 2.0, 4.0), (3.0, 3.0, 5.0), (2.0, 7.0, 7.0),
                                   (4.0, 1.0, 2.0)])
def test_three_concurrent_transfers(sizes):
    """b1 <= b2 <= b3 on C: lat + 3 b1/C, lat + (b1 + 2 b2)/C, lat + (b1 + b2 + b3)/C."""
    C, lat = 10.0, 0.25
    link = Resource("l", C)
    flows = [Flow(s, (link,), lat) for s in sizes]
    run(FlowNetwork(), flows)
    b1, b2, b3 = sorted(sizes)
    want = {b1: lat + 3 * b1 / C, b2: lat + (b1 + 2 * b2) / C, b3: lat + (b1 + b2 + b3) / C}
    for f in flows:
        assert f.done_at == pytest.approx(want[f.size], rel=1e-12)


def test_reference_matches_the_closed_forms_too():
    """The oracle the randomized test trusts agrees with the closed forms."""
    out = ref.simulate([10.0], [(0.0, s, (0,), 0.25, INF, 0, None) for s in (1.0, 2.0, 4.0)])
    assert out["done"] == pytest.approx([0.25 + 0.3, 0.25 + 0.5, 0.25 + 0.7], rel=1e-12)
    out = ref.simulate([10.0], [(0.0, 10, (0,), 0, INF, 1, None), (0.5, 10, (0,), 0, INF, 0, None)])
    assert out["done"] == pytest.approx([2.0, 1.5]) and out["busy"] == pytest.approx([2.0])


def test_second_flow_arriving_midway():
    """Flow A (10 B) alone at 10 B/s for 0.5 s, then shares with B: A ends at 1.5, B at 2.0."""
    net = FlowNetwork()
    link = Resource("l", 10.0)
    log = []
    net.on_complete = lambda f: log.append((f.tag, f.done_at))
    a, b = Flow(10, (link,), 0.0, tag="a"), Flow(10, (link,), 0.0, tag="b")
    net.start([a], 0.0)
    net.start([b], 0.5)
    assert net.remaining(a) == pytest.approx(5.0) and net.remaining(b) == 10.0
    assert net.rate(a) == net.rate(b) == pytest.approx(5.0)
    net.advance_to(10.0)
    assert log == [("a", pytest.approx(1.5)), ("b", pytest.approx(2.0))]
    assert link.bytes == pytest.approx(20.0) and link.busy_time == pytest.approx(2.0)


def test_background_flow_is_preempted_and_resumes():
    """Background 10 B alone from 0 (5 B done by 0.5); demand 10 B from 0.5 takes the whole
    link: demand ends at 1.5; background is paused meanwhile and ends at 2.0."""
    net = FlowNetwork()
    link = Resource("l", 10.0)
    bg, fg = Flow(10, (link,), 0.0, priority=1), Flow(10, (link,), 0.0)
    net.start([bg], 0.0)
    net.start([fg], 0.5)
    assert net.rate(bg) == 0.0 and net.rate(fg) == 10.0
    net.advance_to(1.0)
    assert net.remaining(bg) == pytest.approx(5.0)      # paused: nothing moved since 0.5
    assert net.remaining(fg) == pytest.approx(5.0)
    assert net.run_until_done([fg]) == pytest.approx(1.5)
    assert math.isnan(bg.done_at) and net.t == pytest.approx(1.5)
    assert net.rate(bg) == 10.0                          # resumed
    assert net.run_until_done([bg]) == pytest.approx(2.0)
    assert link.busy_time == pytest.approx(2.0) and link.bytes == pytest.approx(20.0)


def test_background_with_latency_preempted_on_a_shared_bottleneck_only():
    """Background over (x, L), demand over (y, L); L = 10 B/s is the bottleneck of both and
    x, y are 100 B/s. Background 10 B from 0 (latency 0.1): 0.1..0.4 alone moves 3 B; demand
    4 B from 0.4 (latency 0) holds L until 0.8; background resumes with 7 B: ends at 1.5."""
    x, y, L = Resource("x", 100.0), Resource("y", 100.0), Resource("L", 10.0)
    net = FlowNetwork()
    bg = Flow(10, (x, L), 0.1, priority=1)
    fg = Flow(4, (y, L), 0.0)
    net.start([bg], 0.0)
    net.start([fg], 0.4)
    net.advance_to(0.5)
    assert net.rate(bg) == 0.0 and net.rate(fg) == 10.0
    net.run_until_done([fg, bg])
    assert fg.done_at == pytest.approx(0.8) and bg.done_at == pytest.approx(1.5)
    # a paused background flow still keeps its resources busy (it is past its latency)
    assert x.busy_time == pytest.approx(1.4) and y.busy_time == pytest.approx(0.4)
    assert (x.bytes, y.bytes, L.bytes) == (pytest.approx(10), pytest.approx(4), pytest.approx(14))


def test_background_starting_with_demand_waits_for_it():
    net = FlowNetwork()
    link = Resource("l", 10.0)
    bg, fg = Flow(10, (link,), 0.0, priority=1), Flow(10, (link,), 0.0)
    run(net, [bg, fg])
    assert fg.done_at == pytest.approx(1.0) and bg.done_at == pytest.approx(2.0)


def test_background_gets_what_demand_leaves():
    """A capped demand flow (4 B/s) leaves 6 B/s of a 10 B/s link to the background flow."""
    link = Resource("l", 10.0)
    net = FlowNetwork()
    fg, bg = Flow(8, (link,), 0.0, cap=4.0), Flow(12, (link,), 0.0, priority=1)
    net.start([fg, bg], 0.0)
    assert net.rate(fg) == 4.0 and net.rate(bg) == pytest.approx(6.0)
    net.run_until_done([fg, bg])
    assert fg.done_at == pytest.approx(2.0) and bg.done_at == pytest.approx(2.0)


def test_promoted_background_flow_shares_as_demand():
    """Promoted at t=0.5 (5 B left; the demand flow has 5 B too), both share: end at 1.5."""
    net = FlowNetwork()
    link = Resource("l", 10.0)
    bg = Flow(10, (link,), 0.0, priority=1)
    net.start([bg], 0.0)
    fg = Flow(5, (link,), 0.0)
    net.start([fg], 0.5)
    net.promote([bg], 0.5)
    assert bg.priority == 0 and net.rate(bg) == net.rate(fg) == pytest.approx(5.0)
    assert net.run_until_done([fg]) == pytest.approx(1.5)
    assert bg.done_at == pytest.approx(1.5)
    assert link.bytes == pytest.approx(15.0)


def test_promotion_during_latency_phase():
    """A background flow promoted before it activates arrives as demand: it shares equally
    with a demand flow already running (3 B/s... both 10 B/s / 2)."""
    net = FlowNetwork()
    link = Resource("l", 10.0)
    fg = Flow(10, (link,), 0.0)
    bg = Flow(5, (link,), 0.5, priority=1)
    net.start([fg, bg], 0.0)
    net.promote([bg], 0.2)
    net.run_until_done([fg, bg])
    # 0..0.5 fg alone (5 B); then both at 5 B/s: bg's 5 B end at 1.5 with fg's remaining 5 B
    assert bg.done_at == pytest.approx(1.5) and fg.done_at == pytest.approx(1.5)


def test_promote_ignores_finished_and_demand_flows():
    net = FlowNetwork()
    link = Resource("l", 10.0)
    a, b = Flow(1, (link,), 0.0, priority=1), Flow(1, (link,), 0.0)
    run(net, [a, b])
    net.promote([a, b], net.t)
    assert a.priority == 1 and net.idle


def test_max_min_fairness_with_a_bottleneck_elsewhere():
    """Flow x crosses a 2 B/s link; y and x share a 10 B/s link: x gets 2, y gets 8."""
    slow, shared = Resource("slow", 2.0), Resource("shared", 10.0)
    x, y = Flow(2, (slow, shared), 0.0), Flow(16, (shared,), 0.0)
    assert max_min_rates([x, y]) == [pytest.approx(2.0), pytest.approx(8.0)]
    net = FlowNetwork()
    net.start([x, y], 0.0)
    assert net.rate(x) == pytest.approx(2.0) and net.rate(y) == pytest.approx(8.0)
    net.run_until_done([x, y])
    # y: 8 B by t=1 (x ends), then alone at 10 B/s for its last 8 B
    assert x.done_at == pytest.approx(1.0) and y.done_at == pytest.approx(1.8)
    assert shared.bytes == pytest.approx(18.0) and slow.bytes == pytest.approx(2.0)


def test_per_flow_caps():
    """Two flows on 10 B/s, one capped at 2: rates 2 and 8; the capped flow's 4 B end at 2.0,
    the other's 8 B at 1.0 (then the capped one stays at its cap)."""
    link = Resource("l", 10.0)
    a, b = Flow(4, (link,), 0.0, cap=2.0), Flow(8, (link,), 0.0)
    assert max_min_rates([a, b]) == [2.0, pytest.approx(8.0)]
    net = FlowNetwork()
    net.start([a, b], 0.0)
    net.run_until_done([a, b])
    assert b.done_at == pytest.approx(1.0) and a.done_at == pytest.approx(2.0)
    # three capped flows in one group: 3 x 2 B/s < 10 B/s, each at its cap
    c = [Flow(2, (link,), 0.0, cap=2.0) for _ in range(3)]
    net.start(c, 3.0)
    assert net.rate(c[0]) == 2.0
    assert net.run_until_done(c) == pytest.approx(4.0)


def test_busy_time_and_bytes_per_resource():
    """busy_time counts only time with a flow past its latency crossing the resource; gaps and
    latency phases are not counted."""
    r1, r2 = Resource("r1", 10.0), Resource("r2", 5.0)
    net = FlowNetwork()
    a = Flow(10, (r1,), 0.5)                   # r1 busy 0.5..1.5
    b = Flow(10, (r1, r2), 0.0)                # r1 and r2 busy 3..5 (5 B/s on r2)
    net.start([a], 0.0)
    net.run_until_done([a])
    net.start([b], 3.0)
    net.run_until_done([b])
    net.close(10.0)
    assert r1.busy_time == pytest.approx(1.0 + 2.0) and r2.busy_time == pytest.approx(2.0)
    assert r1.bytes == pytest.approx(20.0) and r2.bytes == pytest.approx(10.0)
    assert net.t == 10.0


def test_close_settles_flows_still_moving():
    link = Resource("l", 10.0)
    net = FlowNetwork()
    f = Flow(100, (link,), 0.0, priority=1)
    net.start([f], 0.0)
    net.close(2.0)
    assert link.bytes == pytest.approx(20.0) and link.busy_time == pytest.approx(2.0)
    assert net.remaining(f) == pytest.approx(80.0)
    net.close(3.0)                             # idempotent accounting, no double count
    assert link.busy_time == pytest.approx(3.0) and link.bytes == pytest.approx(30.0)


def test_zero_size_zero_latency_flow_completes_inside_start():
    link = Resource("l", 10.0)
    net = FlowNetwork()
    seen = []
    net.on_complete = lambda f: seen.append((f.tag, f.done_at, net.t))
    z = Flow(0, (link,), 0.0, tag="z")
    local = Flow(5, (), 0.0, tag="local")      # empty path, no cap: nothing to cross
    net.start([z, local], 1.0)
    assert seen == [("z", 1.0, 1.0), ("local", 1.0, 1.0)] and net.idle
    zl = Flow(0, (link,), 0.25, tag="zl")      # zero size but a latency: done on arrival
    net.start([zl], 2.0)
    assert math.isnan(zl.done_at) and net.next_change() == 2.25
    net.advance_to(3.0)
    assert zl.done_at == 2.25 and link.bytes == 0.0 and link.busy_time == 0.0


def test_on_complete_in_completion_time_order_once_each():
    link = Resource("l", 10.0)
    other = Resource("m", 1.0)
    net = FlowNetwork()
    seen = []
    net.on_complete = seen.append
    fs = [Flow(s, (link,), 0.1 * i) for i, s in enumerate((5, 1, 3, 3, 8))]
    fs.append(Flow(2, (other,), 0.0, priority=1))
    net.start(fs, 0.0)
    net.advance_to(INF)
    assert sorted(seen, key=id) == sorted(fs, key=id)
    assert [f.done_at for f in seen] == sorted(f.done_at for f in fs)


def test_advance_to_before_next_change_only_moves_the_clock():
    link = Resource("l", 10.0)
    net = FlowNetwork()
    seen = []
    net.on_complete = seen.append
    a, b = Flow(10, (link,), 0.1), Flow(30, (link,), 0.1, priority=1)
    net.start([a, b], 0.0)
    net.advance_to(0.2)                        # past the activation
    nxt = net.next_change()
    assert nxt == pytest.approx(1.1)
    before = (link.bytes, link.busy_time, link._active, net.rate(a), net.rate(b))
    steps = []
    net._step = lambda: steps.append(1)        # any applied change would call this
    for t in (0.3, 0.7, 1.0, 1.09):
        net.advance_to(t)
        assert net.t == t and net.next_change() == nxt
    assert not steps and not seen
    assert (link.bytes, link.busy_time, link._active, net.rate(a), net.rate(b)) == before
    assert net.remaining(a) == pytest.approx(10 - 10 * (1.09 - 0.1))
    del net._step
    net.advance_to(1.1)
    assert seen == [a] and a.done_at == pytest.approx(1.1)


def test_advance_to_never_moves_back():
    net = FlowNetwork()
    net.advance_to(5.0)
    net.advance_to(3.0)
    assert net.t == 5.0


def test_start_before_the_network_time_is_refused():
    link = Resource("l", 10.0)
    net = FlowNetwork()
    net.advance_to(2.0)
    with pytest.raises(ValueError, match="before"):
        net.start([Flow(1, (link,), 0.0)], 1.0)


def test_run_until_done_of_an_unstarted_flow_is_an_error():
    with pytest.raises(RuntimeError, match="never finish"):
        FlowNetwork().run_until_done([Flow(1, (Resource("l", 1.0),), 0.0)])


def test_isolated_refuses_when_an_event_is_due_first():
    net = FlowNetwork()
    link = Resource("l", 10.0)
    f = Flow(10, (link,), 0.0)
    assert not net.run_isolated([f], 0.0, horizon=0.5)     # would end at 1.0 > 0.5
    assert net.idle and math.isnan(f.done_at)
    g = Flow(10, (link,), 0.0, cap=2.0)                      # general (shadow) case
    assert not net.run_isolated([g], 0.0, horizon=4.0)
    assert net.idle and math.isnan(g.done_at) and link.bytes == 0.0
    assert net.isolated_uniform((link,), 0.0, 10, 2, 0.0, horizon=1.5) is None
    assert net.isolated_same_path((link,), 0.0, [5, 10], 0.0, horizon=1.4) is None
    assert link.bytes == 0.0 and net.t == 0.0
    net.start([Flow(1, (link,), 0.0)], 0.0)                  # busy: closed forms refuse
    assert net.isolated_uniform((link,), 0.0, 1, 1, 0.0, INF) is None
    assert not net.run_isolated([Flow(1, (link,), 0.0)], 0.0, INF)


def test_closed_forms_equal_the_network():
    """isolated_same_path / isolated_uniform / run_isolated (shadow) give what the network
    gives for the same flows, and account the same bytes and busy time."""
    sizes = [3.0, 1.0, 4.0, 1.0, 5.0]
    path_a = (Resource("d", 20.0), Resource("l", 8.0))
    done = FlowNetwork().isolated_same_path(path_a, 0.3, sizes, 1.0, INF)
    path_b = (Resource("d", 20.0), Resource("l", 8.0))
    fs = [Flow(s, path_b, 0.3) for s in sizes]
    run(FlowNetwork(), fs, 1.0)
    assert done == pytest.approx([f.done_at for f in fs], rel=1e-12)
    for ra, rb in zip(path_a, path_b):
        assert (ra.bytes, ra.busy_time) == (pytest.approx(rb.bytes), pytest.approx(rb.busy_time))
    net = FlowNetwork()
    end = net.isolated_uniform(path_a, 0.3, 2.0, 4, 10.0, INF)
    assert end == pytest.approx(10.3 + 8.0 / 8.0) and net.t == end
    # mixed paths and caps: run_isolated through its shadow network
    shared = Resource("s", 10.0)
    x = Flow(6, (Resource("x", 3.0), shared), 0.1)
    y = Flow(6, (shared,), 0.0, cap=5.0)
    seen = []
    net = FlowNetwork()
    net.on_complete = seen.append
    assert net.run_isolated([x, y], 1.0, INF)
    # y alone at its cap 5 until 1.1 (0.5 B), then x 3 and y 5; y ends 1.1 + 5.5/5 = 2.2,
    # x has 6 - 3.3 = 2.7 B left, alone at 3: ends 3.1
    assert y.done_at == pytest.approx(2.2) and x.done_at == pytest.approx(3.1)
    assert seen == [y, x] and net.t == pytest.approx(3.1) and net.idle
    assert shared.bytes == pytest.approx(12.0) and shared.busy_time == pytest.approx(2.1)


# ---------------------------------------------------------------------- against the reference
def random_scenario(rng: random.Random):
    caps = [rng.choice([1.0, 2.0, 5.0, 10.0, rng.uniform(1, 20)]) for _ in range(rng.randint(2, 4))]
    paths = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.05:
            paths.append(((), 0.0))
            continue
        k = rng.randint(1, len(caps))
        paths.append((tuple(rng.sample(range(len(caps)), k)),
                      rng.choice([0.0, 0.05, 0.1, rng.uniform(0, 0.3)])))
    specs = []
    for _ in range(rng.randint(1, 12)):
        path, lat = rng.choice(paths)
        if rng.random() < 0.1:
            lat = rng.uniform(0, 0.2)
        start = rng.choice([0.0, 0.0, 0.5, 1.0, round(rng.uniform(0, 3), 1), rng.uniform(0, 3)])
        size = rng.choice([0.0, 1.0, 2.5, 4.0, rng.uniform(0.1, 10), rng.uniform(0.1, 10)])
        cap = rng.choice([INF, INF, INF, 2.0, 4.0]) if rng.random() < 0.3 else INF
        prio = rng.choice([0, 0, 1, 1, 2])
        promote = None
        if prio and rng.random() < 0.4:
            promote = start + rng.choice([rng.uniform(0, 2), 0.5])
        specs.append((start, size, path, lat, cap, prio, promote))
    return caps, specs


def drive(caps, specs, rng=None, ref_done=None):
    """Run ``specs`` on a FlowNetwork as the engine would: start/promote calls in time order
    (flows starting together in one call), random advance_to in between and, when ``ref_done``
    says it cannot overrun the next call, run_until_done of some started flows."""
    res = [Resource(f"r{i}", c) for i, c in enumerate(caps)]
    flows = [Flow(size, tuple(res[i] for i in path), lat, tag=k, cap=cap, priority=prio)
             for k, (start, size, path, lat, cap, prio, _p) in enumerate(specs)]
    net = FlowNetwork()
    seen = []
    net.on_complete = seen.append
    actions: dict = {}
    for k, (start, *_rest, promote) in enumerate(specs):
        actions.setdefault((start, 0), []).append(k)
        if promote is not None:
            actions.setdefault((promote, 1), []).append(k)
    keys = sorted(actions)
    started = []
    for i, (t, kind) in enumerate(keys):
        if rng is not None and rng.random() < 0.3:
            net.advance_to(rng.uniform(net.t, t))
        if kind == 0:
            net.start([flows[k] for k in actions[(t, kind)]], t)
            started += actions[(t, kind)]
        else:
            net.promote([flows[k] for k in actions[(t, kind)]], t)
        nxt = keys[i + 1][0] if i + 1 < len(keys) else INF
        if rng is not None and ref_done is not None and rng.random() < 0.5:
            sub = [k for k in started if rng.random() < 0.5 and ref_done[k] < nxt - 1e-6]
            if sub:
                t_before = net.t
                end = net.run_until_done([flows[k] for k in sub])
                assert end == pytest.approx(max(ref_done[k] for k in sub), rel=1e-9, abs=1e-12)
                assert net.t == max(t_before, end)      # not beyond the last of them
    end = net.run_until_done(flows)
    net.close(end)
    assert net.idle
    return flows, res, seen


@pytest.mark.parametrize("seed", range(200))
def test_random_scenarios_match_the_per_flow_reference(seed):
    rng = random.Random(seed)
    caps, specs = random_scenario(rng)
    want = ref.simulate(caps, specs)
    flows, res, seen = drive(caps, specs, rng, want["done"])
    for f, d in zip(flows, want["done"]):
        assert f.done_at == pytest.approx(d, rel=1e-9, abs=1e-12), (f, specs[f.tag])
    for r, b, busy in zip(res, want["bytes"], want["busy"]):
        assert r.bytes == pytest.approx(b, rel=1e-9, abs=1e-9), r
        assert r.busy_time == pytest.approx(busy, rel=1e-9, abs=1e-9), r
    # each flow reported once, in completion-time order
    assert sorted(f.tag for f in seen) == list(range(len(flows)))
    assert all(a.done_at <= b.done_at for a, b in zip(seen, seen[1:]))


def test_random_scenarios_exercise_what_they_claim():
    """The generator really mixes priorities, caps, promotions, zero sizes and shared starts
    (else the randomized test would prove little)."""
    kinds = set()
    for seed in range(200):
        caps, specs = random_scenario(random.Random(seed))
        starts = [s[0] for s in specs]
        kinds |= {("prio", s[5]) for s in specs} | {("cap", s[4] != INF) for s in specs}
        kinds |= {("promote", s[6] is not None) for s in specs} | {("zero", s[1] == 0) for s in specs}
        kinds.add(("shared start", len(set(starts)) < len(starts)))
        kinds.add(("paths", len({s[2] for s in specs})))
    for k in [("prio", 0), ("prio", 1), ("prio", 2), ("cap", True), ("promote", True),
              ("zero", True), ("shared start", True), ("paths", 3)]:
        assert k in kinds


def test_run_until_done_leaves_other_flows_correct():
    """Waiting for the demand flows of each 'layer' (run_until_done) while background flows
    keep moving gives every flow the reference's done time."""
    caps = [10.0, 4.0]
    specs = []
    t = 0.0
    P, Q = (0,), (0, 1)
    for layer in range(6):
        specs.append((t, 3.0 + layer, Q if layer % 2 else P, 0.05, INF, 1, None))
        specs.append((t, 2.0, P, 0.05, INF, 0, None))
        specs.append((t, 1.0, P, 0.05, INF, 0, None))
        t += 1.0
    want = ref.simulate(caps, specs)["done"]
    res = [Resource("a", 10.0), Resource("b", 4.0)]
    net = FlowNetwork()
    flows = [Flow(s, tuple(res[i] for i in p), lat, cap=c, priority=pr)
             for _t, s, p, lat, c, pr, _x in specs]
    for layer in range(6):
        bg, d1, d2 = flows[3 * layer: 3 * layer + 3]
        net.start([bg], float(layer))
        net.start([d1, d2], float(layer))
        end = net.run_until_done([d1, d2])
        assert end == pytest.approx(max(want[3 * layer + 1], want[3 * layer + 2]), rel=1e-12)
        assert net.t == end < layer + 1
    net.run_until_done(flows)
    assert [f.done_at for f in flows] == pytest.approx(want, rel=1e-9)
    # at least some background flows outlived their layer, so the test covers carrying on
    assert sum(want[3 * k] > k + 1 for k in range(6)) >= 2


def test_groups_stay_few_with_many_flows():
    """Many flows on two paths and two classes make at most four groups."""
    shared = Resource("s", 100.0)
    p1, p2 = (Resource("a", 50.0), shared), (Resource("b", 80.0), shared)
    net = FlowNetwork()
    flows = [Flow(1 + (i % 7), p1 if i % 2 else p2, 0.0, priority=i % 3 == 0) for i in range(400)]
    net.start(flows, 0.0)
    assert len(net._glist) == 4
    net.run_until_done(flows)
    assert shared.bytes == pytest.approx(sum(f.size for f in flows), rel=1e-12)


def test_float_residue_is_settled_so_bytes_are_conserved():
    """A completion merged into a change 50 ps before it (inside the clock's resolution at
    t ~ 1000 s) still credits the flow's last sliver of bytes to its resources."""
    link = Resource("l", 1.0)
    net = FlowNetwork()
    a = Flow(1.0, (link,), 0.0)
    b = Flow(1.0, (link,), 0.5 - 5e-11)          # activates 5e-11 s before a would end
    net.start([a], 1000.0)
    net.start([b], 1000.5)
    net.run_until_done([a, b])
    assert a.done_at == pytest.approx(1001.0, rel=1e-12) and a.done_at < 1001.0
    assert link.bytes == pytest.approx(2.0, rel=1e-13, abs=0)


def test_promoting_a_lone_background_flow_relabels_its_group():
    """The lone member of a background group with no demand group on its path: the group
    becomes the demand group (no move), with the same outcome as the closed form."""
    r = Resource("r", 2.0)
    net = FlowNetwork()
    b = Flow(4.0, (r,), 0.0, priority=1)
    net.start([b], 0.0)
    g = b._group
    net.promote([b], 1.0)
    assert b._group is g and g.prio == 0 and net._glist == [g]
    assert net._groups[((r,), INF, 0)] is g and ((r,), INF, 1) not in net._groups
    d = Flow(2.0, (r,), 0.0)
    net.start([d], 1.5)
    assert b._group is d._group is g                 # shares the demand group now
    net.run_until_done([b, d])
    assert b.done_at == pytest.approx(2.5) and d.done_at == pytest.approx(3.0)
    net.close(d.done_at)
    assert r.bytes == pytest.approx(6.0) and r.busy_time == pytest.approx(3.0)
    b2 = Flow(1.0, (r,), 0.0, priority=1)            # the background label is free again
    net.start([b2], 5.0)
    assert b2._group.prio == 1 and b2._group is not g


def test_cancelled_flow_frees_its_share_and_keeps_the_bytes_it_moved():
    """A and B (10 B each) share a 10 B/s link from 0; A is cancelled at 1.0 (5 B moved each):
    B then has the link alone and ends at 1.5; the link carried 5 + 10 = 15 B; A never
    completes and is not reported."""
    net = FlowNetwork()
    link = Resource("l", 10.0)
    log = []
    net.on_complete = lambda f: log.append(f.tag)
    a, b = Flow(10, (link,), 0.0, tag="a"), Flow(10, (link,), 0.0, tag="b")
    net.start([a, b], 0.0)
    net.cancel([a], 1.0)
    assert net.rate(b) == pytest.approx(10.0) and net.remaining(a) == 0.0
    net.run_until_done([b])
    assert b.done_at == pytest.approx(1.5) and math.isnan(a.done_at) and log == ["b"]
    net.close(2.0)
    assert link.bytes == pytest.approx(15.0) and link.busy_time == pytest.approx(1.5)


def test_cancel_in_the_latency_phase_and_of_a_finished_flow():
    """A flow cancelled before it activates moves nothing; cancelling a finished one is a
    no-op; the network goes idle."""
    net = FlowNetwork()
    link = Resource("l", 10.0)
    a = Flow(10, (link,), 1.0)
    c = Flow(10, (link,), 0.0)
    net.start([a], 0.0)
    net.start([c], 0.0)
    net.cancel([a], 0.5)
    net.run_until_done([c])
    net.cancel([c], 2.0)
    assert c.done_at == pytest.approx(1.0) and math.isnan(a.done_at) and net.idle
    net.close(2.0)
    assert link.bytes == pytest.approx(10.0)
