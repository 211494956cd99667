"""Device figures shared by the multi-device placements (moe_cxl, hash_shard).

Private bandwidth of a device d of a tier:

    B_d = min(read bandwidth of d, forward bandwidth of every link on d's path that is not on
              the path of every device of the tier)

A link every device of the tier crosses (the host's PCIe link behind all CXL expanders) caps
their *sum*, not the choice between them: it is the same for every candidate, so it is left
out, and what remains (device channel, its own port) is what tells the devices apart. For a
one-device tier this is the device's read bandwidth. Bytes per second.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...hardware.system import Device


def private_bandwidth(devs: list["Device"]) -> list[float]:
    """B_d of each device of ``devs`` (one tier), in B/s."""
    common = set.intersection(*({l.name for l in d.path} for d in devs)) if devs else set()
    out = []
    for d in devs:
        bw = d.spec.read_bw
        for l in d.path:
            if l.name not in common:
                bw = min(bw, l.spec.bw)
        out.append(float(bw))
    return out


def device_key(devs: list["Device"]) -> list[str]:
    """A name for each device that does not depend on where it is listed in its tier: its
    profile, the links of its path, its read bandwidth and capacity (plus an occurrence
    number when two devices agree on all of these: they are interchangeable)."""
    seen: dict[str, int] = {}
    keys = []
    for d in devs:
        base = (f"{d.profile.name}|{'/'.join(l.name for l in d.path)}|{d.spec.read_bw:.6g}"
                f"|{d.spec.capacity_bytes:.6g}")
        n = seen.get(base, 0)
        seen[base] = n + 1
        keys.append(f"{base}#{n}")
    return keys
