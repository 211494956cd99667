"""Unit constants and converters, applied once at the YAML boundary.

Inside the simulator everything is SI: seconds, bytes, bytes/second, joules, watts, FLOP/s.
YAML names carry their unit (``read_bw_gbytes_per_s``, ``latency_ns``, ``energy_pj_per_bit``);
the loaders convert with the constants below and nothing else converts again.
"""
from __future__ import annotations

GB = 1e9            # decimal gigabyte (capacities, GB/s) as vendors quote them
GiB = 2 ** 30
MiB = 2 ** 20
NS = 1e-9
US = 1e-6
MS = 1e-3
PJ = 1e-12
TERA = 1e12
BITS_PER_BYTE = 8

# Bytes per parameter for each weight/KV precision the simulator knows. int4 ignores the
# per-group scale overhead unless a model spec adds it explicitly.
PRECISION_BYTES = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}


def gb_to_bytes(x: float) -> float:
    """GB (10^9 bytes) -> whole bytes: a budget of 5 x 0.012582912 GB must hold 5 objects of
    12,582,912 bytes, which the float product 0.06291456 * 1e9 falls just short of."""
    return float(round(float(x) * GB))


def gbytes_per_s(x: float) -> float:
    """GB/s (10^9 bytes per second) -> bytes per second."""
    return float(x) * GB


def gbits_per_s(x: float) -> float:
    """Gb/s (10^9 bits per second) -> bytes per second."""
    return float(x) * GB / BITS_PER_BYTE


def pj_per_bit_to_j_per_byte(x: float) -> float:
    return float(x) * PJ * BITS_PER_BYTE


def precision_bytes(precision: str, *, key: str = "precision") -> float:
    from .errors import ConfigError
    try:
        return PRECISION_BYTES[str(precision).lower()]
    except KeyError:
        raise ConfigError(f"unknown precision '{precision}'; choose from "
                          f"{', '.join(PRECISION_BYTES)}", key=key) from None
