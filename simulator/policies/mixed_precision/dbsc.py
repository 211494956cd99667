"""SliceMoE's Dynamic Bit-Sliced Caching (DBSC; arXiv 2512.12990, abstract and DESIGN.md §1).

Each expert is quantized once at b_high bits (asymmetric, groups of ``group`` weights) and
stored as two objects cut by AMAT (simulator/quant/amat.py):

    slice 0 = MSB slice: the top b_low bits of every code and zero-point + fp16 scales,
              a usable b_low-bit expert on its own
    slice 1 = LSB slice: the remaining b_high - b_low bits (no scales); MSB + LSB = the
              b_high expert

Both live in one cache shared across layers (``cache: slice_lru`` evicts LSBs first; plain
``lru`` treats them alike). Per MoE layer, for each routed expert e with gate weight g over
the tokens using it (one token in decode; its largest weight in a batch or prefill):

    critical   g >= threshold (the "single-head threshold"; 0..k critical experts per token)
    MSB slice  always looked up: a miss is fetched from Flash and the layer waits for it
    LSB slice  looked up when e is critical (a slice hit or miss of its own); when it is
               resident also for a non-critical expert (it costs nothing to use)
    precision  b_high when both slices are resident at the lookup, else b_low; a critical
               expert whose LSB missed: lsb_miss = low  -> runs at b_low now, its LSB is loaded
                                                        in the background (hierarchy.fill,
                                                        below demand priority) for next time
                                         lsb_miss = wait -> the layer also waits for the LSB
                                                        and e runs at b_high

Compute reads the bytes of the slices an expert runs from (MSB, or MSB + LSB): on a memory-
bound phone decode the b_low expert is faster and its DRAM energy lower; FLOPs (XPU ops) are
the same at either precision (low-bit codes are widened to the XPU's INT8 MACs).

Reported (``slices.*``, ``precision.*``): per phase MSB and LSB lookups and misses, the
high-bit-normalised miss rate = (MSB misses x MSB bytes + LSB misses x LSB bytes) / (expert
lookups x high-bit expert bytes), uses at each precision, and, for the accuracy proxy, the
decode sum over token-expert uses of gate weight x relative weight error at the precision run
(simulator/quant/error_model.py on synthetic weights of the expert's shape).

The paper's code is not public: the threshold's default (0.2), the choice to load a missed
LSB in the background (``lsb_miss: low``) and the MSB-first ordering of a layer's fetches are
ours; the rule "full precision only when both slices are resident" is the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config.strict import field
from ...errors import ConfigError
from ...traces.schema import DECODE
from ..base import MIXED_PRECISION, MixedPrecisionPolicy
from .quantized import check_quant_params, needs_scores


@MIXED_PRECISION.register("dbsc")
class DBSC(MixedPrecisionPolicy):
    active = True
    slices = 2
    fills = True

    @dataclass(frozen=True, kw_only=True)
    class Params:
        b_high: int = field(8, help="bits of the full (MSB + LSB) expert")
        b_low: int = field(4, help="bits of the MSB slice (the low-bit expert)")
        group: int = field(32, help="weights per quantization group (G32 in the paper)")
        threshold: float = field(0.2, help="gate weight at or above which an expert is "
                                           "critical and needs its LSB slice too")
        lsb_miss: str = field("low", choices=("low", "wait"),
                              help="a critical expert whose LSB missed: run at b_low and load "
                                   "the LSB in the background (low), or wait for it (wait)")
        weights: str = field("gaussian", choices=("gaussian", "student_t"),
                             help="synthetic weight distribution for the AMAT error of the "
                                  "accuracy proxy")

        def __post_init__(self):
            if not 0.0 <= self.threshold <= 1.0:
                raise ConfigError(f"is a gate weight in [0, 1], got {self.threshold:g}",
                                  key="threshold")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        needs_scores(ctx, "dbsc")
        sb, err = check_quant_params(ctx, params.b_high, params.b_low, params.group,
                                     params.weights)
        self.msb_bytes, self.lsb_bytes = float(sb.msb), float(sb.lsb)
        self.err_high, self.err_low = err["high"], err["amat_low"]
        self._wait = params.lsb_miss == "wait"
        self._pending: list[int] = []
        self.msb_lookups, self.msb_misses = [0, 0], [0, 0]
        self.lsb_lookups, self.lsb_misses = [0, 0], [0, 0]
        self.high_uses, self.low_uses = [0, 0], [0, 0]
        self.error_mass = 0.0                   # decode: sum of gate weight x weight error
        self.decode_token_layers = 0

    def slice_bytes(self, expert_bytes: float) -> list[float]:
        return [self.msb_bytes, self.lsb_bytes]

    def full_bytes(self, expert_bytes: float) -> float:
        return self.msb_bytes + self.lsb_bytes

    def select(self, phase, layer, rows, experts, hierarchy, scores=None):
        if scores is None:
            scores = self.ctx.trace.scores[rows, layer]
        resident = hierarchy.resident
        thr = self.params.threshold
        if rows.size == 1 and phase == DECODE:
            return self._select_one(layer, experts[0].tolist(), scores[0].tolist(), resident,
                                    thr)
        count: dict[int, int] = {}
        top: dict[int, float] = {}
        gsum: dict[int, float] = {}
        for e, g in zip(experts.ravel().tolist(), scores.ravel().tolist()):
            count[e] = count.get(e, 0) + 1
            gsum[e] = gsum.get(e, 0.0) + g
            if g > top.get(e, -1.0):
                top[e] = g
        keys = list(count) if rows.size == 1 else sorted(count)
        base = layer * self.ctx.num_experts
        oids, counts = [], []
        msb_miss = lsb_look = lsb_miss = high = low = 0
        err = 0.0
        pending = self._pending
        for e in keys:
            c = count[e]
            m = (base + e) * 2
            oids.append(m)
            counts.append(c)
            if not resident(m):
                msb_miss += 1
            lsb_res = resident(m + 1)
            critical = top[e] >= thr
            if critical:
                lsb_look += 1
                if not lsb_res:
                    lsb_miss += 1
            if lsb_res or (critical and self._wait):
                oids.append(m + 1)
                counts.append(0)              # completes the expert: bytes, no extra FLOPs
                high += c
                err += gsum[e] * self.err_high
            else:
                if critical:
                    pending.append(m + 1)
                low += c
                err += gsum[e] * self.err_low
        self.msb_lookups[phase] += len(keys)
        self.msb_misses[phase] += msb_miss
        self.lsb_lookups[phase] += lsb_look
        self.lsb_misses[phase] += lsb_miss
        self.high_uses[phase] += high
        self.low_uses[phase] += low
        if phase == DECODE:
            self.error_mass += err
            self.decode_token_layers += rows.size
        return oids, counts

    def _select_one(self, layer, ex, sc, resident, thr):
        """``select`` for one decode token (batch 1, the hot path): same counts, no
        aggregation (a token's k experts are distinct)."""
        base = layer * self.ctx.num_experts
        oids, counts = [], []
        msb_miss = lsb_look = lsb_miss = high = 0
        err = 0.0
        eh, el, wait = self.err_high, self.err_low, self._wait
        for e, g in zip(ex, sc):
            m = (base + e) * 2
            oids.append(m)
            counts.append(1)
            if not resident(m):
                msb_miss += 1
            lsb_res = resident(m + 1)
            critical = g >= thr
            if critical:
                lsb_look += 1
                if not lsb_res:
                    lsb_miss += 1
            if lsb_res or (critical and wait):
                oids.append(m + 1)
                counts.append(0)
                high += 1
                err += g * eh
            else:
                if critical:
                    self._pending.append(m + 1)
                err += g * el
        k = len(ex)
        self.msb_lookups[1] += k
        self.msb_misses[1] += msb_miss
        self.lsb_lookups[1] += lsb_look
        self.lsb_misses[1] += lsb_miss
        self.high_uses[1] += high
        self.low_uses[1] += k - high
        self.error_mass += err
        self.decode_token_layers += 1
        return oids, counts

    def after_lookup(self, phase, layer, t):
        if self._pending:
            self.ctx.hierarchy.fill(phase, self._pending, t)
            self._pending = []

    def summary(self):
        s = {}
        m, l = self.msb_bytes, self.lsb_bytes
        for p, name in ((0, "prefill"), (1, "decode")):
            look = self.msb_lookups[p]
            s[f"slices.msb_lookups.{name}"] = look
            s[f"slices.msb_misses.{name}"] = self.msb_misses[p]
            s[f"slices.lsb_lookups.{name}"] = self.lsb_lookups[p]
            s[f"slices.lsb_misses.{name}"] = self.lsb_misses[p]
            s[f"slices.msb_hit_rate.{name}"] = (1 - self.msb_misses[p] / look if look
                                                else float("nan"))
            ll = self.lsb_lookups[p]
            s[f"slices.lsb_hit_rate.{name}"] = 1 - self.lsb_misses[p] / ll if ll else float("nan")
            s[f"slices.miss_rate_hb.{name}"] = (
                (self.msb_misses[p] * m + self.lsb_misses[p] * l) / (look * (m + l))
                if look else float("nan"))
        s["slices.msb_bytes"] = m
        s["slices.lsb_bytes"] = l
        uses = sum(self.high_uses) + sum(self.low_uses)
        low = sum(self.low_uses)
        dec = self.high_uses[1] + self.low_uses[1]
        bh, bl = self.params.b_high, self.params.b_low
        s["precision.low_uses"] = low
        s["precision.low_fraction"] = low / uses if uses else 0.0
        s["precision.high_fraction.decode"] = self.high_uses[1] / dec if dec else float("nan")
        s["precision.bits_mean"] = ((bh * (uses - low) + bl * low) / uses if uses
                                    else float("nan"))
        s["precision.error_mass"] = self.error_mass
        return s
