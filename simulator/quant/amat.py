"""Group-wise quantization and AMAT (Matryoshka truncation) bit slicing, as numpy math.

SliceMoE stores each expert as an MSB slice (a usable low-bit model) plus an LSB slice (the
remaining bits; MSB + LSB = the high-bit model). AMAT is the truncation rule that keeps the
two compatible. Notation: a weight matrix W (rows x cols), group size G along each row (G
must divide cols), so group g of row r is W[r, g*G:(g+1)*G]. Bit widths b are integers in
1..16; a sliced pair is (b_high, b_low) with b_low < b_high and s = b_high - b_low.

Asymmetric (min/max) quantization at b bits, per group (``quantize_asym``)::

    Q     = 2^b - 1
    scale = (max - min) / Q
    z     = clip(round(-min / scale), 0, Q)              # integer zero-point
    q     = clip(round(W / scale) + z, 0, Q)             # integer code per weight
    W_hat = (q - z) * scale                              # dequantization

``round`` is numpy's round-half-to-even. A constant group (max == min == c, scale would be 0)
uses the range [min(c, 0), max(c, 0)] instead, i.e. scale = |c| / Q (scale = 1 if c == 0),
which reconstructs c exactly (q = Q, z = 0 for c > 0; q = 0, z = Q for c < 0) and never
divides by zero. Scales are kept in float64 for the math; storage counts them as fp16 (below),
whose rounding (relative 2^-11) is not modelled.

Symmetric quantization at b bits (``quantize_sym``; only the naive-symmetric variant)::

    scale = max|W| / (2^(b-1) - 1)                       # (1 if the group is all zeros)
    q     = clip(round(W / scale), -2^(b-1), 2^(b-1) - 1)    # signed, two's complement
    W_hat = q * scale

Truncation from b_high to b_low (s = b_high - b_low), given the b_high codes (q, z, scale):

* **AMAT** (``amat_truncate``; the paper's rule, pure truncation of code *and* zero-point)::

      q_lo = q >> s,  z_lo = z >> s,  scale_lo = scale * 2^s
      W_hat_lo = (q_lo - z_lo) * scale_lo

  q_lo and z_lo are exactly the top b_low bits of q and z, so the MSB slice is a b_low-bit
  model and q = (q_lo << s) | (q & (2^s - 1)) rebuilds the high-bit code from the slices.
* **naive asymmetric** (``naive_asym_truncate``): shift the code, keep the zero-point::

      q_lo = q >> s,  z_lo = z (unshifted),  scale_lo = scale * 2^s
      W_hat_lo = (q_lo - z) * scale_lo

  every group is offset by about z * (1 - 2^-s) * scale_lo: the zero-point no longer matches.
* **naive symmetric** (``naive_sym_truncate``): quantize symmetrically at b_high (no
  zero-point), then shift the signed code only::

      q_lo = q >> s (arithmetic shift = floor(q / 2^s)),  scale_lo = scale * 2^s
      W_hat_lo = q_lo * scale_lo

  a valid b_low signed code, but floor-biased by ~ -scale_lo / 2 and with the symmetric grid's
  wasted range; its b_high error is the symmetric b_high error.
* **round-to-nearest Matryoshka** (``rtn_truncate``; the public Matryoshka snippet in
  policies.md section 3 adds the next-lower bit before shifting)::

      q_lo = clip((q + 2^(s-1)) >> s, 0, 2^b_low - 1),  z_lo = clip((z + 2^(s-1)) >> s, 0, 2^b_low - 1)
      scale_lo = scale * 2^s,  W_hat_lo = (q_lo - z_lo) * scale_lo

  q_lo is then *not* the top bits of q (q - 2^s q_lo is a signed residual), so it is not a bit
  slice; kept distinct from AMAT on purpose.
* **independent low-bit** (baseline): ``quantize_asym(W, b_low)`` directly.

Error metrics (``errors``): relative Frobenius error ||W - W_hat||_F / ||W||_F (0 if both are 0,
inf if only W is 0) and MSE = mean((W - W_hat)^2).

Storage (``slice_bytes``; n = rows*cols weights, n_g = n / G groups). Per group the metadata is
one fp16 scale (16 bits) and a zero-point of the *same bit width as the codes* (b bits), so the
zero-point is sliced exactly like the codes. With AMAT the MSB slice holds scale_lo (fp16) and
z_lo; the LSB slice holds the low s bits of every code and of every zero-point and *no scale*:
scale_hi = scale_lo / 2^s is derived exactly (a power-of-two division, exact in fp16 above the
subnormal range). Each array (codes, zero-points, scales) of a slice is bit-packed on its own
and padded to a whole byte::

    MSB bytes  = ceil(n*b_low/8) + ceil(n_g*b_low/8) + 2*n_g
    LSB bytes  = ceil(n*s/8)     + ceil(n_g*s/8)
    high bytes = ceil(n*b_high/8) + ceil(n_g*b_high/8) + 2*n_g      (the unsliced b_high model)

MSB + LSB == high whenever n*b and n_g*b are whole bytes (n_g a multiple of 8: every catalog
expert); otherwise the slices carry at most 2 bytes more padding than the unsliced model.
Symmetric codes have no zero-point (drop the n_g terms in b).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

MAX_BITS = 16
SCALE_BITS = 16            # fp16 per-group scale


# ---------------------------------------------------------------------------- validation
def check_bits(b_high: int, b_low: int | None = None) -> None:
    """b_high (and b_low) integers in 1..16, b_low < b_high; ConfigError naming the parameter."""
    for name, b in (("b_high", b_high), ("b_low", b_low)):
        if b is None:
            continue
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= MAX_BITS:
            raise ConfigError(f"{b!r} must be a whole number of bits in 1..{MAX_BITS}", key=name)
    if b_low is not None and b_low >= b_high:
        raise ConfigError(f"{b_low} must be below b_high ({b_high})", key="b_low")


def check_group(group: int, cols: int) -> None:
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group <= 0:
        raise ConfigError(f"{group!r} must be a positive whole number of weights", key="group")
    if cols % group:
        raise ConfigError(f"{group} does not divide the row length {cols}", key="group")


def _weights(W) -> np.ndarray:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.size == 0:
        raise ConfigError(f"expected a non-empty 2-D matrix, got shape {W.shape}", key="weights")
    if not np.isfinite(W).all():
        raise ConfigError(f"{int((~np.isfinite(W)).sum())} non-finite values (NaN or inf)",
                          key="weights")
    return W


def _groups(W: np.ndarray, group: int) -> np.ndarray:
    """(rows, cols) -> (rows, cols/G, G) view."""
    check_group(group, W.shape[1])
    return W.reshape(W.shape[0], W.shape[1] // group, group)


def _expand(a: np.ndarray, group: int) -> np.ndarray:
    """Per-group (rows, n_g) -> per-weight (rows, n_g*G)."""
    return np.repeat(a, group, axis=1)


# ---------------------------------------------------------------------------- quantizers
@dataclass(frozen=True)
class Quantized:
    """Integer codes q (rows x cols), per-group zero-point z and scale (rows x cols/G)."""
    q: np.ndarray
    z: np.ndarray | None        # None: symmetric (signed codes, no zero-point)
    scale: np.ndarray
    bits: int
    group: int

    def dequant(self) -> np.ndarray:
        sc = _expand(self.scale, self.group)
        if self.z is None:
            return self.q * sc
        return (self.q - _expand(self.z, self.group)) * sc


def quantize_asym(W, bits: int, group: int = 32) -> Quantized:
    """Asymmetric min/max group quantization (module docstring)."""
    check_bits(bits)
    W = _weights(W)
    g = _groups(W, group)
    Q = 2 ** bits - 1
    lo, hi = g.min(axis=2), g.max(axis=2)
    const = hi == lo
    lo = np.where(const, np.minimum(lo, 0.0), lo)
    hi = np.where(const, np.maximum(hi, 0.0), hi)
    scale = (hi - lo) / Q
    scale = np.where(scale > 0, scale, 1.0)           # all-zero group: any scale, q = z = 0
    z = np.clip(np.round(-lo / scale), 0, Q).astype(np.int64)
    q = np.clip(np.round(g / scale[..., None]) + z[..., None], 0, Q).astype(np.int64)
    return Quantized(q.reshape(W.shape), z, scale, bits, group)


def quantize_sym(W, bits: int, group: int = 32) -> Quantized:
    """Symmetric absmax group quantization, signed codes (module docstring); bits >= 2."""
    check_bits(bits)
    if bits < 2:
        raise ConfigError(f"{bits}: symmetric codes need at least 2 bits", key="b_high")
    W = _weights(W)
    g = _groups(W, group)
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(g).max(axis=2)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    q = np.clip(np.round(g / scale[..., None]), -qmax - 1, qmax).astype(np.int64)
    return Quantized(q.reshape(W.shape), None, scale, bits, group)


# ---------------------------------------------------------------------------- truncations
def _shift(hq: Quantized, b_low: int) -> int:
    check_bits(hq.bits, b_low)
    return hq.bits - b_low


def amat_truncate(hq: Quantized, b_low: int) -> Quantized:
    """AMAT: q_lo = q >> s, z_lo = z >> s, scale_lo = scale * 2^s."""
    s = _shift(hq, b_low)
    return Quantized(hq.q >> s, hq.z >> s, hq.scale * 2.0 ** s, b_low, hq.group)


def naive_asym_truncate(hq: Quantized, b_low: int) -> Quantized:
    """Shift the codes, keep the b_high zero-point: q_lo = q >> s, z_lo = z."""
    s = _shift(hq, b_low)
    return Quantized(hq.q >> s, hq.z.copy(), hq.scale * 2.0 ** s, b_low, hq.group)


def naive_sym_truncate(hq: Quantized, b_low: int) -> Quantized:
    """Symmetric codes: q_lo = q >> s (arithmetic, floor), scale_lo = scale * 2^s."""
    s = _shift(hq, b_low)
    if hq.z is not None:
        raise ConfigError("naive symmetric truncation needs symmetric codes", key="weights")
    return Quantized(hq.q >> s, None, hq.scale * 2.0 ** s, b_low, hq.group)


def rtn_truncate(hq: Quantized, b_low: int) -> Quantized:
    """Round-to-nearest Matryoshka: (x + 2^(s-1)) >> s clipped to b_low bits, for q and z."""
    s = _shift(hq, b_low)
    top, half = 2 ** b_low - 1, 1 << (s - 1)
    return Quantized(np.minimum((hq.q + half) >> s, top), np.minimum((hq.z + half) >> s, top),
                     hq.scale * 2.0 ** s, b_low, hq.group)


def split_slices(hq: Quantized, b_low: int) -> tuple[Quantized, np.ndarray, np.ndarray]:
    """AMAT MSB slice (a b_low model) and the LSB bits of codes and zero-points."""
    s = _shift(hq, b_low)
    mask = (1 << s) - 1
    return amat_truncate(hq, b_low), hq.q & mask, hq.z & mask


def join_slices(msb: Quantized, lsb_q: np.ndarray, lsb_z: np.ndarray, b_high: int) -> Quantized:
    """Rebuild the b_high model from the slices: q = (q_lo << s) | lsb, scale = scale_lo / 2^s."""
    s = b_high - msb.bits
    return Quantized((msb.q << s) | lsb_q, (msb.z << s) | lsb_z, msb.scale / 2.0 ** s,
                     b_high, msb.group)


# ---------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class QuantError:
    rel_fro: float      # ||W - W_hat||_F / ||W||_F
    mse: float          # mean((W - W_hat)^2)


def errors(W, W_hat) -> QuantError:
    W = np.asarray(W, dtype=np.float64)
    d = W - np.asarray(W_hat, dtype=np.float64)
    num, den = float(np.linalg.norm(d)), float(np.linalg.norm(W))
    rel = num / den if den > 0 else (0.0 if num == 0 else math.inf)
    return QuantError(rel, float(np.mean(d * d)))


@dataclass(frozen=True)
class MethodResult:
    method: str
    low: QuantError | None      # error of the b_low reconstruction
    high: QuantError | None     # error of the b_high reconstruction


METHODS = ("independent low-bit", "AMAT", "naive symmetric", "naive asymmetric",
           "round-to-nearest Matryoshka", "high-bit")


def compare_methods(W, b_high: int, b_low: int, group: int = 32) -> list[MethodResult]:
    """One MethodResult per entry of METHODS (same order)."""
    check_bits(b_high, b_low)
    W = _weights(W)
    hi = quantize_asym(W, b_high, group)
    hi_err = errors(W, hi.dequant())
    sym = quantize_sym(W, b_high, group)
    sym_err = errors(W, sym.dequant())
    lo = lambda qz: errors(W, qz.dequant())          # noqa: E731
    return [
        MethodResult("independent low-bit", lo(quantize_asym(W, b_low, group)), None),
        MethodResult("AMAT", lo(amat_truncate(hi, b_low)), hi_err),
        MethodResult("naive symmetric", lo(naive_sym_truncate(sym, b_low)), sym_err),
        MethodResult("naive asymmetric", lo(naive_asym_truncate(hi, b_low)), hi_err),
        MethodResult("round-to-nearest Matryoshka", lo(rtn_truncate(hi, b_low)), hi_err),
        MethodResult("high-bit", None, hi_err),
    ]


# ---------------------------------------------------------------------------- storage
@dataclass(frozen=True)
class SliceBytes:
    msb: int            # b_low codes + fp16 scales + b_low zero-points
    lsb: int            # s low bits of codes and zero-points, no scale
    high: int           # the unsliced b_high model (codes + fp16 scales + b_high zero-points)
    low: int            # an independently quantized b_low model (same layout as MSB)

    def __add__(self, other: "SliceBytes") -> "SliceBytes":
        return SliceBytes(self.msb + other.msb, self.lsb + other.lsb, self.high + other.high,
                          self.low + other.low)


def _packed(count: int, bits: int) -> int:
    return -(-count * bits // 8)


def quantized_bytes(shape: tuple[int, int], bits: int, group: int = 32, *,
                    zero_point: bool = True) -> int:
    """Bytes of one b-bit group-quantized matrix: codes + fp16 scales (+ b-bit zero-points)."""
    check_bits(bits)
    rows, cols = (int(x) for x in shape)
    check_group(group, cols)
    n = rows * cols
    ng = n // group
    return _packed(n, bits) + (_packed(ng, bits) if zero_point else 0) + ng * SCALE_BITS // 8


def slice_bytes(shape: tuple[int, int], b_high: int, b_low: int, group: int = 32, *,
                zero_point: bool = True) -> SliceBytes:
    """MSB / LSB / high / independent-low bytes of one matrix (module docstring)."""
    check_bits(b_high, b_low)
    rows, cols = (int(x) for x in shape)
    check_group(group, cols)
    n = rows * cols
    ng = n // group
    s = b_high - b_low
    msb = quantized_bytes(shape, b_low, group, zero_point=zero_point)
    lsb = _packed(n, s) + (_packed(ng, s) if zero_point else 0)
    return SliceBytes(msb, lsb, quantized_bytes(shape, b_high, group, zero_point=zero_point), msb)


def expert_shapes(spec) -> list[tuple[str, tuple[int, int]]]:
    """(name, (rows, cols)) of one routed expert's matrices, HF layout (out x in): swiglu has
    gate and up (intermediate x hidden) and down (hidden x intermediate); relu up and down."""
    H, I = spec.hidden, spec.expert_intermediate
    mats = [("gate", (I, H)), ("up", (I, H)), ("down", (H, I))]
    return mats if spec.ffn_kind == "swiglu" else mats[1:]


def expert_slice_bytes(model_spec_or_shapes, b_high: int, b_low: int, group: int = 32) -> SliceBytes:
    """Per-expert MSB / LSB bytes: a ModelSpec, a catalog model name, or a list of
    (rows, cols) shapes (groups along each row; G must divide every row length)."""
    m = model_spec_or_shapes
    if isinstance(m, str):
        from ..models.spec import get_model
        m = get_model(m, key="model")
    shapes = [sh for _, sh in expert_shapes(m)] if hasattr(m, "expert_intermediate") else list(m)
    total = SliceBytes(0, 0, 0, 0)
    for sh in shapes:
        total = total + slice_bytes(sh, b_high, b_low, group)
    return total
