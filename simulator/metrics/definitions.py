"""Every metric a run reports: name, unit and formula (the README table is generated from this
list and a test checks that ``summary.json`` holds exactly these names).

``<phase>`` is prefill or decode, ``<device>`` a memory device name (``hbm``, ``dram``,
``cxl.0``...), ``<link>`` a link name, ``<tier>`` a tier with several devices.
"""
from __future__ import annotations

import re

METRICS: list[tuple[str, str, str]] = [
    # workload
    ("requests", "count", "requests simulated"),
    ("prefill_tokens", "tokens", "prompt tokens processed"),
    ("decode_tokens", "tokens", "decode steps (one generated token each)"),
    ("iterations.<phase>", "count", "compute-unit iterations of that phase"),
    ("makespan_s", "s", "time from the first arrival to the last request's completion"),
    ("time.<phase>_s", "s", "sum of the durations of that phase's iterations"),
    # latency
    ("ttft_s.mean", "s", "time to first token = first forward pass end - arrival, averaged over requests"),
    ("ttft_s.p50", "s", "median TTFT"),
    ("ttft_s.p99", "s", "99th percentile TTFT (linear interpolation)"),
    ("tpot_s.mean", "s", "time per output token: mean over all gaps between a request's consecutive "
                          "token completions (first gap from the first token)"),
    ("tpot_s.p50", "s", "median of those gaps"),
    ("tpot_s.p99", "s", "99th percentile of those gaps"),
    ("e2e_s.mean", "s", "end-to-end latency = completion - arrival, mean over requests"),
    ("e2e_s.p50", "s", "median end-to-end latency"),
    ("e2e_s.p99", "s", "99th percentile end-to-end latency"),
    ("queue_s.mean", "s", "admission - arrival, mean over requests"),
    ("decode_tokens_per_s", "tokens/s", "decode_tokens / makespan_s"),
    ("tokens_per_s", "tokens/s", "(prefill_tokens + decode_tokens) / makespan_s"),
    # accesses
    ("expert_accesses.<phase>", "count", "token->expert uses: tokens x MoE layers x top-k"),
    ("lookups.<phase>", "count", "expert lookups: distinct experts needed per layer per iteration"),
    ("hits.<phase>", "count", "lookups served from the local tier (pinned or cached)"),
    ("misses.<phase>", "count", "lookups neither pinned nor cached (fetched on demand or by a prefetch)"),
    ("hit_rate.<phase>", "fraction", "hits / lookups of that phase"),
    ("hit_rate", "fraction", "hits / lookups over both phases"),
    ("lookups_served.<phase>.<device>", "count", "lookups served by that device "
                                                 "(the local device's count = hits)"),
    # bytes
    ("bytes.fetched.<phase>", "B", "bytes copied into the local tier by demand fetches and prefetches"),
    ("bytes.read.<device>", "B", "bytes read from the device: fetches out of it, and weight/KV "
                                 "reads by the compute unit for the local device"),
    ("bytes.written.<device>", "B", "bytes written into the device (fetch destinations)"),
    ("bytes.link.<link>", "B", "bytes that crossed the link (both directions)"),
    # energy
    ("energy_j.total", "J", "sum of every energy component below (compute + dynamic + link + static)"),
    ("energy_j.compute", "J", "FLOPs x energy_pj_per_flop"),
    ("energy_j.dynamic.<device>", "J", "bytes read x read pJ/bit x 8 + bytes written x write pJ/bit x 8"),
    ("energy_j.link.<link>", "J", "bytes.link x energy_pj_per_bit x 8"),
    ("energy_j.static.compute", "J", "compute static power x makespan_s"),
    ("energy_j.static.<device>", "J", "device static power x makespan_s"),
    ("energy_j.<phase>", "J", "energy of that phase: its compute, dynamic and link energy plus "
                              "static power x time.<phase>_s"),
    ("energy_j.idle", "J", "static power x (makespan_s - time.prefill_s - time.decode_s)"),
    ("energy_j_per_decode_token", "J/token", "energy_j.total / decode_tokens"),
    ("energy_j_per_token", "J/token", "energy_j.total / (prefill_tokens + decode_tokens)"),
    # cost and memory
    ("memory_cost_usd", "USD", "sum over devices of capacity x cost per GB"),
    ("memory_cost_usd.<device>", "USD", "capacity x cost per GB of the device"),
    ("local.capacity_bytes", "B", "capacity of the compute unit's memory"),
    ("local.non_expert_bytes", "B", "attention, shared-expert, router, dense-layer and embedding weights"),
    ("local.pinned_bytes", "B", "experts pinned in local memory by placement"),
    ("local.kv_peak_bytes", "B", "largest KV-cache footprint (live tokens x KV bytes per token)"),
    ("local.headroom_bytes", "B", "capacity - non-expert - pinned - cache capacity - KV peak "
                                  "(negative = over-committed)"),
    ("cache.capacity_bytes", "B", "expert-cache budget"),
    ("cache.peak_bytes", "B", "largest occupancy of the expert cache (never above capacity)"),
    ("cache.insertions", "count", "objects admitted to the cache"),
    ("cache.evictions", "count", "objects evicted from the cache"),
    # placement
    ("placement.experts.<device>", "count", "experts homed on the device at the end of the run "
                                            "(an expert split into slices counts 1/slices per slice)"),
    ("placement.bytes.<device>", "B", "expert bytes homed on the device at the end of the run"),
    ("placement.share.<tier>", "fraction", "placement.bytes of the tier's devices / all expert "
                                           "bytes (the local tier's share is the pinned one)"),
    # prefetch
    ("prefetch.issued", "count", "background fetches started by the prefetch policy"),
    ("prefetch.useful", "count", "prefetched objects later looked up (timely or late)"),
    ("prefetch.late", "count", "useful prefetches still in flight when looked up (the layer waited)"),
    ("prefetch.wasted", "count", "prefetched objects never looked up (issued - useful)"),
    ("prefetch.late_bytes", "B", "bytes of the late prefetches (the layer waited for them)"),
    ("prefetch.wasted_bytes", "B", "bytes of prefetches never looked up (moved for nothing)"),
    ("prefetch.peak_buffer_bytes", "B", "largest staging-buffer footprint of landed, unused prefetches"),
    ("prefetch.accuracy", "fraction", "prefetch.useful / prefetch.issued"),
    ("prefetch.coverage", "fraction", "prefetch.useful / misses (misses that a prefetch served)"),
    ("bytes.prefetched.<phase>", "B", "bytes moved by prefetches issued in that phase"),
    # cache-aware routing (policies/routing/cache_aware.py; only with such a policy)
    ("routing.mass_moved", "prob", "sum over decode token-layers of the router's own top-k "
     "probability mass minus that of the experts chosen (0 when nothing is rerouted)"),
    ("routing.mass_moved_per_token", "prob", "routing.mass_moved per decode token-layer"),
    ("routing.rerouted_uses", "count", "decode token-expert uses not in the router's own top-k"),
    ("routing.rerouted_tokens", "count", "decode token-layers with at least one rerouted use"),
    ("routing.decode_uses", "count", "decode token-expert uses the routing policy decided"),
    # mixed precision (policies/mixed_precision)
    ("precision.low_uses", "count", "token-expert uses run from a low-bit copy"),
    ("precision.low_fraction", "fraction", "precision.low_uses / token-expert uses looked up "
     "(0 with mixed_precision: full)"),
    ("precision.high_fraction.decode", "fraction", "dbsc: decode token-expert uses run at "
     "b_high (both slices resident) / decode uses"),
    ("precision.bits_mean", "bits", "dbsc, quantized: mean weight-code bits over token-expert "
     "uses"),
    ("precision.error_mass", "prob", "dbsc, quantized: sum over decode token-expert uses of gate "
     "weight x relative weight error of the precision run (quant/error_model.py)"),
    # bit-sliced experts (mixed_precision: dbsc; MSB = slice 0, LSB = slice 1)
    ("slices.msb_lookups.<phase>", "count", "expert lookups (each looks up its MSB slice)"),
    ("slices.msb_misses.<phase>", "count", "MSB slices not resident at their lookup"),
    ("slices.lsb_lookups.<phase>", "count", "LSB lookups: experts that were critical (gate "
     "weight >= threshold)"),
    ("slices.lsb_misses.<phase>", "count", "critical experts whose LSB slice was not resident"),
    ("slices.msb_hit_rate.<phase>", "fraction", "1 - msb_misses / msb_lookups"),
    ("slices.lsb_hit_rate.<phase>", "fraction", "1 - lsb_misses / lsb_lookups"),
    ("slices.miss_rate_hb.<phase>", "fraction", "high-bit-normalised miss rate: (msb_misses x "
     "slices.msb_bytes + lsb_misses x slices.lsb_bytes) / (msb_lookups x (msb_bytes + "
     "lsb_bytes)), misses counted in units of high-bit experts"),
    ("slices.msb_bytes", "B", "bytes of one expert's MSB slice (codes, zero-points, scales)"),
    ("slices.lsb_bytes", "B", "bytes of one expert's LSB slice"),
    ("fills", "count", "objects loaded into the cache in the background (LSB slices of "
     "critical experts run at low precision; with a policy that fills)"),
    ("bytes.filled.<phase>", "B", "bytes of those background fills"),
    # accuracy proxy (with a mixed-precision or a cache-aware routing policy: one reporting routing.mass_moved)
    ("accuracy.mass_moved_per_token", "prob", "routing.mass_moved per decode token-layer (0 "
     "with trace routing)"),
    ("accuracy.quant_error_per_token", "prob", "precision.error_mass per decode token-layer "
     "(0 at the model's precision; nan when the precision policy models no error: hobbit)"),
    ("accuracy.proxy", "prob", "per decode token-layer output-error proxy = "
     "accuracy.mass_moved_per_token + accuracy.quant_error_per_token"),
    # moves between devices (migration, re-homing after a fault)
    ("migrations", "count", "experts moved between devices by the migration policy"),
    ("bytes.migrated", "B", "bytes of those migrations"),
    ("bytes.moved", "B", "bytes copied between non-local devices (migrations, re-homing and "
     "returns after a fault; moves cut by a failure count what they moved)"),
    # faults (engine/faults.py; TPOT windows around the first failure)
    ("faults.events", "count", "device failures that happened in the run"),
    ("faults.unavailable_accesses", "count", "lookups that found no live copy and waited for "
     "a device to return"),
    ("faults.unavailable_wait_s", "s", "sum of those waits"),
    ("faults.restarted_transfers", "count", "fetches and prefetches cut by a failure and "
     "restarted from another copy"),
    ("faults.rehomed_bytes", "B", "bytes moved to give a failed device's experts a live home"),
    ("faults.returned_bytes", "B", "bytes moved back to devices after their return"),
    ("faults.tpot_before_s", "s", "mean decode gap ending before the first failure"),
    ("faults.tpot_down_s", "s", "mean decode gap ending while that device was down"),
    ("faults.tpot_after_s", "s", "mean decode gap ending after its return"),
    ("faults.recovery_s", "s", "time from the return until the mean of 8 consecutive decode "
     "gaps is within 5% of faults.tpot_before_s (nan: never)"),
    # utilisation
    ("utilization.compute", "fraction", "(time.prefill_s + time.decode_s) / makespan_s"),
    ("utilization.link.<link>", "fraction", "time with at least one transfer on the link / makespan_s"),
    ("utilization.device.<device>", "fraction", "time with at least one transfer reading or writing "
                                                "the device / makespan_s"),
    ("load_balance_cv.<tier>", "ratio", "population std / mean of bytes.read over the tier's "
                                        "devices (tiers with >= 2 devices; NaN if none was read):"
                                        " 0 = even load, sqrt(n-1) = one of n devices served all"),
]


def _pattern(name: str) -> re.Pattern:
    parts = re.split(r"(<[a-z]+>)", name)
    rx = "".join({"<phase>": "(prefill|decode)"}.get(p, r"[A-Za-z0-9_.\-]+") if p.startswith("<")
                 else re.escape(p) for p in parts)
    return re.compile(f"^{rx}$")


_PATTERNS = [(_pattern(n), n) for n, _, _ in METRICS]


def definition_of(key: str) -> tuple[str, str, str] | None:
    """The (name, unit, formula) row documenting summary key ``key``."""
    for rx, name in _PATTERNS:
        if rx.match(key):
            return next(m for m in METRICS if m[0] == name)
    return None


def markdown_table() -> str:
    """The metrics table of README.md (regenerate with ``python -m simulator.metrics.definitions``)."""
    rows = ["| metric | unit | definition |", "|---|---|---|"]
    rows += [f"| `{n}` | {u} | {f} |" for n, u, f in METRICS]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
