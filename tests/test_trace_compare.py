"""``moesim trace compare``: two traces side by side (simulator/traces/compare.py).

Cache hit rates are checked against replays of the engine's LRU and Belady classes (and
libCacheSim when installed) on lookup streams built here by hand from the definition, so a
wrong stream, a wrong size or a wrong hit count each show up.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from simulator.errors import TraceError
from simulator.policies.cache.belady import Belady
from simulator.policies.cache.lru import LRU
from simulator.traces.compare import compare, format_compare, plot_compare
from simulator.traces.io import read_trace
from simulator.traces.schema import TraceMeta, make_trace
from simulator.traces.synthetic import RoutingModel, generate

L, E, K = 4, 16, 2
SHAPE = dict(num_layers=L, num_experts=E, top_k=K)


def _synth(tmp, name, *, seed=0, model_seed=1, requests=6, prompt_len=12, decode_len=80,
           scores=True, **knobs):
    model = RoutingModel.from_knobs(**SHAPE, seed=model_seed, **knobs)
    path = tmp / f"{name}.parquet"
    generate(model, path, requests=requests, prompt_len=prompt_len, decode_len=decode_len,
             seed=seed, len_jitter=0.3, scores=scores)
    return read_trace(path)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    return {
        "base": _synth(tmp, "base", seed=0),
        "base_seed2": _synth(tmp, "base_seed2", seed=2),
        "loc0": _synth(tmp, "loc0", seed=3, locality_decode=0.0, decode_len=150),
        "loc0_seed2": _synth(tmp, "loc0_seed2", seed=4, locality_decode=0.0, decode_len=150),
        "loc8": _synth(tmp, "loc8", seed=3, locality_decode=0.8, decode_len=150),
        "decode_only": _synth(tmp, "decode_only", seed=5, prompt_len=0),
        "prefill_only": _synth(tmp, "prefill_only", seed=6, prompt_len=40, decode_len=0),
        "no_scores": _synth(tmp, "no_scores", seed=7, scores=False),
    }


def _copy(trace):
    """The same routing in a distinct object (compare(t, t) must not take a shortcut)."""
    return trace._take(np.ones(trace.num_tokens, dtype=bool))


# ---------------------------------------------------------------- streams built by hand
def _decode_stream(trace):
    ex = trace.experts[trace.phase == 1].astype(np.int64)          # (T, L, k) in trace order
    return (ex + (np.arange(L) * E)[None, :, None]).ravel()


def _prefill_stream(trace):
    out = []
    for rid in dict.fromkeys(trace.request_id.tolist()):
        ex = trace.experts[(trace.request_id == rid) & (trace.phase == 0)]
        for layer in range(L):
            out.extend(layer * E + e for e in sorted(set(ex[:, layer, :].ravel().tolist())))
    return np.asarray(out, dtype=np.int64)


def _replay(cls, stream, cap):
    ctx = SimpleNamespace(cache_stream=lambda: stream)
    cache = cls(cls.Params(capacity_gb=cap * 1.0), ctx)
    hits = 0
    for oid in stream.tolist():
        if cache.access(oid):
            hits += 1
        else:
            cache.insert(oid, 1e9)
    return hits


# ---------------------------------------------------------------- tests
def test_trace_against_itself_has_no_differences(traces):
    t = traces["base"]
    r = compare(t, _copy(t))
    assert r["phases"] == ["prefill", "decode"]
    for p in r["phases"]:
        assert r["popularity"][p]["tvd_max"] == 0
        assert r["popularity"][p]["gini"]["a"] == r["popularity"][p]["gini"]["b"]
        assert r["overlap"][p]["diff_overall"] == 0
        assert all(d == 0 for d in r["overlap"][p]["diff_per_layer"])
        assert r["reuse"][p]["tvd"] == 0
        for pol in ("lru", "belady"):
            assert r["cache"][p][pol]["max_abs_diff_pp"] == 0
            assert all(d == 0 for d in r["cache"][p][pol]["diff_pp"])
        assert r["headline"][p]["lru_max_abs_diff_pp"] == 0
    assert r["cross_layer"]["js_max"] == pytest.approx(0, abs=1e-12)
    assert r["cross_layer"]["dependence_diff"] == 0
    assert r["gate"]["available"] and r["gate"]["tvd"] == 0
    assert abs(sum(r["gate"]["a"]["hist"]) - 1) < 1e-9
    # the identity shortcut gives the same result as the full computation
    same = compare(t, t)
    assert same["cache"] == r["cache"]
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("idx", [0, 4, 8])
def test_hit_rates_equal_policy_replays_on_hand_built_streams(traces, idx):
    a, b = traces["base"], traces["loc8"]
    r = compare(a, b)
    c = r["cache"]
    size = c["sizes"][idx]
    assert size == max(1, round(c["fractions"][idx] * L * E))
    for key, t in (("a", a), ("b", b)):
        for phase, stream in (("decode", _decode_stream(t)), ("prefill", _prefill_stream(t))):
            assert c[phase]["lookups"][key] == stream.size
            assert not c[phase]["belady"]["truncated"][key]
            lru = _replay(LRU, stream, size) / stream.size
            bel = _replay(Belady, stream, size) / stream.size
            assert c[phase]["lru"][key][idx] == pytest.approx(lru, abs=1e-12), (phase, key)
            assert c[phase]["belady"][key][idx] == pytest.approx(bel, abs=1e-12), (phase, key)
            assert bel >= lru
    for phase in ("prefill", "decode"):
        e = c[phase]
        d = 100 * (np.array(e["lru"]["b"]) - np.array(e["lru"]["a"]))
        assert np.allclose(e["lru"]["diff_pp"], d)
        assert e["lru"]["max_abs_diff_pp"] == pytest.approx(np.abs(d).max())


def test_hit_rates_equal_libcachesim(traces):
    lcs = pytest.importorskip("libcachesim")
    t = traces["base"]
    r = compare(t, t, cache_fractions=(0.25,))
    size = r["cache"]["sizes"][0]
    for phase, stream in (("decode", _decode_stream(t)), ("prefill", _prefill_stream(t))):
        nxt = np.full(stream.size, 2 ** 63 - 1, dtype=np.int64)
        order = np.argsort(stream, kind="stable")
        same = stream[order[1:]] == stream[order[:-1]]
        nxt[order[:-1][same]] = order[1:][same]
        for pol, make in (("lru", lcs.LRU), ("belady", lcs.Belady)):
            cache = make(cache_size=size)
            hits = sum(bool(cache.get(lcs.Request(obj_size=1, obj_id=int(o), clock_time=i,
                                                  next_access_vtime=int(nxt[i]))))
                       for i, o in enumerate(stream.tolist()))
            got = r["cache"][phase][pol]["a"][0]
            assert got == pytest.approx(hits / stream.size), (phase, pol)


def test_phase_absent_from_a_trace_is_not_compared(traces):
    dec, pre, base = traces["decode_only"], traces["prefill_only"], traces["base"]
    r = compare(dec, _copy(dec))
    assert r["phases"] == ["decode"] and "prefill" not in r["cache"]
    assert "prefill" not in r["popularity"] and "prefill" not in r["reuse"]
    r = compare(pre, _copy(pre))
    assert r["phases"] == ["prefill"] and "decode" not in r["cache"]
    assert r["cache"]["prefill"]["lookups"]["a"] == _prefill_stream(pre).size
    r = compare(base, dec, names=("both", "dec"))
    assert r["phases"] == ["decode"] and list(r["headline"]) == ["decode"]
    assert any("only both has prefill" in n for n in r["notes"])
    r = compare(pre, dec)
    assert r["phases"] == [] and r["headline"] == {}
    assert "phases in both: none" in format_compare(r)


def test_locality_difference_shows_in_cache_and_reuse(traces):
    same = compare(traces["loc0"], traces["loc0_seed2"])
    diff = compare(traces["loc0"], traces["loc8"])
    assert diff["cache"]["decode"]["lru"]["max_abs_diff_pp"] > 5
    assert max(diff["cache"]["decode"]["lru"]["diff_pp"]) > 5      # more locality, more hits
    assert same["cache"]["decode"]["lru"]["max_abs_diff_pp"] < 5
    t_same, t_diff = same["reuse"]["decode"]["tvd"], diff["reuse"]["decode"]["tvd"]
    assert t_diff > 0.2 and t_diff > 4 * t_same
    assert diff["overlap"]["decode"]["diff_overall"] > 0.3
    # same-knob, different-seed pair: popularity close, within the sampling noise
    assert same["popularity"]["decode"]["tvd_mean"] < 0.15


def test_belady_prefix_is_reported(traces):
    t = traces["base"]
    n_dec = _decode_stream(t).size
    r = compare(t, traces["base_seed2"], belady_max_lookups=500, names=("one", "two"))
    bel = r["cache"]["decode"]["belady"]
    assert bel["truncated"] == {"a": True, "b": True} and bel["truncated_any"]
    assert bel["lookups"]["a"] == 500 and r["cache"]["decode"]["lookups"]["a"] == n_dec
    assert "prefix" in bel["note"] and "500" in bel["note"]
    assert any("Belady replayed on a prefix" in n for n in r["notes"])
    assert r["headline"]["decode"]["belady_truncated"]
    prefix = _decode_stream(t)[:500]
    size = r["cache"]["sizes"][2]
    assert bel["a"][2] == pytest.approx(_replay(Belady, prefix, size) / 500)
    assert bel["lru_on_prefix"]["a"][2] == pytest.approx(_replay(LRU, prefix, size) / 500)
    # the LRU curve still covers the whole stream
    assert r["cache"]["decode"]["lru"]["a"][2] == pytest.approx(
        _replay(LRU, _decode_stream(t), size) / n_dec)
    assert "Belady on the first 500 (A) / 500 (B) lookups" in format_compare(r)
    # an unbounded replay is not truncated
    r = compare(t, t, belady_max_lookups=None)
    assert not r["cache"]["decode"]["belady"]["truncated_any"]


def _tiny(num_layers=2, num_experts=4, top_k=1):
    meta = TraceMeta(model="tiny", num_layers=num_layers, num_experts=num_experts, top_k=top_k)
    ex = np.zeros((3, num_layers, top_k), dtype=np.int64)
    ex[:, :, :] = np.arange(top_k)
    return make_trace(meta, [0, 0, 0], [0, 1, 2], [0, 1, 1], ex)


@pytest.mark.parametrize("other,field", [(dict(num_experts=5), "num_experts"),
                                         (dict(num_layers=3), "num_layers"),
                                         (dict(top_k=2), "top_k")])
def test_mismatched_shapes_raise(other, field):
    with pytest.raises(TraceError, match=field) as exc:
        compare(_tiny(), _tiny(**other), names=("real", "synth"))
    msg = str(exc.value)
    assert "real" in msg and "synth" in msg
    assert [f for f in ("num_layers", "num_experts", "top_k") if f in msg] == [field]


def test_without_scores_and_single_layer():
    r = compare(_tiny(num_layers=1), _tiny(num_layers=1))
    assert not r["cross_layer"]["available"] and "single MoE layer" in r["cross_layer"]["note"]
    assert not r["gate"]["available"] and "no gate scores" in r["gate"]["note"]
    text = format_compare(r)
    assert "no gate scores" in text and "single MoE layer" in text


def test_report_and_figure(traces, tmp_path):
    import matplotlib.image

    r = compare(traces["base"], traces["no_scores"], names=("real-trace", "synthetic-trace"))
    text = format_compare(r)
    assert "size %  objects    LRU A    LRU B  diff pp  Belady A  Belady B  diff pp" in text
    assert "real-trace" in text and "synthetic-trace" in text
    assert "no gate scores in synthetic-trace" in text
    assert all(len(line) < 100 for line in text.splitlines())
    assert len([ln for ln in text.splitlines() if ln.startswith("cache hit rate,")]) == 2

    r = compare(traces["base"], traces["loc8"], names=("real-trace", "synthetic-trace"))
    expected = ["Hit rate vs cache size (prefill)", "Hit rate vs cache size (decode)",
                "Per-layer popularity TVD", "Reuse distance (decode, pooled over layers)",
                "Gate top-1 share"]
    png = tmp_path / "cmp.png"
    assert plot_compare(r, png) == expected
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0                     # not a blank canvas
    svg = tmp_path / "cmp.svg"
    assert plot_compare(r, svg) == expected
    body = svg.read_text()
    assert body.lstrip().startswith("<?xml") and "<svg" in body
    assert "real-trace LRU" in body and "synthetic-trace Belady" in body
    # no scores: no gate panel; decode only: one hit-rate panel
    r = compare(traces["decode_only"], traces["no_scores"])
    assert plot_compare(r, tmp_path / "d.pdf") == [
        "Hit rate vs cache size (decode)", "Per-layer popularity TVD",
        "Reuse distance (decode, pooled over layers)"]
    assert (tmp_path / "d.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(Exception, match="png, svg, pdf"):
        plot_compare(r, tmp_path / "d.bmp")


def test_decode_stack_distances_equal_those_of_the_flat_stream(traces):
    """compare() takes decode distances from the grouped token-major algorithm: they must be
    those of the canonical decode stream, lookup by lookup."""
    from simulator.engine.stream import trace_stream
    from simulator.traces.stats import phase_stream, stack_distances_stream

    t = traces["base"]
    stream, sd = phase_stream(t, 1)
    assert np.array_equal(stream, _decode_stream(t))
    assert np.array_equal(stream, trace_stream(t._take(t.phase == 1)))
    assert np.array_equal(sd, stack_distances_stream(stream))
    stream, sd = phase_stream(t, 0)
    assert np.array_equal(stream, _prefill_stream(t))
    assert np.array_equal(sd, stack_distances_stream(stream))
    for code in (0, 1):                     # a prefix (not at a token boundary)
        full, _ = phase_stream(t, code)
        m = full.size // 3 + 1
        stream, sd = phase_stream(t, code, max_lookups=m)
        assert np.array_equal(stream, full[:m])
        assert np.array_equal(sd, stack_distances_stream(full[:m]))


def test_belady_and_lru_around_the_working_set(traces):
    """Sizes just below, at and above the number of distinct objects of the stream (where
    compare() skips the replay: only first uses miss)."""
    t = traces["prefill_only"]
    stream = _prefill_stream(t)
    n = int(np.unique(stream).size)
    sizes = (n - 2, n - 1, n, n + 1)
    r = compare(t, t, cache_fractions=[s / (L * E) for s in sizes])
    c = r["cache"]["prefill"]
    assert c["lookups"]["a"] == stream.size
    assert tuple(r["cache"]["sizes"]) == sizes
    for i, size in enumerate(sizes):
        assert c["belady"]["a"][i] == pytest.approx(_replay(Belady, stream, size) / stream.size)
        assert c["lru"]["a"][i] == pytest.approx(_replay(LRU, stream, size) / stream.size)
    assert c["belady"]["a"][2] == pytest.approx((stream.size - n) / stream.size)


def test_sections_are_the_stats_of_each_phase(traces):
    from simulator.traces import stats

    a, b = traces["base"], traces["loc8"]
    r = compare(a, b)
    for p in ("prefill", "decode"):
        pa, pb = stats.popularity(a, p), stats.popularity(b, p)
        assert np.allclose(r["popularity"][p]["tvd_per_layer"], stats.tvd(pa, pb))
        assert np.allclose(r["popularity"][p]["gini"]["b"], stats.gini(pb))
        oa, ob = stats.consecutive_overlap(a, p), stats.consecutive_overlap(b, p)
        assert r["overlap"][p]["a"]["overall"] == pytest.approx(oa["overall"])
        assert r["overlap"][p]["diff_overall"] == pytest.approx(ob["overall"] - oa["overall"])
        ra, rb = stats.reuse_distances(a, p), stats.reuse_distances(b, p)
        assert np.allclose(r["reuse"][p]["b"], rb["pooled_fractions"])
        assert r["reuse"][p]["tvd"] == pytest.approx(
            stats.tvd(ra["pooled_fractions"], rb["pooled_fractions"]))
    # the two phases really differ in these traces, so a phase mix-up would show
    assert r["overlap"]["prefill"]["b"]["overall"] != r["overlap"]["decode"]["b"]["overall"]
    ta, tb = stats.transition_counts(a), stats.transition_counts(b)
    assert np.allclose(r["cross_layer"]["js_per_pair"], stats.js_divergence(ta, tb))
    assert r["cross_layer"]["b"]["dependence_bits"] == pytest.approx(
        stats.cross_layer_dependence(tb))
    sc = b.scores.astype(np.float64)
    share = (sc.max(axis=2) / sc.sum(axis=2)).ravel()
    hist = np.histogram(share, bins=np.linspace(0, 1, 21))[0] / share.size
    assert np.allclose(r["gate"]["b"]["hist"], hist)
    assert r["gate"]["b"]["share_gt"]["0.7"] == pytest.approx(np.mean(share > 0.7))


def test_request_count_difference_is_explained_by_cold_misses(traces, tmp_path):
    """One request against many of the same routing model: the prefill stream of one
    request is all first lookups (ceiling 0), so any Belady gap there is the request count;
    the ceiling is 1 - distinct objects / lookups of the stream built by hand, every hit
    rate stays under it, and the note says so in the text and in the figure."""
    few = _copy(traces["base"]).select_requests([0])
    many = traces["base_seed2"]
    res = compare(few, many, names=("few", "many"))
    hand = {"prefill": _prefill_stream, "decode": _decode_stream}
    for p in ("prefill", "decode"):
        c = res["cache"][p]
        for key, t in (("a", few), ("b", many)):
            s = hand[p](t)
            assert c["ceiling"][key] == pytest.approx(1 - np.unique(s).size / s.size)
            assert max(c["belady"][key]) <= c["belady"]["ceiling"][key] + 1e-12
            assert max(c["lru"][key]) <= c["ceiling"][key] + 1e-12
    pre = res["cache"]["prefill"]
    assert pre["ceiling"]["a"] == 0.0 and pre["belady"]["max_abs_diff_pp"] > 20
    note = pre["cold_note"]
    assert note in res["notes"]
    assert "few has 1 requests, many 6" in note and "request count" in note
    text = format_compare(res)
    assert "highest reachable hit rate" in text and "request count" in text
    assert all(len(line) < 100 for line in text.splitlines())
    import matplotlib
    with matplotlib.rc_context({"svg.fonttype": "none"}):        # text stays text in SVG
        plot_compare(res, tmp_path / "c.svg")
    svg = (tmp_path / "c.svg").read_text()
    assert "ceiling (cold misses)" in svg and "request count" in svg
    # equal request counts: no note
    same = compare(traces["base"], traces["base_seed2"])
    assert not any("cold_note" in same["cache"][p] for p in same["phases"])
