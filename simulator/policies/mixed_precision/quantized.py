"""Every expert stored and run at one quantized precision: SliceMoE's static baselines.

    method: asym  each expert quantized on its own at ``bits`` (asymmetric, groups of
                  ``group`` weights, fp16 scales + b-bit zero-points): the high-bit model
                  (bits = b_high) or the independently quantized low-bit model (bits = b_low)
    method: amat  the AMAT low-bit model: experts quantized at ``b_high`` and truncated to
                  ``bits`` (only the MSB slices of DBSC, never the LSBs)

One object per expert with the bytes of that layout (simulator/quant/amat.py), cached like a
whole expert. Compute reads those bytes (FLOPs as at any precision); the accuracy proxy takes
the relative weight error of the layout (simulator/quant/error_model.py on synthetic weights
of the expert's shape). The two ``method`` values at the same ``bits`` move the same bytes and
differ only in error: AMAT pays a little accuracy for being sliceable.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config.strict import field
from ...errors import ConfigError
from ...traces.schema import DECODE
from ..base import MIXED_PRECISION, MixedPrecisionPolicy


def needs_scores(ctx, policy: str) -> None:
    if ctx.trace.scores is None:
        raise ConfigError(f"{policy} needs the trace's gate weights (a 'scores' field), which "
                          f"{ctx.trace.path or 'this trace'} does not have; import a trace with "
                          "gate weights or synthesize one (moesim trace synth)",
                          source=ctx.source, key="mixed_precision.name")


def check_quant_params(ctx, b_high: int, b_low: int, group: int, weights: str):
    """Slice bytes and weight errors of one expert of the run's model; ConfigErrors name the
    ``mixed_precision.*`` key."""
    from ...quant import amat
    from ...quant.error_model import expert_errors
    try:
        sb = amat.expert_slice_bytes(ctx.model, b_high, b_low, group)
        err = expert_errors(ctx.model, b_high, b_low, group, weights=weights,
                            seed=int(ctx.config.seed))
    except ConfigError as exc:
        raise ConfigError(exc.message, source=ctx.source,
                          key=f"mixed_precision.{exc.key}") from None
    return sb, err


@MIXED_PRECISION.register("quantized")
class Quantized(MixedPrecisionPolicy):
    active = True

    @dataclass(frozen=True, kw_only=True)
    class Params:
        bits: int = field(8, help="bits per weight code of every expert")
        method: str = field("asym", choices=("asym", "amat"),
                            help="asym: quantized at `bits` on its own; amat: quantized at "
                                 "b_high and truncated to `bits` (AMAT)")
        b_high: int = field(8, help="method amat: the bits it is truncated from")
        group: int = field(32, help="weights per quantization group")
        weights: str = field("gaussian", choices=("gaussian", "student_t"),
                             help="synthetic weight distribution for the accuracy proxy")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        from ...quant import amat
        from ...quant.error_model import bits_error
        p = params
        if p.method == "amat":
            sb, err = check_quant_params(ctx, p.b_high, p.bits, p.group, p.weights)
            self.bytes, self.err = float(sb.msb), err["amat_low"]
        else:
            try:
                amat.check_bits(p.bits)
                self.bytes = float(sum(amat.quantized_bytes(sh, p.bits, p.group)
                                       for _n, sh in amat.expert_shapes(ctx.model)))
                self.err = bits_error(ctx.model, p.bits, p.group, weights=p.weights,
                                      seed=int(ctx.config.seed))
            except ConfigError as exc:
                key = "bits" if exc.key == "b_high" else exc.key
                raise ConfigError(exc.message, source=ctx.source,
                                  key=f"mixed_precision.{key}") from None
        self.scores = ctx.trace.scores
        self.uses = 0
        self.error_mass = 0.0
        self._S = 1

    def slice_bytes(self, expert_bytes: float) -> list[float]:
        return [self.bytes]

    def full_bytes(self, expert_bytes: float) -> float:
        return self.bytes

    def select(self, phase, layer, rows, experts, hierarchy, scores=None):
        base = layer * self.ctx.num_experts
        ex = experts.ravel().tolist()
        self.uses += len(ex)
        if phase == DECODE:
            if scores is None and self.scores is not None:
                scores = self.scores[rows, layer]
            # gate-weighted; a trace without scores weighs each of the k uses 1/k
            w = float(scores.sum()) if scores is not None else experts.size / experts.shape[1]
            self.error_mass += w * self.err
        count: dict[int, int] = {}
        for e in ex:
            count[e] = count.get(e, 0) + 1
        keys = list(count) if rows.size == 1 else sorted(count)
        return [base + e for e in keys], [count[e] for e in keys]

    def summary(self):
        return {"precision.low_uses": 0, "precision.low_fraction": 0.0,
                "precision.bits_mean": float(self.params.bits),
                "precision.error_mass": self.error_mass}
