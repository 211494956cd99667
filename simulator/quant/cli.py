"""``moesim amat``: AMAT vs naive truncation vs independent low-bit quantization errors
(SliceMoE Table-1 shape) on seeded synthetic weights shaped like a real expert matrix."""
from __future__ import annotations

from ..errors import ConfigError, MoesimError

DEFAULT_MODEL = "deepseek-v2-lite"
DEFAULT_CONFIGS = "4:2,6:3,8:4"
DEFAULT_ROWS = 256
MATRICES = ("gate", "up", "down")


def _configs_arg(text: str) -> list[tuple[int, int]]:
    from .amat import check_bits
    out = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        try:
            hi, lo = (int(x) for x in item.split(":"))
        except ValueError:
            raise MoesimError(f"--configs: '{item}' is not B_HIGH:B_LOW (e.g. 4:2)") from None
        try:
            check_bits(hi, lo)
        except ConfigError as exc:
            raise MoesimError(f"--configs: '{item}': {exc}") from None
        out.append((hi, lo))
    if not out:
        raise MoesimError("--configs: empty list; expected B_HIGH:B_LOW pairs such as 4:2,6:3")
    return list(dict.fromkeys(out))


def synthetic(dist: str, shape: tuple[int, int], seed: int, df: float, std: float = 0.02):
    """Seeded weights: Gaussian N(0, std^2), or Student-t(df) rescaled to std (df > 2)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    if dist == "gaussian":
        return rng.normal(0.0, std, shape)
    return rng.standard_t(df, shape) * std / np.sqrt(df / (df - 2))


def _f(x, digits=4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def cmd_amat(a) -> int:
    from ..models.spec import get_model
    from .amat import (SliceBytes, compare_methods, expert_shapes,
                       expert_slice_bytes, slice_bytes)
    spec = get_model(a.model, key="--model")
    configs = _configs_arg(a.configs)
    shapes = dict(expert_shapes(spec))
    if a.matrix not in shapes:
        raise MoesimError(f"--matrix: '{a.matrix}' is not one of {', '.join(shapes)} "
                          f"for {spec.display_name} ({spec.ffn_kind})")
    full_rows, cols = shapes[a.matrix]
    if a.rows is not None and not 1 <= a.rows <= full_rows:
        raise MoesimError(f"--rows: {a.rows} must be in 1..{full_rows} (the matrix's rows)")
    rows = min(a.rows or DEFAULT_ROWS, full_rows)
    if a.group <= 0:
        raise MoesimError(f"--group: {a.group} must be a positive number of weights")
    bad = [f"{n} {r}x{c}" for n, (r, c) in expert_shapes(spec) if c % a.group]
    if bad:
        raise MoesimError(f"--group: {a.group} does not divide the row length of "
                          f"{', '.join(bad)} ({spec.display_name} expert matrices)")
    if not a.df > 2:
        raise MoesimError(f"--df: {a.df} must be > 2 (finite variance)")
    dists = (("gaussian", "Gaussian"), ("student-t", f"Student-t df={a.df:g}"))
    mats = ", ".join(f"{n} {r}x{c}" for n, (r, c) in expert_shapes(spec))
    print(f"moesim amat: {spec.display_name} expert {a.matrix} matrix {full_rows}x{cols} "
          f"(rows sampled: {rows}), group {a.group}, seed {a.seed}; synthetic weights std 0.02")
    print("  error = relative Frobenius ||W - W_hat|| / ||W||; bytes per expert "
          f"({mats}): fp16 scale + b-bit zero-point per group")
    for bh, bl in configs:
        sb = expert_slice_bytes(spec, bh, bl, a.group)
        sym = sum((slice_bytes(sh, bh, bl, a.group, zero_point=False)
                   for _, sh in expert_shapes(spec)), start=SliceBytes(0, 0, 0, 0))
        per_method = {"independent low-bit": (sb.low, None), "AMAT": (sb.msb, sb.lsb),
                      "naive symmetric": (sym.msb, sym.lsb),
                      "naive asymmetric": (sb.msb, sb.lsb),
                      "round-to-nearest Matryoshka": (sb.msb, None), "high-bit": (None, None)}
        print(f"\n  MAT{bh}{bl} (b_high {bh}, b_low {bl})")
        print(f"  {'':<29}" + "".join(f"{lab:>32}" for _, lab in dists) + f"{'MSB B':>12}{'LSB B':>12}")
        print(f"  {'method':<29}" + f"{f'err @{bl}b':>16}{f'err @{bh}b':>16}" * 2
              + f"{'/expert':>12}{'/expert':>12}")
        results = [compare_methods(synthetic(d, (rows, cols), a.seed, a.df), bh, bl, a.group)
                   for d, _ in dists]
        for i, r0 in enumerate(results[0]):
            line = f"  {r0.method:<29}"
            for res in results:
                r = res[i]
                line += f"{_f(r.low and r.low.rel_fro):>16}{_f(r.high and r.high.rel_fro):>16}"
            msb, lsb = per_method[r0.method]
            line += f"{'-' if msb is None else f'{msb:,}':>12}{'-' if lsb is None else f'{lsb:,}':>12}"
            print(line)
        print(f"  high-bit model {sb.high:,} B = AMAT MSB + LSB {sb.msb + sb.lsb:,} B; "
              f"bf16 expert {spec.params_per_expert * 2:,} B")
    print("\n  AMAT: q_lo = q >> s, z_lo = z >> s, scale_lo = scale * 2^s (s = b_high - b_low); "
          "naive asymmetric keeps z;\n  naive symmetric floors signed codes (no zero-point); "
          "round-to-nearest adds 2^(s-1) before the shift\n  (not a bit slice, so no LSB); "
          "independent low-bit needs its own copy for the high-bit model")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "amat", help="AMAT Matryoshka truncation vs naive and independent low-bit quantization",
        description="Quantize seeded synthetic weights (Gaussian and Student-t) shaped like one "
        "expert matrix of MODEL group-wise and asymmetrically at b_high, truncate to b_low with "
        "AMAT (shift codes and zero-points), the naive variants and round-to-nearest, and "
        "compare relative Frobenius errors with an independently quantized b_low model; also "
        "the MSB/LSB slice bytes per expert (simulator/quant/amat.py states every formula).")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"catalog model (default {DEFAULT_MODEL})")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, metavar="H:L,...",
                   help=f"b_high:b_low pairs (default {DEFAULT_CONFIGS})")
    p.add_argument("--group", type=int, default=32, help="group size along each row (default 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--rows", type=int, default=None, metavar="N",
                   help=f"rows of the matrix to sample (default {DEFAULT_ROWS}; all: its row count)")
    p.add_argument("--matrix", default="gate", help="gate, up or down (default gate)")
    p.add_argument("--df", type=float, default=3.0, help="Student-t degrees of freedom (default 3)")
    p.set_defaults(func=cmd_amat)
