"""Miss-ratio curves of the engine's own lookup stream: exact LRU at any cache size from one pass
(plus a small per-size step), Belady replayed at chosen sizes.

The stream (:class:`LookupStream`) is the sequence of *lookup groups* the engine performs: one
per layer of one iteration, the layer's distinct experts in lookup order (pinned experts
removed: they always hit and never enter the cache, so they are added back as hits at every
size). Capacities are counted in objects: every expert object of a model has one size, so a
cache of ``capacity_bytes`` holds ``C = floor(capacity_bytes / object_bytes)`` of them.

LRU under group semantics (engine/simulation.py, "Lookup semantics"). In a group, the members
resident at its start hit and move to the most-recent end in lookup order; then the misses are
inserted in lookup order. So at every capacity C the cache is the top C of a recency stack in
which objects are ordered by the group of their last use; only the order *inside* a group
depends on C (hits before misses). For a lookup i of object x whose previous use was in group
G, at the start of its group H:

* ``D_i`` = distinct objects used in the groups strictly between G and H,
* ``b_i`` = members of G not looked up again before H (x included), its *block*,
* x's depth is ``D_i + r`` with ``r`` in ``[0, b_i)`` the number of block members ranked more
  recent than x in G: if x hit at G, the block's misses at G and its hits after x; if x
  missed, the block's misses after x.

Hence at capacity C: ``C <= D_i`` -> miss, ``C >= D_i + b_i`` -> hit, for every C >= 1 (also
below the largest group: a group larger than C leaves its last C members in engine order,
which is again the top of that stack), from one pass (``D`` and ``b`` are numpy counting over
next-use times, O(n log n), once per pair of groups). Only capacities in the *window*
``D_i < C < D_i + b_i`` need ``r``, i.e. the hit/miss status of the block members at G at that
C. A C-independent rank (lookup order inside the group: the stack distance counted at the
group's start) is therefore not the engine: on the default trace it is off at 142 of the 256
sizes, by up to 86 hits, and the flat one-get-at-a-time stack distance is off too. So
:func:`lru_curve` resolves the windowed lookups at each requested size exactly: their status
is a function of strictly earlier lookups' status at the same size (a DAG), solved by
vectorised fixed-point rounds (each round recomputes every windowed lookup from the current
guesses; a round that changes nothing is the unique solution, reached after at most the
longest dependency chain + 1 rounds: 2-14 on the bundled and real traces). Cost per size is
proportional to the windowed lookups at that size, a small part of the stream. Where every
block is one object (groups of one, or groups whose other members all return first) there
are no windows and the bounds are the curve; :func:`lru_bounds_all_sizes` gives the bounds
at every size at once.

Belady: MIN's priority (next use) does not depend on C, but with group semantics (hits decided
at the group's start, misses inserted afterwards) there is no stack-distance shortcut we can
prove, so :func:`belady_curve` is the documented multi-size fallback: the project's own Belady
policy (policies/cache/belady.py) replayed group by group at each requested size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..traces.schema import DECODE, PREFILL

PHASES = ("prefill", "decode")


@dataclass
class LookupStream:
    """The engine's lookup groups of one run, pinned objects removed."""
    oids: np.ndarray                 # (n,) int64 object ids, group after group
    starts: np.ndarray               # (m,) int64 start offset of every group
    group_phase: np.ndarray          # (m,) int8 PREFILL / DECODE
    object_bytes: float              # bytes of one object (all objects have one size)
    pinned_lookups: tuple[int, int] = (0, 0)    # lookups of pinned objects per phase (hits)
    how: str = ""                    # how the stream was obtained (for the output notes)
    label: str = ""                  # model and precision
    local_free_bytes: float | None = None   # local tier left for a cache (None: unknown)
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.oids.size)

    @property
    def group_sizes(self) -> np.ndarray:
        return np.diff(np.r_[self.starts, self.n]).astype(np.int64)

    @property
    def lookup_phase(self) -> np.ndarray:
        return np.repeat(self.group_phase, self.group_sizes)

    @property
    def max_group(self) -> int:
        return int(self.group_sizes.max()) if self.starts.size else 0

    @property
    def num_objects(self) -> int:
        return int(np.unique(self.oids).size)

    def lookups(self) -> np.ndarray:
        """Lookups per phase, pinned included (what the engine counts)."""
        ph = self.lookup_phase
        return np.array([int((ph == p).sum()) + self.pinned_lookups[p] for p in (PREFILL, DECODE)])

    def capacity_objects(self, capacity_bytes: float) -> int:
        """Objects an LRU/Belady cache of ``capacity_bytes`` holds (the engine evicts while
        used + size > capacity)."""
        c = int(capacity_bytes // self.object_bytes)
        while (c + 1) * self.object_bytes <= capacity_bytes:
            c += 1
        while c > 0 and c * self.object_bytes > capacity_bytes:
            c -= 1
        return c


# ---------------------------------------------------------------------- one pass: D and b
def _prev_next(oids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """prev[i] / nxt[i]: previous / next position of the same object (-1 / n when none)."""
    n = oids.size
    order = np.argsort(oids, kind="stable")
    same = oids[order[1:]] == oids[order[:-1]]
    prev = np.full(n, -1, dtype=np.int64)
    nxt = np.full(n, n, dtype=np.int64)
    prev[order[1:][same]] = order[:-1][same]
    nxt[order[:-1][same]] = order[1:][same]
    return prev, nxt


def _count_before_at_least(vals: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each query j: #{q < a[j] : vals[q] >= b[j]} (vals, b in [0, n]), by a merge-sort
    tree: [0, a) is a union of dyadic blocks, one per set bit of a; each level's blocks are
    sorted (merged from the level below) and answered with one global searchsorted."""
    n = vals.size
    out = np.zeros(a.size, dtype=np.int64)
    if n == 0 or a.size == 0:
        return out
    size = 1 << max(0, int(n - 1).bit_length())
    span = np.int64(n + 2)                        # values + 1 lie in [0, n + 1]
    level = np.zeros(size, dtype=np.int64)        # padding 0 = below every b + 1
    level[:n] = vals + 1
    key_b = b.astype(np.int64) + 1
    idx = np.arange(size, dtype=np.int64)
    j = 0
    while (1 << j) <= size:
        w = 1 << j
        if j:
            level = np.sort(level.reshape(-1, w), axis=1, kind="stable").reshape(-1)
        sel = np.flatnonzero((a >> j) & 1)
        if sel.size:
            k = (a[sel] >> j) - 1                  # the block [k w, (k+1) w) of [0, a)
            keys = level + (idx >> j) * span       # block id * span: one sorted array
            pos = np.searchsorted(keys, k * span + key_b[sel], side="left")
            out[sel] += (k + 1) * w - pos
        j += 1
    return out


@dataclass
class _Blocks:
    """Per lookup: previous use, D (distinct objects in between), b (block size)."""
    prev: np.ndarray
    nxt: np.ndarray
    grp: np.ndarray
    gstart: np.ndarray               # per lookup: start of its own group
    D: np.ndarray                    # -1 for a first (cold) lookup
    b: np.ndarray                    # 0 for a cold lookup
    lo: np.ndarray = None            # miss at C <= lo (D; never-hit for cold lookups)
    hi: np.ndarray = None            # hit at C >= hi (D + b; never for cold lookups)

    def __post_init__(self):
        never = np.iinfo(np.int64).max
        cold = self.D < 0
        self.lo = np.where(cold, never, self.D)
        self.hi = np.where(cold, never, self.D + self.b)


def _blocks(stream: LookupStream) -> _Blocks:
    oids, starts, n = stream.oids, stream.starts.astype(np.int64), stream.n
    sizes = stream.group_sizes
    grp = np.repeat(np.arange(starts.size, dtype=np.int64), sizes)
    gstart = starts[grp] if n else np.zeros(0, dtype=np.int64)
    prev, nxt = _prev_next(oids)
    warm = np.flatnonzero(prev >= 0)
    D = np.full(n, -1, dtype=np.int64)
    b = np.zeros(n, dtype=np.int64)
    if warm.size:
        # D and b depend only on the pair (G, H) of groups: answer each pair once
        pair = grp[prev[warm]] * np.int64(starts.size) + grp[warm]
        upair, inv = np.unique(pair, return_inverse=True)
        Gu, Hu = np.divmod(upair, np.int64(starts.size))
        sH, sG = starts[Hu], starts[Gu]
        eG = sG + sizes[Gu]
        # distinct objects seen before s_H, minus those seen before e_G and not since
        seen = np.r_[0, np.cumsum(prev < 0)]
        D[warm] = (seen[sH] - _count_before_at_least(nxt, eG, sH))[inv]
        # block: members q of G with nxt[q] >= s_H; per group sorted nxt, one searchsorted
        span = np.int64(n + 1)
        keys = np.sort(grp * span + nxt)            # group-major, each group's nxt ascending
        b[warm] = (eG - np.searchsorted(keys, Gu * span + sH, side="left"))[inv]
    return _Blocks(prev, nxt, grp, gstart, D, b)


# ---------------------------------------------------------------------- exact per size
def _exact_hits_at(bl: _Blocks, starts: np.ndarray, sizes: np.ndarray, C: int,
                   stats: dict) -> np.ndarray:
    """Boolean hit of every lookup at capacity C (objects)."""
    n = bl.D.size
    hit = bl.hi <= C
    amb = np.flatnonzero((bl.lo < C) & ~hit)
    stats["windowed"] = stats.get("windowed", 0) + int(amb.size)
    if amb.size == 0:
        return hit
    m = amb.size
    p = bl.prev[amb]
    slot = np.full(n, -1, dtype=np.int64)
    slot[amb] = np.arange(m)
    # Windowed lookups with the same (G, H) share one block: expand each pair's block once.
    ng = np.int64(starts.size)
    upair, inv = np.unique(bl.grp[p] * ng + bl.grp[amb], return_inverse=True)
    Gu, Hu = np.divmod(upair, ng)
    gl = sizes[Gu]
    rep = np.repeat(np.arange(upair.size), gl)
    q = np.repeat(starts[Gu], gl) + (np.arange(rep.size) - np.repeat(np.cumsum(gl) - gl, gl))
    keep = bl.nxt[q] >= starts[Hu][rep]             # still in the block at H's start
    rep, q = rep[keep], q[keep]                     # sorted by (pair, position)
    off = np.searchsorted(rep, np.arange(upair.size))
    end = np.r_[off[1:], rep.size]
    q_slot = slot[q]
    # members whose status at C the bounds decide contribute constants (prefix counts over
    # the block in lookup order); only windowed members are recomputed in each round
    fm = np.r_[0, np.cumsum((q_slot < 0) & (bl.hi[q] > C))]
    ip = np.searchsorted(rep * np.int64(n) + q, inv * np.int64(n) + p)   # p's index in it
    o, e = off[inv], end[inv]
    n_after = e - ip - 1
    const_before = fm[ip] - fm[o]
    const_after = fm[e] - fm[ip + 1]
    # (windowed lookup, windowed member of its block other than p)
    wpos = np.flatnonzero(q_slot >= 0)
    wc = np.bincount(rep[wpos], minlength=upair.size)
    wo = np.r_[0, np.cumsum(wc)][:-1]
    cnt = wc[inv]
    v_rep = np.repeat(np.arange(m), cnt)
    v_idx = wpos[np.repeat(wo[inv], cnt) + (np.arange(v_rep.size) - np.repeat(np.cumsum(cnt) - cnt, cnt))]
    v_q = q[v_idx]
    own = v_q != p[v_rep]
    v_rep, v_q = v_rep[own], v_q[own]
    v_slot, v_after = slot[v_q], v_q > p[v_rep]
    p_slot = slot[p]
    p_fixed = bl.hi[p] <= C
    p_var = p_slot >= 0
    Dm = bl.D[amb]
    cur = np.ones(m, dtype=bool)   # initial guess; any guess converges to the same solution
    rounds = 0
    while True:
        rounds += 1
        vmiss = ~cur[v_slot]
        miss_before = const_before + np.bincount(v_rep[vmiss & ~v_after], minlength=m)
        miss_after = const_after + np.bincount(v_rep[vmiss & v_after], minlength=m)
        ph = np.where(p_var, cur[np.maximum(p_slot, 0)], p_fixed)
        r = np.where(ph, n_after + miss_before, miss_after)
        new = Dm + r < C
        if np.array_equal(new, cur):
            break
        cur = new
    stats["rounds"] = max(stats.get("rounds", 0), rounds)
    hit[amb] = cur
    return hit


def _threshold_counts(thr: np.ndarray, ph: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(len(sizes), 2): lookups per phase with threshold <= C (cumulative histograms)."""
    out = np.zeros((sizes.size, 2), dtype=np.int64)
    top = int(sizes.max()) + 1 if sizes.size else 1
    for p_ in (PREFILL, DECODE):
        cum = np.cumsum(np.bincount(np.minimum(thr[ph == p_], top), minlength=top + 1))
        out[:, p_] = cum[np.minimum(sizes, top)]
    return out


def lru_curve(stream: LookupStream, sizes) -> dict:
    """Exact engine LRU hits at each capacity in ``sizes`` (objects), per phase.

    Returns {"sizes", "hits": (len(sizes), 2) int64 incl. pinned, "lookups": (2,),
    "lower"/"upper": the one-pass bounds (hits certain / possible) at the same sizes,
    "windowed": lookups resolved inside a window, "rounds": most fixed-point rounds}."""
    sizes = np.asarray(list(sizes), dtype=np.int64)
    bl = _blocks(stream)
    ph = stream.lookup_phase
    gsizes = stream.group_sizes
    starts = stream.starts.astype(np.int64)
    pinned = np.asarray(stream.pinned_lookups, dtype=np.int64)
    stats: dict = {}
    warm = bl.D >= 0
    lower = _threshold_counts(bl.D[warm] + bl.b[warm], ph[warm], sizes) + pinned
    upper = _threshold_counts(bl.D[warm] + 1, ph[warm], sizes) + pinned
    hits = np.zeros((sizes.size, 2), dtype=np.int64)
    for j, C in enumerate(sizes.tolist()):
        h = _exact_hits_at(bl, starts, gsizes, int(C), stats)
        hits[j] = np.bincount(ph[h], minlength=2)[:2] + pinned
    return {"sizes": sizes, "hits": hits, "lookups": stream.lookups(), "lower": lower,
            "upper": upper, "windowed": stats.get("windowed", 0),
            "rounds": stats.get("rounds", 0)}


def lru_bounds_all_sizes(stream: LookupStream) -> dict:
    """The one-pass bounds for every capacity 1..distinct objects at once: hits certain
    (C >= D + b) and hits possible (C > D), per phase, pinned included."""
    bl = _blocks(stream)
    ph = stream.lookup_phase
    Cs = np.arange(1, max(1, stream.num_objects) + 1)
    warm = bl.D >= 0
    pinned = np.asarray(stream.pinned_lookups, dtype=np.int64)
    return {"sizes": Cs,
            "lower": _threshold_counts(bl.D[warm] + bl.b[warm], ph[warm], Cs) + pinned,
            "upper": _threshold_counts(bl.D[warm] + 1, ph[warm], Cs) + pinned}


# ---------------------------------------------------------------------- Belady, per size
def belady_curve(stream: LookupStream, sizes) -> dict:
    """Hits of the project's Belady (demand MIN, future = this stream) at each capacity,
    replayed group by group with the engine's semantics; per phase, pinned included."""
    from types import SimpleNamespace

    from ..policies.cache.belady import Belady

    sizes = np.asarray(list(sizes), dtype=np.int64)
    ph = stream.lookup_phase
    oids = stream.oids.tolist()
    bounds = stream.starts.tolist() + [stream.n]
    gph = stream.group_phase.tolist()
    size = float(stream.object_bytes)
    hits = np.zeros((sizes.size, 2), dtype=np.int64)
    ctx = SimpleNamespace(cache_stream=lambda: stream.oids)
    for j, C in enumerate(sizes.tolist()):
        cache = Belady(Belady.Params(capacity_gb=0.0), ctx)
        cache.capacity_bytes = C * size          # exactly C objects
        access, insert = cache.access, cache.insert
        h = [0, 0]
        for g in range(len(bounds) - 1):
            missed = []
            for o in oids[bounds[g]:bounds[g + 1]]:
                if access(o):
                    h[gph[g]] += 1
                else:
                    missed.append(o)
            for o in missed:
                insert(o, size)
        hits[j] = h
    hits += np.asarray(stream.pinned_lookups, dtype=np.int64)
    del ph
    return {"sizes": sizes, "hits": hits, "lookups": stream.lookups()}
