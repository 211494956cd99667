"""Background migration with hysteresis (MoE-CXL dynamic load balancing).

Every ``interval_s`` of simulated time, over the devices of ``tiers``:

    f(x)   <- decay * f(x) + reads of x from its device in the interval   (EMA frequency)
    u_d    =  bytes read from d in the interval / (B_d * interval)  (measured utilisation)
    imbalance = max_d u_d / mean_d u_d - 1

Hysteresis: balancing switches on when the imbalance exceeds ``high`` and off again only
when it falls below ``low`` (``low <= high``), so a load hovering near one threshold does not
start and stop moves every interval. While on, up to ``max_moves`` experts move per interval
off the most utilised device, by decreasing w(x) = p(x) s(x) (p = f / EMA of tokens per
interval: expected reads per token), skipping any that moved less than ``min_residence_s``
ago (the 16 hottest such are considered). Each goes to the live device c with room where a fetch of it would finish soonest,

    E_c(x) = lat_c + (s(x) + W_c) / B_c        (W_c = sum of w(y) over c's other experts,
                                                per layer with ``load_scope: layer``)

and only if that beats staying, ``lat_h + (s(x) + W_h - w(x)) / B_h``. This is the expected
completion of the fetch *given* that x missed (its whole size moves, the others' expected
bytes queue with it), as the cxl_aware scheduler uses for copies; Algorithm 1 weighs x's own
bytes by p(x) instead, which at batch 1 (a layer's few misses rarely collide on a device)
would send hot experts to an idle slow expander. After a move the old device is the worse
home, so the expert does not come straight back unless the frequencies change. ``B_d`` is the private bandwidth of
placement/tiering.py. Moves run at background priority by default: off a device that demand
fetches saturate (an expander holding too many hot experts), a background copy gets no
bandwidth and never lands; ``priority: demand`` shares the device fairly with demand
fetches instead (they slow while it moves). f counts reads from devices (demand fetches and prefetches), not
activations: with a GPU cache the hot experts are hits, and only what misses loads a device.
A move is accepted only if the target's expected load after it stays at or below the
source's (no overshoot, so two devices cannot hand an expert back and forth). Moves are
background copies (memory hierarchy ``move``: below demand
and prefetch priority) counted in ``migrations`` and ``bytes.migrated``.

Bound on moves. An expert moves at most once per ``min_residence_s``, and at most
``max_moves`` experts move per interval, so a run of length T makes at most
``min(max_moves * ceil(T / interval_s), n_moved_experts * (1 + floor(T / min_residence_s)))``
migrations (tests/test_migration.py checks it on an alternating workload).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ...errors import ConfigError
from ..base import MIGRATION, MigrationPolicy
from ..placement.tiering import private_bandwidth


SCAN = 16     # experts of the hot device considered per move, hottest first


@MIGRATION.register("hysteresis")
class Hysteresis(MigrationPolicy):
    active = True

    @dataclass(frozen=True, kw_only=True)
    class Params:
        tiers: list[str] = field(default_factory=lambda: ["cxl"],
                                 help="tiers whose devices exchange experts")
        interval_s: float = field(1.0, help="decision period, s of simulated time (> 0)")
        decay: float = field(0.5, help="EMA decay of activation counts per interval, in (0, 1]")
        high: float = field(0.25, min=0.0, help="imbalance that switches balancing on")
        low: float = field(0.10, min=0.0, help="imbalance below which it switches off")
        min_residence_s: float = field(5.0, min=0.0,
                                       help="an expert stays this long after a move")
        max_moves: int = field(2, min=1, help="moves started per interval, at most")
        priority: str = field("background", choices=("background", "demand"),
                              help="moves use what demand and prefetch leave (background), or "
                                   "share fairly with demand fetches (demand)")
        load_scope: str = field("layer", choices=("layer", "all"),
                                help="expected load balanced per layer (as placement moe_cxl "
                                     "with load_scope: layer) or over all experts")

        def __post_init__(self):
            if not self.interval_s > 0:
                raise ConfigError(f"must be > 0, got {self.interval_s:g}", key="interval_s")
            if not 0.0 < self.decay <= 1.0:
                raise ConfigError(f"must lie in (0, 1], got {self.decay:g}", key="decay")
            if self.low > self.high:
                raise ConfigError(f"low {self.low:g} must not exceed high {self.high:g}",
                                  key="low")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        sysm = ctx.system
        devs = []
        for i, t in enumerate(params.tiers):
            d = ctx.tier_devices(t, key=f"migration.tiers[{i}]")
            if t == sysm.local_tier:
                raise ConfigError(f"'{t}' is the local tier (pinned experts do not move)",
                                  source=ctx.source, key=f"migration.tiers[{i}]")
            devs += d
        if len(devs) < 2:
            raise ConfigError("needs at least two devices to move experts between",
                              source=ctx.source, key="migration.tiers")
        self.devs = [d.index for d in devs]
        self.bw = np.array(private_bandwidth(devs) if len({d.tier for d in devs}) == 1
                           else [min([d.spec.read_bw] + [l.spec.bw for l in d.path])
                                 for d in devs])
        self.freq = np.zeros(ctx.num_objects)
        self._reads = None          # the hierarchy's per-object reads at the last decision
        self.tokens = 0.0           # EMA of tokens per interval (the frequencies' denominator)
        self._tokens = 0
        self.lat = [ctx.system.fetch_path(d)[1] for d in devs]
        self._util = None
        self.moved_at = np.full(ctx.num_objects, -math.inf)
        self.on = False
        self.next_t = params.interval_s
        self._last = None           # bytes read per device at the last decision
        self._last_t = 0.0
        self.decisions = 0

    def _read_bytes(self, hier) -> np.ndarray:
        f = hier.fetched_bytes
        return np.array([f[0][d] + f[1][d] for d in self.devs])

    def on_iteration_end(self, phase, rows, now):
        self._tokens += rows.size
        if now < self.next_t:
            return
        p = self.params
        hier = self.ctx.hierarchy
        self.tokens = p.decay * self.tokens + self._tokens
        self._tokens = 0
        reads = np.asarray(hier.reads, dtype=np.float64)
        new = reads - (self._reads if self._reads is not None else 0.0)
        self._reads = reads
        self.freq = p.decay * self.freq + new
        read = self._read_bytes(hier)
        span = now - self._last_t
        delta = read - (self._last if self._last is not None else 0.0)
        self._last, self._last_t = read, now
        self.next_t = now + p.interval_s
        self.decisions += 1
        live = np.array([d not in hier.down for d in self.devs])
        util = np.where(live, delta / (self.bw * max(span, 1e-12)), np.nan)
        self._util = np.nan_to_num(util, nan=-1.0)
        mean = np.nanmean(util) if live.any() else 0.0
        if not mean > 0:
            return
        imbalance = np.nanmax(util) / mean - 1.0
        if self.on and imbalance < p.low:
            self.on = False
        elif not self.on and imbalance > p.high:
            self.on = True
        if not self.on:
            return
        self._rebalance(hier, now)

    def _rebalance(self, hier, now: float) -> None:
        p = self.params
        ctx = self.ctx
        sizes = ctx.object_bytes
        home = hier.home
        per = ctx.num_experts * ctx.slices_per_expert
        rows = ctx.num_layers if p.load_scope == "layer" else 1
        layer = (np.arange(ctx.num_objects) // per if rows > 1
                 else np.zeros(ctx.num_objects, dtype=np.int64))
        # Algorithm 1's terms, from the EMA: w(x) = p(x) s(x) expected bytes per token,
        # W_d = sum of w over d's experts (per layer with load_scope: layer)
        w = self.freq * sizes / max(self.tokens, 1e-12)
        W = np.zeros((rows, len(self.devs)))
        for i, d in enumerate(self.devs):
            on = home == d
            W[:, i] = np.bincount(layer[on], weights=w[on], minlength=rows)
        util = self._util
        for _ in range(p.max_moves):
            live = [i for i, d in enumerate(self.devs) if d not in hier.down]
            if len(live) < 2:
                return
            hot = max(live, key=lambda i: util[i])
            src = self.devs[hot]
            on_hot = np.flatnonzero((home == src) & (now - self.moved_at >= p.min_residence_s))
            on_hot = on_hot[np.argsort(-w[on_hot], kind="stable")][:SCAN]
            room = {c: hier.room(self.devs[c]) for c in live if c != hot}
            moved = False
            for oid in on_hot.tolist():
                if w[oid] <= 0 or oid in hier.moves:
                    continue
                r = layer[oid]
                sz = sizes[oid]
                stay = self.lat[hot] + (sz + W[r, hot] - w[oid]) / self.bw[hot]
                cost = [(self.lat[c] + (sz + W[r, c]) / self.bw[c], c)
                        for c in room if room[c] >= sz]
                for go, c in sorted(cost):
                    if go >= stay:                # no better home for it (Algorithm 1)
                        break
                    if hier.move(oid, self.devs[c], now, reason="migrate",
                                 demand=p.priority == "demand"):
                        W[r, hot] -= w[oid]
                        W[r, c] += w[oid]
                        util[c] += util[hot] * w[oid] / max(W[:, hot].sum() + w[oid], 1e-30)
                        self.moved_at[oid] = now
                        moved = True
                        break
                if moved:
                    break
            if not moved:
                return
