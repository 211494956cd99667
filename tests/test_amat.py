"""AMAT quantization (SliceMoE): group-wise asymmetric quantization, Matryoshka truncation and
its naive / round-to-nearest variants, slice sizes, and ``moesim amat``."""
from __future__ import annotations

import numpy as np
import pytest

from simulator.errors import ConfigError
from simulator.models.spec import get_model
from simulator.quant.amat import (
    amat_truncate, compare_methods, errors, expert_shapes, expert_slice_bytes, join_slices,
    naive_asym_truncate, naive_sym_truncate, quantize_asym, quantize_sym, rtn_truncate,
    slice_bytes, split_slices)
from simulator.quant.cli import synthetic
from conftest import assert_one_line_error, run_cli

# Row 0 worked by hand at (b_high, b_low) = (4, 2), one group of 4:
#   min -1, max 2.75, Q = 15: scale = 3.75 / 15 = 0.25, z = round(1 / 0.25) = 4
#   W / scale = [-4, -1, 2.4, 11] -> round [-4, -1, 2, 11] + z -> q = [0, 3, 6, 15]
#   high-bit dequant (q - 4) * 0.25 = [-1, -0.25, 0.5, 2.75]
#   AMAT s = 2: q_lo = q >> 2 = [0, 0, 1, 3], z_lo = 4 >> 2 = 1, scale_lo = 0.25 * 4 = 1
#               dequant (q_lo - 1) * 1 = [-1, -1, 0, 2]
#   naive asymmetric (z kept = 4): (q_lo - 4) * 1 = [-4, -4, -3, -1]
#   round-to-nearest: (q + 2) >> 2 = [0, 1, 2, 4 -> clip 3]; z_lo = (4 + 2) >> 2 = 1
#               dequant [-1, 0, 1, 2]
#   independent 2-bit: Q = 3, scale = 3.75 / 3 = 1.25, z = round(0.8) = 1,
#               W / 1.25 = [-0.8, -0.2, 0.48, 2.2] -> [-1, 0, 0, 2] + 1 = q [0, 1, 1, 3]
#               dequant (q - 1) * 1.25 = [-1.25, 0, 0, 2.5]
#   symmetric 4-bit: scale = 2.75 / 7, q = round(W * 7 / 2.75) = round([-2.55, -0.64, 1.53, 7])
#               = [-3, -1, 2, 7]; naive sym q >> 2 = [-1, -1, 0, 1], scale_lo = 4 * 2.75 / 7
# Row 1 is constant 0.5 (scale = 0.5 / 15, z = 0, q = 15: exact); row 2 is all zeros.
W = np.array([[-1.0, -0.25, 0.6, 2.75],
              [0.5, 0.5, 0.5, 0.5],
              [0.0, 0.0, 0.0, 0.0]])


def test_hand_worked_4_2():
    hi = quantize_asym(W, 4, group=4)
    assert hi.q[0].tolist() == [0, 3, 6, 15] and hi.z[0, 0] == 4 and hi.scale[0, 0] == 0.25
    np.testing.assert_allclose(hi.dequant()[0], [-1, -0.25, 0.5, 2.75])
    # constant groups: no NaN, reconstructed exactly
    assert hi.q[1].tolist() == [15] * 4 and hi.z[1, 0] == 0
    assert hi.q[2].tolist() == [0] * 4 and hi.z[2, 0] == 0
    np.testing.assert_allclose(hi.dequant()[1:], W[1:])

    lo = amat_truncate(hi, 2)
    assert lo.q[0].tolist() == [0, 0, 1, 3] and lo.z[0, 0] == 1 and lo.scale[0, 0] == 1.0
    np.testing.assert_allclose(lo.dequant()[0], [-1, -1, 0, 2])
    np.testing.assert_allclose(naive_asym_truncate(hi, 2).dequant()[0], [-4, -4, -3, -1])
    rtn = rtn_truncate(hi, 2)
    assert rtn.q[0].tolist() == [0, 1, 2, 3] and rtn.z[0, 0] == 1
    np.testing.assert_allclose(rtn.dequant()[0], [-1, 0, 1, 2])

    ind = quantize_asym(W, 2, group=4)
    assert ind.q[0].tolist() == [0, 1, 1, 3] and ind.z[0, 0] == 1 and ind.scale[0, 0] == 1.25
    np.testing.assert_allclose(ind.dequant()[0], [-1.25, 0, 0, 2.5])

    sym = quantize_sym(W, 4, group=4)
    assert sym.q[0].tolist() == [-3, -1, 2, 7]
    ns = naive_sym_truncate(sym, 2)
    assert ns.q[0].tolist() == [-1, -1, 0, 1]
    np.testing.assert_allclose(ns.dequant()[0], np.array([-1, -1, 0, 1]) * 4 * 2.75 / 7)

    # errors of row 0: high-bit error only at 0.6 -> 0.5
    e = errors(W[:1], hi.dequant()[:1])
    norm = np.sqrt(1 + 0.0625 + 0.36 + 2.75 ** 2)
    assert e.rel_fro == pytest.approx(0.1 / norm) and e.mse == pytest.approx(0.01 / 4)
    assert all(np.isfinite(q.dequant()).all() for q in (hi, lo, rtn, ind, sym, ns))


def test_slices_rebuild_the_high_bit_codes():
    X = synthetic("student-t", (16, 128), seed=3, df=3.0)
    for bh, bl in ((4, 2), (6, 3), (8, 4), (16, 1)):
        hi = quantize_asym(X, bh, group=32)
        msb, lq, lz = split_slices(hi, bl)
        back = join_slices(msb, lq, lz, bh)
        assert np.array_equal(back.q, hi.q) and np.array_equal(back.z, hi.z)
        np.testing.assert_array_equal(back.scale, hi.scale)
        assert lq.max() < 2 ** (bh - bl) and msb.q.max() < 2 ** bl


@pytest.mark.parametrize("bh,bl,G", [(4, 2, 32), (6, 3, 32), (8, 4, 32), (8, 4, 64), (8, 2, 128),
                                     (16, 8, 16), (5, 3, 32), (3, 1, 8)])
def test_msb_plus_lsb_is_the_high_bit_size(bh, bl, G):
    for shape in ((1408, 2048), (2048, 1408), (64, 256)):
        sb = slice_bytes(shape, bh, bl, G)
        assert sb.msb + sb.lsb == sb.high
        n, ng = shape[0] * shape[1], shape[0] * shape[1] // G
        assert sb.high == n * bh // 8 + ng * bh // 8 + 2 * ng
        sym = slice_bytes(shape, bh, bl, G, zero_point=False)
        assert sym.msb + sym.lsb == sym.high == n * bh // 8 + 2 * ng
    # not byte-aligned: the separately padded slices cost at most 2 bytes more
    odd = slice_bytes((1, 24), 5, 2, 8)
    assert odd.high <= odd.msb + odd.lsb <= odd.high + 2


def test_expert_slice_bytes_from_the_catalog():
    spec = get_model("deepseek-v2-lite")
    assert [s for _, s in expert_shapes(spec)] == [(1408, 2048), (1408, 2048), (2048, 1408)]
    sb = expert_slice_bytes(spec, 4, 2, 32)
    # n = 3 * 1408 * 2048 = 8,650,752 weights, 270,336 groups
    assert sb.msb == 8_650_752 * 2 // 8 + 270_336 * 2 // 8 + 2 * 270_336 == 2_770_944
    assert sb.lsb == 8_650_752 * 2 // 8 + 270_336 * 2 // 8 == 2_230_272
    assert sb.msb + sb.lsb == sb.high
    assert expert_slice_bytes("Qwen/Qwen1.5-MoE-A2.7B", 4, 2, 32) == sb     # same shapes
    assert expert_slice_bytes([(1408, 2048)] * 2 + [(2048, 1408)], 4, 2, 32) == sb


@pytest.mark.parametrize("dist", ["gaussian", "student-t"])
def test_amat_vs_naive_vs_independent(dist):
    X = synthetic(dist, (64, 2048), seed=0, df=3.0)
    for bh, bl in ((4, 2), (6, 3), (8, 4)):
        r = {m.method: m for m in compare_methods(X, bh, bl, 32)}
        amat, ind = r["AMAT"].low.rel_fro, r["independent low-bit"].low.rel_fro
        # measured (256 rows): naive asymmetric 14.6-316x AMAT; AMAT 1.15-1.36x independent;
        # naive symmetric 1.4-1.9x AMAT (a valid low-bit code, floor-biased)
        assert r["naive asymmetric"].low.rel_fro >= 10 * amat
        assert ind <= amat <= 1.5 * ind
        assert r["naive symmetric"].low.rel_fro > 1.2 * amat
        assert r["round-to-nearest Matryoshka"].low.rel_fro != amat
        assert r["high-bit"].high.rel_fro == r["AMAT"].high.rel_fro < amat
    hi = quantize_asym(X, 8, 32)
    assert not np.array_equal(rtn_truncate(hi, 4).q, amat_truncate(hi, 4).q)


def test_bad_inputs_name_the_parameter():
    X = np.zeros((2, 64))
    cases = [(lambda: quantize_asym(X, 0), "b_high"), (lambda: quantize_asym(X, 17), "b_high"),
             (lambda: compare_methods(X, 4, 4), "b_low"), (lambda: compare_methods(X, 4, 6), "b_low"),
             (lambda: slice_bytes((2, 64), 8, 0), "b_low"), (lambda: quantize_asym(X, 4, 48), "group"),
             (lambda: quantize_asym(X, 4, 0), "group"), (lambda: slice_bytes((2, 64), 4, 2, 24), "group"),
             (lambda: quantize_asym(np.full((2, 64), np.nan), 4), "weights"),
             (lambda: quantize_asym(np.ones(64), 4), "weights")]
    for fn, key in cases:
        with pytest.raises(ConfigError) as e:
            fn()
        assert e.value.key == key and str(e.value).startswith(f"{key}: ")


def test_cli_prints_the_table_deterministically(capsys):
    argv = ["amat", "--rows", "32", "--configs", "4:2,8:4"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    for needle in ("MAT42", "MAT84", "independent low-bit", "AMAT", "naive symmetric",
                   "naive asymmetric", "round-to-nearest Matryoshka", "high-bit", "Gaussian",
                   "Student-t df=3", "2,770,944", "2,230,272", "5,001,216"):
        assert needle in out, needle
    assert "MAT63" not in out
    assert run_cli(capsys, *argv)[1] == out
    assert run_cli(capsys, *argv, "--seed", "1")[1] != out
    code, out2, _ = run_cli(capsys, "amat", "--rows", "8", "--configs", "6:3",
                            "--model", "qwen1.5-moe-a2.7b", "--matrix", "down", "--group", "64")
    assert code == 0 and "Qwen1.5-MoE-A2.7B expert down matrix 2048x1408" in out2


@pytest.mark.parametrize("argv,needles", [
    (["--configs", "4:4"], ["--configs", "4:4", "b_low"]),
    (["--configs", "2:3"], ["--configs", "b_low"]),
    (["--configs", "17:4"], ["--configs", "b_high"]),
    (["--configs", "4-2"], ["--configs", "B_HIGH:B_LOW"]),
    (["--group", "48"], ["--group", "48", "gate 1408x2048"]),
    (["--group", "0"], ["--group"]),
    (["--rows", "0"], ["--rows"]),
    (["--model", "nope"], ["--model", "nope"]),
    (["--matrix", "qkv"], ["--matrix", "qkv"]),
    (["--df", "2"], ["--df"]),
])
def test_cli_bad_inputs_are_one_line(capsys, argv, needles):
    assert_one_line_error(capsys, ["amat", *argv], *needles)
