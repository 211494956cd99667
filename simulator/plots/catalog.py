"""Plot kinds and what each reads: importable without matplotlib or pandas, so that building
the command line (``moesim --help``, every command's start-up) does not pay for them."""
from __future__ import annotations

READS: dict[str, str] = {
    "latency": "sweep table: a swept key, ttft_s.mean, tpot_s.mean (or --y)",
    "energy": "sweep table or run folder: energy_j.compute, energy_j.static.*, "
              "energy_j.dynamic.*, energy_j.link.*",
    "layer_hits": "run folder (layers.csv: layer, phase, lookups, hits)",
    "occupancy": "run folder (transfers.parquet; hardware.yaml for links; "
                 "steps.parquet cache_bytes for the cache)",
    "mrc": "MRC table (moesim mrc -o: policy, phase, capacity_gb, hit_rate) or a "
           "sweep over cache.capacity_gb with variant and hit_rate.<phase>",
    "placement": "sweep table or run folder: placement.experts.<device>, "
                 "placement.bytes.<device>",
    "line": "table of points: --x KEY --y METRIC [--hue KEY]",
    "bar": "table of points: --x KEY --y METRIC [--hue KEY]",
}
