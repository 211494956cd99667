"""Reference replays through libCacheSim (the ``libcachesim`` package, a test extra) used to
validate the engine in tests and benchmarks. Imported lazily: the simulator never needs it.
"""
from __future__ import annotations

import numpy as np


def libcachesim_cache(policy: str, capacity_bytes: int):
    import libcachesim as lcs
    factory = {"lru": lcs.LRU, "lfu": lcs.LFU, "belady": lcs.Belady}[policy]
    return factory(cache_size=int(capacity_bytes))


def replay_grouped(policy: str, stream: np.ndarray, starts: np.ndarray, capacity_bytes: int,
                   object_bytes: int) -> tuple[int, list[int]]:
    """libCacheSim driven the way the engine looks objects up (engine/simulation.py): per
    lookup group (one layer of one iteration) hits are decided on the state before the group
    (``find`` without update), then ``get`` is called on the hits, then on the misses, which
    insert. Returns (hits, missed objects in insertion order)."""
    import libcachesim as lcs
    cache = libcachesim_cache(policy, capacity_bytes)
    req = lcs.Request()
    req.obj_size = int(object_bytes)
    bounds = starts.tolist() + [stream.size]
    objs_all = stream.tolist()
    find, get = cache.find, cache.get
    hits, missed = 0, []
    for g in range(len(bounds) - 1):
        objs = objs_all[bounds[g]:bounds[g + 1]]
        resident = []
        for o in objs:
            req.obj_id = o
            resident.append(find(req, False) is not None)
        for o, r in zip(objs, resident):
            if r:
                req.obj_id = o
                get(req)
                hits += 1
        for o, r in zip(objs, resident):
            if not r:
                req.obj_id = o
                if get(req):
                    raise AssertionError(f"libCacheSim hit {o} that find() reported absent")
                missed.append(o)
    return hits, missed


def replay_flat(policy: str, stream: np.ndarray, capacity_bytes: int, object_bytes: int) -> int:
    """Hits of libCacheSim's own one-request-at-a-time replay of ``stream``."""
    import libcachesim as lcs
    cache = libcachesim_cache(policy, capacity_bytes)
    req = lcs.Request()
    req.obj_size = int(object_bytes)
    get = cache.get
    hits = 0
    for o in stream.tolist():
        req.obj_id = o
        hits += get(req)
    return hits
