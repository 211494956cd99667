"""Trace statistics (simulator.traces.stats) against values worked out by hand.

Every expected number below is derived in the comments next to it from the tiny traces built
here, so a test fails if a statistic changes meaning (wrong normalisation, a boundary counted,
an off-by-one in a distance). The LRU stack distances are checked against an independent
OrderedDict LRU cache on random streams, hit count for hit count.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict

import numpy as np
import pytest

from simulator.errors import MoesimError
from simulator.traces import stats as S
from simulator.traces.schema import TraceMeta, make_trace


def _trace(experts, request_id, phase, *, E, scores=None, order="descending", model="toy",
           notes=None, imputed=None):
    """A trace from nested lists experts[t][layer][slot]; positions count up per request."""
    ex = np.asarray(experts)
    T, L, k = ex.shape
    rid = np.asarray(request_id)
    tok = np.zeros(T, dtype=np.int64)
    for i in range(1, T):
        tok[i] = tok[i - 1] + 1 if rid[i] == rid[i - 1] else 0
    meta = TraceMeta(model=model, num_layers=L, num_experts=E, top_k=k, source="hand-made",
                     expert_order=order, notes=dict(notes or {}))
    return make_trace(meta, rid, tok, phase, ex, scores=scores, imputed=imputed)


# Three tokens of one request, 2 layers, E = 4, k = 2 (t0, t1 prefill, t2 decode).
HAND = [[[0, 1], [2, 3]],
        [[0, 2], [2, 0]],
        [[0, 1], [3, 1]]]


def hand_trace(**kw):
    return _trace(HAND, [7, 7, 7], [0, 0, 1], E=4, **kw)


# ---------------------------------------------------------------------- counts, popularity
def test_basic_counts_by_hand():
    # request 0: 3 prefill + 1 decode tokens; request 1: 1 prefill token. L = 1, k = 2.
    tr = _trace([[[0, 1]], [[1, 2]], [[1, 2]], [[1, 2]], [[1, 2]]], [0, 0, 0, 0, 1],
                [0, 0, 0, 1, 0], E=8)
    c = S.basic_counts(tr)
    assert (c["requests"], c["tokens"], c["prefill_tokens"], c["decode_tokens"]) == (2, 5, 4, 1)
    # prefill tokens per request: [3, 1] -> min 1, median 2, mean 2, max 3
    assert c["tokens_per_request"]["prefill"] == {"min": 1, "median": 2, "mean": 2, "max": 3}
    # decode tokens per request: [1, 0] (a request without decode counts 0)
    assert c["tokens_per_request"]["decode"] == {"min": 0, "median": 0.5, "mean": 0.5, "max": 1}
    assert c["requests_with_decode"] == 1
    # accesses = T * L * k = 5 * 1 * 2; decode: 1 token * 2
    assert (c["accesses"], c["prefill_accesses"], c["decode_accesses"]) == (10, 8, 2)


def test_popularity_shares_by_hand():
    pop = S.popularity(hand_trace())
    # layer 0 picks: 0,1 | 0,2 | 0,1 -> counts [3, 2, 1, 0] of 6
    # layer 1 picks: 2,3 | 2,0 | 3,1 -> counts [1, 1, 2, 2] of 6
    np.testing.assert_allclose(pop, [[3 / 6, 2 / 6, 1 / 6, 0], [1 / 6, 1 / 6, 2 / 6, 2 / 6]])
    np.testing.assert_allclose(pop.sum(axis=1), 1.0)
    # decode only (t2): layer 0 {0, 1}, layer 1 {3, 1}
    np.testing.assert_allclose(S.popularity(hand_trace(), "decode"),
                               [[0.5, 0.5, 0, 0], [0, 0.5, 0, 0.5]])
    ids, shares = S.top_experts(pop, 2)
    # layer 1 has a tie between experts 2 and 3 (2/6 each): the lower id comes first
    assert ids.tolist() == [[0, 1], [2, 3]]
    np.testing.assert_allclose(shares, [[0.5, 2 / 6], [2 / 6, 2 / 6]])


def test_gini_entropy_tvd_by_hand():
    E = 4
    uniform = np.full(E, 1 / E)
    one_hot = np.array([0.0, 0.0, 1.0, 0.0])
    assert S.gini(uniform) == pytest.approx(0.0, abs=1e-12)
    # one expert takes all: sum_ij |x_i - x_j| = 2 (E - 1), / (2 E * 1) = 1 - 1/E
    assert S.gini(one_hot) == pytest.approx(1 - 1 / E)
    # shares [0, 1/6, 2/6, 3/6]: sum_{i<j} (x_j - x_i) = (1 + 2 + 3 + 1 + 2 + 1)/6 = 10/6,
    # so sum_ij |.| = 20/6 and G = (20/6) / (2 * 4 * 1) = 5/12
    assert S.gini(np.array([3, 2, 1, 0]) / 6) == pytest.approx(5 / 12)
    assert S.normalized_entropy(uniform) == pytest.approx(1.0)
    assert S.normalized_entropy(one_hot) == pytest.approx(0.0)
    # two of four experts at 1/2: H = ln 2, / ln 4 = 1/2
    assert S.normalized_entropy(np.array([0.5, 0.5, 0, 0])) == pytest.approx(0.5)
    # rows are independent; an all-zero row is undefined
    g = S.gini(np.stack([uniform, one_hot, np.zeros(E)]))
    assert g[:2] == pytest.approx([0, 0.75]) and math.isnan(g[2])
    # TVD: 0.5 * (|1/4-0| * 3 + |1/4-1|) = 0.5 * 1.5 = 0.75
    assert S.tvd(uniform, one_hot) == pytest.approx(0.75)
    assert S.tvd(one_hot, one_hot) == 0.0


# ---------------------------------------------------------------------- temporal overlap
def test_consecutive_overlap_respects_request_and_phase_boundaries():
    # E = 8, k = 2, two layers.            layer 0    layer 1
    experts = [[[0, 1], [3, 4]],   # r0 t0 prefill
               [[1, 2], [5, 6]],   # r0 t1 prefill  l0: {1} -> 1/2 ; l1: {} -> 0
               [[1, 2], [3, 5]],   # r0 t2 prefill  l0: {1,2} -> 1 ; l1: {5} -> 1/2
               [[1, 2], [3, 5]],   # r0 t3 decode   prefill->decode switch: not a pair
               [[1, 2], [3, 5]]]   # r1 t0 prefill  new request: not a pair
    tr = _trace(experts, [0, 0, 0, 0, 1], [0, 0, 0, 1, 0], E=8)
    ov = S.consecutive_overlap(tr)
    assert ov["pairs"] == 2
    # layer 0: (1/2 + 1)/2 = 0.75 ; layer 1: (0 + 1/2)/2 = 0.25 (the two uncounted pairs would
    # each add a full overlap of 1 and raise both)
    np.testing.assert_allclose(ov["per_layer"], [0.75, 0.25])
    assert ov["overall"] == pytest.approx(0.5)
    # baseline: two independent uniform 2-subsets of 8 share k*k/E = 0.5 experts -> /k = 2/8
    assert ov["baseline"] == pytest.approx(0.25)
    assert S.consecutive_overlap(tr, "prefill")["overall"] == pytest.approx(0.5)
    dec = S.consecutive_overlap(tr, "decode")       # one decode token: no pair at all
    assert dec["pairs"] == 0 and math.isnan(dec["overall"])


def test_phase_argument_is_checked():
    with pytest.raises(MoesimError, match="phase must be"):
        S.popularity(hand_trace(), "generate")


# ---------------------------------------------------------------------- reuse distance
def test_reuse_distance_histogram_by_hand():
    # L = 1, k = 1, E = 4. Request A = tokens 0..10 (0-2 prefill), request B = 11..12.
    seq = [0, 1, 0, 0, 2, 1, 0, 3, 3, 3, 2, 0, 2]
    rid = [0] * 11 + [1] * 2
    ph = [0, 0, 0] + [1] * 8 + [0, 1]
    tr = _trace([[[e]] for e in seq], rid, ph, E=4)
    # t0 e0 cold | t1 e1 cold | t2 e0 d=2 | t3 e0 d=1 | t4 e2 cold | t5 e1 d=4 (t1)
    # t6 e0 d=3 (t3) | t7 e3 cold | t8 d=1 | t9 d=1 | t10 e2 d=6 (t4)
    # t11 e0 and t12 e2: cold, their earlier uses belong to request A
    rd = S.reuse_distances(tr, max_log2=2)
    assert rd["labels"] == ["1", "2", "3-4", ">4", "cold"]
    assert rd["counts"].tolist() == [[3, 1, 2, 1, 6]]
    assert rd["pooled_counts"].tolist() == [3, 1, 2, 1, 6]
    np.testing.assert_allclose(rd["pooled_fractions"], np.array([3, 1, 2, 1, 6]) / 13)
    # decode accesses only: t3 (1), t4 cold, t5 (3-4), t6 (3-4), t7 cold, t8 (1), t9 (1),
    # t10 (>4), t12 cold
    assert S.reuse_distances(tr, "decode", max_log2=2)["counts"].tolist() == [[3, 0, 2, 1, 3]]
    assert S.reuse_bin_labels(10)[:5] == ["1", "2", "3-4", "5-8", "9-16"]
    assert S.reuse_bin_labels(10)[-3:] == ["513-1024", ">1024", "cold"]


# ---------------------------------------------------------------------- LRU stack distance
def lru_reference_stack_distances(stream):
    """Position of each object in an OrderedDict LRU stack (0 = most recent), -1 if new."""
    od: OrderedDict = OrderedDict()
    out = []
    for o in stream:
        if o in od:
            keys = list(od)
            out.append(len(keys) - 1 - keys.index(o))
            od.move_to_end(o)
        else:
            out.append(-1)
            od[o] = None
    return np.array(out)


def lru_reference_hits(stream, size):
    """Hits of an LRU cache of ``size`` objects, simulated with an OrderedDict."""
    od: OrderedDict = OrderedDict()
    hits = 0
    for o in stream:
        if o in od:
            hits += 1
            od.move_to_end(o)
        elif size > 0:
            od[o] = None
            if len(od) > size:
                od.popitem(last=False)
    return hits


def test_stack_distances_stream_by_hand():
    # a b c a b b d a: the second a has b, c since its last use -> 2; the second b has c, a -> 2;
    # the third b follows b -> 0; the last a has b, d -> 2
    sd = S.stack_distances_stream(list("abcabbda"))
    assert sd.tolist() == [-1, -1, -1, 2, 2, 0, -1, 2]
    # size 1 and 2 hit only the repeated b; size 3 also the three distance-2 accesses
    assert S.lru_hit_counts(sd, [0, 1, 2, 3, 100]).tolist() == [0, 1, 1, 4, 4]
    np.testing.assert_allclose(S.lru_hit_rate_curve(sd, [3]), [4 / 8])


def test_stack_distances_trace_orders_by_hand():
    # L = 2, E = 2, k = 1. Objects A=(0,e0) B=(1,e0) C=(0,e1) D=(1,e1).
    tr = _trace([[[0], [0]], [[1], [0]], [[0], [1]]], [0, 0, 0], [0, 1, 1], E=2)
    # token-major stream A B C B A D: B again after {C} -> 1, A again after {B, C} -> 2
    assert S.stack_distances(tr).reshape(3, 2).tolist() == [[-1, -1], [-1, 1], [2, -1]]
    # layer-major stream A C A | B B D: A again after {C} -> 1, B right after B -> 0
    assert S.stack_distances(tr, "layer-major").reshape(3, 2).tolist() == [[-1, -1], [-1, 0],
                                                                           [1, -1]]
    with pytest.raises(MoesimError, match="order must be"):
        S.stack_distances(tr, "random")


def _random_experts(rng, T, L, k, E, skew):
    p = rng.dirichlet(np.full(E, skew))
    p = np.maximum(p, 1e-3)
    p /= p.sum()
    return np.array([[rng.choice(E, k, replace=False, p=p) for _ in range(L)]
                     for _ in range(T)])


@pytest.mark.parametrize("T,L,k,E,skew", [(300, 3, 2, 6, 1.0), (400, 4, 3, 64, 0.3),
                                          (250, 2, 4, 100, 0.2), (120, 1, 1, 70, 0.5),
                                          (500, 2, 2, 10, 0.1)])
def test_stack_distances_match_ordered_dict_lru(T, L, k, E, skew):
    rng = np.random.default_rng(T + L + k + E)
    ex = _random_experts(rng, T, L, k, E, skew)
    rid = np.repeat(np.arange(4), -(-T // 4))[:T]
    tr = _trace(ex, rid, np.zeros(T, dtype=int), E=E)
    obj = ex + (np.arange(L) * E)[None, :, None]           # object id = layer * E + expert
    for order, stream in (("token-major", obj.ravel()),
                          ("layer-major", obj.transpose(1, 0, 2).ravel())):
        sd = S.stack_distances(tr, order)
        ref = lru_reference_stack_distances(stream.tolist())
        flat = sd.ravel() if order == "token-major" else sd.transpose(1, 0, 2).ravel()
        np.testing.assert_array_equal(flat, ref)
        sizes = [0, 1, 2, 5, L * E // 4, L * E // 2, L * E - 1, L * E]
        hits = S.lru_hit_counts(sd, sizes)
        assert hits.tolist() == [lru_reference_hits(stream.tolist(), c) for c in sizes]
        np.testing.assert_allclose(S.lru_hit_rate_curve(sd, sizes), hits / stream.size)


@pytest.mark.parametrize("window", [1, 2, 7, 254])
def test_stack_distance_short_and_long_gap_paths_agree_with_lru(window):
    # Forcing the split between the incremental (gap <= window) and the sparse-table (gap >
    # window) paths: every choice must give the same exact distances.
    rng = np.random.default_rng(window)
    T, L, k, E = 300, 3, 3, 80
    ex = _random_experts(rng, T, L, k, E, 0.3)
    sd = S._grouped_stack_distances(ex.astype(np.uint8), E, window=window, chunk_cells=97)
    stream = (ex + (np.arange(L) * E)[None, :, None]).ravel().tolist()
    np.testing.assert_array_equal(sd.ravel(), lru_reference_stack_distances(stream))


@pytest.mark.parametrize("n,m", [(1, 1), (50, 3), (2000, 40), (3000, 200)])
def test_stack_distances_stream_random(n, m):
    rng = np.random.default_rng(n + m)
    stream = rng.integers(0, m, n) * 7 + 3                  # arbitrary, sparse ids
    sd = S.stack_distances_stream(stream)
    np.testing.assert_array_equal(sd, lru_reference_stack_distances(stream.tolist()))
    # the Fenwick fallback for streams over very many objects gives the same distances
    np.testing.assert_array_equal(S.stack_distances_stream(stream, max_table_words=0), sd)
    for size in (1, 2, max(1, m // 3), m):
        assert S.lru_hit_counts(sd, [size])[0] == lru_reference_hits(stream.tolist(), size)


# ---------------------------------------------------------------------- gate scores
def test_gate_score_stats_by_hand():
    sc = np.array([[[0.8, 0.2]], [[0.6, 0.3]]], dtype=np.float32)
    tr = _trace([[[0, 1]], [[2, 3]]], [0, 0], [0, 1], E=4, scores=sc)
    g = S.gate_score_stats(tr)
    assert g["available"] and g["cells"] == 2
    # rank 0 weights 0.8, 0.6 -> mean 0.7 ; rank 1 weights 0.2, 0.3 -> mean 0.25
    assert [r["mean"] for r in g["per_rank"]] == pytest.approx([0.7, 0.25])
    # top-1 = 0.8, 0.6: above 0.5 both, above 0.7 one, above 0.9 none
    assert g["top1_gt"] == pytest.approx({"0.5": 1.0, "0.7": 0.5, "0.9": 0.0})
    # top-1 share = 0.8/1.0 = 0.8 and 0.6/0.9 = 0.667
    assert g["top1_share_gt"] == pytest.approx({"0.5": 1.0, "0.7": 0.5, "0.9": 0.0})
    assert g["top1_share_mean"] == pytest.approx((0.8 + 0.6 / 0.9) / 2, rel=1e-6)
    # histogram bins of width 0.1: 0.6 in [0.6, 0.7), 0.8 in [0.8, 0.9)
    assert g["top1"]["hist_counts"] == [0, 0, 0, 0, 0, 0, 1, 0, 1, 0]
    assert g["order_violations"] == 0.0
    # decode only: the second token
    assert S.gate_score_stats(tr, "decode")["top1"]["mean"] == pytest.approx(0.6)


def test_gate_score_stats_without_scores_or_order():
    g = S.gate_score_stats(hand_trace())
    assert g == {"available": False, "reason": "no scores in this trace"}
    sc = np.array([[[0.2, 0.7]], [[0.6, 0.3]]], dtype=np.float32)
    g = S.gate_score_stats(_trace([[[0, 1]], [[2, 3]]], [0, 0], [0, 1], E=4, scores=sc,
                                  order="unordered"))
    assert g["per_rank"] is None and "unordered" in g["per_rank_note"]
    assert g["top1"]["mean"] == pytest.approx(0.65)        # max of each cell: 0.7, 0.6


# ---------------------------------------------------------------------- cross-layer
def test_transition_matrix_by_hand():
    tr = hand_trace()
    c = S.transition_counts(tr)
    # all k x k pairs (layer 0 -> layer 1):
    #   t0 {0,1}->{2,3}: 0>2 0>3 1>2 1>3 ; t1 {0,2}->{2,0}: 0>2 0>0 2>2 2>0
    #   t2 {0,1}->{3,1}: 0>3 0>1 1>3 1>1
    assert c.shape == (1, 4, 4)
    assert c[0].tolist() == [[1, 1, 2, 2], [0, 1, 1, 2], [1, 0, 1, 0], [0, 0, 0, 0]]
    P = S.cross_layer_transitions(tr)
    np.testing.assert_allclose(P[0], [[1 / 6, 1 / 6, 2 / 6, 2 / 6], [0, 1 / 4, 1 / 4, 2 / 4],
                                      [1 / 2, 0, 1 / 2, 0], [0, 0, 0, 0]])
    # every expert seen at layer 0 has a row summing to 1; expert 3 never chosen there
    np.testing.assert_allclose(P[0].sum(axis=1), [1, 1, 1, 0])
    # slot by slot: t0 0>2 1>3 ; t1 0>2 2>0 ; t2 0>3 1>1
    cs = S.transition_counts(tr, pairing="slot")
    assert cs[0].tolist() == [[0, 0, 2, 1], [0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_js_divergence_by_hand():
    P = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    Q = np.array([[[0.0, 1.0], [1.0, 0.0]]])
    assert S.js_divergence(P, P)[0] == pytest.approx(0.0, abs=1e-12)
    assert S.js_divergence(P, Q)[0] == pytest.approx(1.0)          # disjoint rows
    # p = (1, 0), q = (1/2, 1/2), m = (3/4, 1/4):
    #   KL(p||m) = log2(4/3); KL(q||m) = 1/2 log2(2/3) + 1/2 log2(2); JS = mean of the two
    js = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    assert S.js_divergence(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]])) == pytest.approx(js)
    # With counts, rows weigh by the mean of the two source frequencies. P's sources: 3, 1, 0
    # uses -> (3/4, 1/4, 0); Q's: 1, 3, 5 -> (1/9, 3/9, 5/9). Row 0 is identical (JS 0), row 1
    # disjoint (JS 1), row 2 is empty in P and skipped: weights (3/4 + 1/9)/2 = 31/72 and
    # (1/4 + 3/9)/2 = 21/72 -> JS = 21 / (31 + 21)
    Pc = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    Qc = np.array([[1.0, 0.0], [0.0, 3.0], [5.0, 0.0]])
    assert S.js_divergence(Pc, Qc) == pytest.approx(21 / 52)
    # explicit weights override: equal weights on rows 0 and 1 -> (0 + 1)/2
    assert S.js_divergence(Pc, Qc, weights=np.ones(3)) == pytest.approx(0.5)


def test_mutual_information_by_hand():
    # k = 1, E = 4: layer 1 = (layer 0 + 1) mod 4 with uniform use -> MI = log2 4 = 2 bits
    dep = _trace([[[e], [(e + 1) % 4]] for e in range(4)], [0] * 4, [0] * 4, E=4)
    assert S.cross_layer_dependence(S.transition_counts(dep)) == pytest.approx(2.0)
    # layer 0 = 0 0 1 1, layer 1 = 0 1 0 1: joint uniform over 4 cells, marginals 1/2 -> 0
    ind = _trace([[[a], [b]] for a, b in [(0, 0), (0, 1), (1, 0), (1, 1)]], [0] * 4, [0] * 4,
                 E=4)
    assert S.mutual_information(S.transition_counts(ind))[0] == pytest.approx(0.0, abs=1e-12)
    # floor for independent layers: (2 - 1)(2 - 1) experts seen / (2 * 4 pairs * ln 2)
    assert S.mutual_information_bias(S.transition_counts(ind))[0] == pytest.approx(
        1 / (8 * math.log(2)))


# ---------------------------------------------------------------------- bundle and report
def _synthetic_two_requests(with_scores=True):
    rng = np.random.default_rng(0)
    T, L, k, E = 60, 4, 2, 16
    ex = _random_experts(rng, T, L, k, E, 0.5)
    rid = [0] * 35 + [1] * 25
    ph = [0] * 20 + [1] * 15 + [0] * 10 + [1] * 15
    sc = None
    if with_scores:
        sc = np.sort(rng.dirichlet(np.ones(E), (T, L))[:, :, :k], axis=2)[:, :, ::-1]
    imputed = np.zeros((T, L), dtype=bool)
    imputed[3, 1] = True
    tr = _trace(ex, rid, ph, E=E, scores=sc, model="ToyMoE-16x", imputed=imputed,
                notes={"alignment": "approximate (fill-previous)", "imputed_cells": 1,
                       "long": "x" * 300})
    tr.meta.source = "github.com/some/repository@" + "0123456789abcdef" * 5 + " via a/b/c.npz"
    return tr


def test_trace_stats_is_json_and_format_stats_reports_every_layer():
    tr = _synthetic_two_requests()
    st = S.trace_stats(tr, per_layer_lru=True)
    json.dumps(st, allow_nan=False)                      # plain JSON, NaN mapped to null
    assert st["counts"]["requests"] == 2 and st["counts"]["decode_tokens"] == 30
    assert st["lru"]["sizes"] == [6, 16, 32, 48, 58]     # 10..90 % of L*E = 64 objects
    text = S.format_stats(st)
    assert "ToyMoE-16x" in text
    lines = text.splitlines()
    assert max(len(line) for line in lines) < 100
    for layer in range(4):
        assert any(line.split()[:1] == [str(layer)] and "gini" not in line for line in lines)
    assert "approximate (fill-previous)" in text and "imputed cells: 1" in text
    assert "LRU hit rate" in text and "per-layer caches" in text
    # hit rates reported equal a fresh computation
    sd = S.stack_distances(tr)
    assert st["lru"]["hit_rate"] == pytest.approx(S.lru_hit_rate_curve(sd, st["lru"]["sizes"])
                                                  .tolist())


def test_format_stats_without_scores_says_so():
    st = S.trace_stats(_synthetic_two_requests(with_scores=False), lru=False)
    text = S.format_stats(st)
    assert "gate scores: no scores" in text and "LRU" not in text
