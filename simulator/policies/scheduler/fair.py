"""Fair: read the home (a replicated object's copies in turn, failed devices skipped) and
start a layer's fetches together, sharing every link max-min fairly (engine/flows.py). The
default, and the baseline the CXL-aware scheduler is measured against."""
from __future__ import annotations

from ..base import SCHEDULER, SchedulerPolicy


@SCHEDULER.register("fair")
class Fair(SchedulerPolicy):
    active = False
