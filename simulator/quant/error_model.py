"""Reconstruction error of an expert's weights at each precision it can run at: the AMAT half
of the accuracy proxy (metrics ``accuracy.*``).

No model weights are loaded here, so the error is measured on synthetic weights of the real
expert's matrix shapes (``amat.expert_shapes``): i.i.d. Gaussian, or Student-t with 4 degrees
of freedom for heavy-tailed weights (the two distributions ``moesim amat`` tabulates). The
relative Frobenius error of group-wise quantization does not depend on the weights' scale and,
for i.i.d. weights, hardly on the number of rows, so ``rows`` rows of each matrix (default
256) give the same figure as the full matrix at a fraction of the cost; the errors of the
expert's matrices are combined as sqrt(sum ||dW||^2 / sum ||W||^2).

Precisions (keys of :func:`expert_errors`):
    high         asymmetric b_high quantization (the full model of a sliced expert)
    amat_low     AMAT truncation of it to b_low (what the MSB slice alone runs)
    low          independent asymmetric b_low quantization (the low-bit baseline)
    rtn_low, naive_asym_low, naive_sym_low   the other truncations (for comparison)
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import amat


def _sample(shape, rows: int, weights: str, rng) -> np.ndarray:
    r = min(int(shape[0]), rows)
    if weights == "gaussian":
        return rng.standard_normal((r, int(shape[1])))
    if weights == "student_t":
        return rng.standard_t(4.0, (r, int(shape[1])))
    raise ValueError(f"weights must be 'gaussian' or 'student_t', got {weights!r}")


@lru_cache(maxsize=64)
def _errors(shapes: tuple, b_high: int, b_low: int, group: int, weights: str, seed: int,
            rows: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    keys = ("high", "amat_low", "low", "rtn_low", "naive_asym_low", "naive_sym_low")
    num = dict.fromkeys(keys, 0.0)
    den = 0.0
    for shape in shapes:
        W = _sample(shape, rows, weights, rng)
        hi = amat.quantize_asym(W, b_high, group)
        sym = amat.quantize_sym(W, b_high, group)
        rec = {"high": hi.dequant(), "amat_low": amat.amat_truncate(hi, b_low).dequant(),
               "low": amat.quantize_asym(W, b_low, group).dequant(),
               "rtn_low": amat.rtn_truncate(hi, b_low).dequant(),
               "naive_asym_low": amat.naive_asym_truncate(hi, b_low).dequant(),
               "naive_sym_low": amat.naive_sym_truncate(sym, b_low).dequant()}
        for k in keys:
            d = W - rec[k]
            num[k] += float(np.sum(d * d))
        den += float(np.sum(W * W))
    return {k: float(np.sqrt(num[k] / den)) for k in keys}


def expert_errors(spec, b_high: int, b_low: int, group: int = 32, *, weights: str = "gaussian",
                  seed: int = 0, rows: int = 256) -> dict[str, float]:
    """Relative Frobenius error of one routed expert of ``spec`` (a ModelSpec) per precision
    (module docstring). Bit widths and the group size are checked as in ``amat``."""
    amat.check_bits(b_high, b_low)
    shapes = tuple(tuple(int(x) for x in sh) for _n, sh in amat.expert_shapes(spec))
    for sh in shapes:
        amat.check_group(group, sh[1])
    return dict(_errors(shapes, int(b_high), int(b_low), int(group), weights, int(seed), int(rows)))


@lru_cache(maxsize=64)
def _bits_error(shapes: tuple, bits: int, group: int, weights: str, seed: int, rows: int) -> float:
    rng = np.random.default_rng(seed)
    num = den = 0.0
    for shape in shapes:
        W = _sample(shape, rows, weights, rng)
        d = W - amat.quantize_asym(W, bits, group).dequant()
        num += float(np.sum(d * d))
        den += float(np.sum(W * W))
    return float(np.sqrt(num / den))


def bits_error(spec, bits: int, group: int = 32, *, weights: str = "gaussian", seed: int = 0,
               rows: int = 256) -> float:
    """Relative error of one expert of ``spec`` asymmetrically quantized at ``bits``."""
    amat.check_bits(bits)
    shapes = tuple(tuple(int(x) for x in sh) for _n, sh in amat.expert_shapes(spec))
    for sh in shapes:
        amat.check_group(group, sh[1])
    return _bits_error(shapes, int(bits), int(group), weights, int(seed), int(rows))
