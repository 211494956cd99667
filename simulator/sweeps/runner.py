"""Running a sweep's points: the task function, the executors, resume, interruption.

Every point runs :func:`run_point` — the same ``simulator.run()`` a user calls — in a worker
process: a local process pool by default, or the workers of a Dask cluster. Each worker keeps
the traces it has read (keyed by resolved path, size and mtime), so a trace is read once per
worker, not once per point. Workers return a small record; the *driver* writes it as
``DIR/points/<id>.json`` (atomically) the moment it arrives, so a driver killed by SIGKILL
loses only points that were still running.

Failures. A point that raises is recorded with ``status: error`` and ``error: "ExcType:
message"``; the others continue. A worker process that dies (``os._exit``, a signal, the OOM
killer) breaks the process pool: the driver rebuilds it and, if several points were in flight,
runs each of them alone in a fresh pool; a point whose worker dies while it runs alone is
recorded as ``worker crashed`` (so a point that kills its worker every time is found and
recorded, while a point whose worker was killed from outside, e.g. by the OOM killer while a
neighbour hogged memory, gets its real result). With one point in flight the attribution
is certain and the point is recorded as crashed at once; ``--resume --retry-failed`` reruns it. (With Dask the scheduler retries a task whose worker died and
reports ``KilledWorker`` after its allowed failures; that is recorded the same way.)

Resume. ``--resume`` skips every point whose file exists (``ok`` and, unless
``--retry-failed``, ``error`` too) and runs the rest; the table is folded again from all
point files, so it equals an uninterrupted run's (except ``wall_s``). A changed experiment
file is refused, listing the point ids whose config changed, were added or removed.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from ..errors import MoesimError
from ..serialize import atomic_write, pid_alive, to_plain
from .spec import Experiment, TraceCache, point_source

POINTS_DIR = "points"
MANIFEST = "sweep.json"


# ---------------------------------------------------------------------------- the task
_TRACES = TraceCache()
_TRACES_LOCK = threading.Lock()


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def run_point(task: dict[str, Any]) -> dict[str, Any]:
    """Simulate one point in this worker. Never raises for the point's own errors."""
    t0, c0 = time.perf_counter(), time.process_time()
    rec = {"point_id": task["point_id"], "status": "ok", "error": "", "metrics": {},
           "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        from .. import run
        from ..config.load import load_mapping
        loaded = load_mapping(task["raw"], source=task["source"], base_dir=task["base_dir"])
        with _TRACES_LOCK:
            trace = _TRACES.get(task["trace_path"])
        result = run(loaded, trace)
        if task.get("run_dir"):
            from ..results.writer import write_results
            write_results(result, loaded, task["run_dir"],
                          extra={"trace": task["trace_path"], "sweep_point": task["point_id"]})
        rec["metrics"] = to_plain(result.summary)
    except Exception as exc:                  # the point's failure is its result
        rec["status"], rec["error"] = "error", one_line(exc)
    rec["wall_s"] = time.perf_counter() - t0
    rec["cpu_s"] = time.process_time() - c0
    rec["trace_reads"] = _TRACES.reads
    return rec


def _worker_init(driver_pid: int) -> None:
    """Pool worker setup. Ctrl-C reaches the whole process group; only the driver decides
    what to do with it. A driver killed with SIGKILL cannot tell its workers: they watch it
    and exit, instead of lingering as orphans."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(driver_pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:
                pass
    threading.Thread(target=watch, name="moesim-driver-watch", daemon=True).start()


def _error_record(task: dict, error: str) -> dict[str, Any]:
    """The record of a point that produced no result of its own (the executor's failure)."""
    return {"point_id": task["point_id"], "status": "error", "error": error,
            "metrics": {}, "worker": "", "wall_s": float("nan")}


def _crash_record(task: dict, why: str) -> dict[str, Any]:
    return _error_record(task, f"worker crashed: {why}")


# ---------------------------------------------------------------------------- executors
class PoolExecutor:
    """Local worker processes (forkserver: clean workers even though the driver has threads).

    At most ``workers`` points are in flight, so a broken pool names few suspects."""

    name = "pool"

    def __init__(self, workers: int, fn: Callable[[dict], dict] = run_point):
        self.workers = max(1, int(workers))
        self.fn = fn                               # the task function (module level: pickled by name)
        self._pool = None
        self.broken = self.rerun_alone = 0         # pool breaks seen; suspects rerun one by one

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._close(kill=exc[0] is not None)

    @staticmethod
    def context():
        """The forkserver context; workers fork from a server that has already imported the
        simulator. ``warm()`` starts it early, so its imports overlap the driver's validation."""
        import multiprocessing as mp
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["simulator.sweeps.runner", "simulator.engine.simulation",
                                    "simulator.metrics.summary"])
        return ctx

    @classmethod
    def warm(cls) -> None:
        from multiprocessing import forkserver
        cls.context()
        forkserver.ensure_running()

    def _new_pool(self, n: int):
        from concurrent.futures import ProcessPoolExecutor
        self._pool = ProcessPoolExecutor(max_workers=n, mp_context=self.context(),
                                         initializer=_worker_init,
                                         initargs=(os.getpid(),))
        return self._pool

    def _close(self, kill: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:                                   # interrupted: do not wait for running points
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                try:
                    proc.kill()
                except Exception:
                    pass
        pool.shutdown(wait=not kill, cancel_futures=True)

    def run(self, tasks: list[dict], on_result: Callable[[dict], None]) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool
        queue = deque(tasks)
        pool = self._new_pool(min(self.workers, max(1, len(tasks))))
        inflight: dict = {}
        while queue or inflight:
            while queue and len(inflight) < self.workers:
                t = queue[0]
                try:
                    inflight[pool.submit(self.fn, t)] = t
                except BrokenProcessPool:          # a worker died while idle
                    if inflight:
                        break                      # handled below with the in-flight points
                    self._close()
                    pool = self._new_pool(min(self.workers, len(queue)))
                    continue
                queue.popleft()
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            if not any(self._broken(f, BrokenProcessPool) for f in done):
                for f in done:
                    on_result(self._result(f, inflight.pop(f)))
                continue
            # A worker died: every in-flight future fails. Keep the ones that finished.
            wait(list(inflight))
            suspects = []
            for f, t in list(inflight.items()):
                if self._broken(f, BrokenProcessPool):
                    suspects.append(t)
                else:
                    on_result(self._result(f, t))
            inflight.clear()
            self._close()
            self.broken += 1
            if len(suspects) == 1:
                on_result(_crash_record(suspects[0], "the worker process died while running "
                                        "this point (killed by a signal, out of memory or os._exit)"))
            else:
                for t in suspects:                 # one at a time, to find the culprit
                    self.rerun_alone += 1
                    on_result(self._alone(t, BrokenProcessPool))
            pool = self._new_pool(min(self.workers, max(1, len(queue))))

    @staticmethod
    def _broken(f, broken_cls) -> bool:
        return f.exception() is not None and isinstance(f.exception(), broken_cls)

    @staticmethod
    def _result(f, task) -> dict:
        exc = f.exception()
        if exc is None:
            return f.result()
        return _error_record(task, one_line(exc))

    def _alone(self, task: dict, broken_cls) -> dict:
        pool = self._new_pool(1)
        f = pool.submit(self.fn, task)
        try:
            f.exception()
        except BaseException:                      # Ctrl-C: do not wait for the point
            self._close(kill=True)
            raise
        self._close()
        if self._broken(f, broken_cls):
            return _crash_record(task, "the worker process died while running this point "
                                 "alone (killed by a signal, out of memory or os._exit)")
        return self._result(f, task)


def parse_scheduler(spec: str) -> tuple[str, Any]:
    """``tcp://HOST:PORT`` -> ("tcp", address); ``local:N`` -> ("local", N)."""
    if spec.startswith("local:"):
        n = spec.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise MoesimError(f"--scheduler {spec}: expected local:N with N >= 1 workers")
        return "local", int(n)
    if spec.startswith("tcp://"):
        hostport = spec[len("tcp://"):]
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise MoesimError(f"--scheduler {spec}: expected tcp://HOST:PORT")
        return "tcp", (host.strip("[]"), int(port))
    raise MoesimError(f"--scheduler {spec}: expected tcp://HOST:PORT or local:N")


def probe_scheduler(spec: str, timeout: float = 5.0) -> None:
    """Fail fast (before validation) when a tcp scheduler address does not answer."""
    kind, addr = parse_scheduler(spec)
    if kind != "tcp":
        return
    try:
        socket.create_connection(addr, timeout=timeout).close()
    except OSError as exc:
        raise MoesimError(f"--scheduler {spec}: no Dask scheduler answers at this address "
                          f"({exc.strerror or exc or 'timed out'})") from None


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise MoesimError("--scheduler needs dask.distributed: pip install 'moesim[dask]'") from None
    return distributed


class DaskExecutor:
    """Points as tasks on a Dask cluster: an existing one (tcp://) or a LocalCluster (local:N).

    Workers import moesim and read traces from the paths in the points, so they need moesim
    installed and the traces (and, with save_runs, the output folder) on a shared file system."""

    name = "dask"

    def __init__(self, spec: str, timeout: float = 5.0):
        self.spec, self.timeout = spec, timeout
        self.kind, self.addr = parse_scheduler(spec)
        self.client = self.cluster = None

    def __enter__(self):
        distributed = _import_distributed()
        import logging
        try:
            if self.kind == "local":
                self.cluster = distributed.LocalCluster(
                    n_workers=self.addr, threads_per_worker=1, processes=True,
                    dashboard_address=None, silence_logs=logging.ERROR)
                self.client = distributed.Client(self.cluster, timeout=self.timeout)
            else:
                self.client = distributed.Client(self.spec, timeout=self.timeout)
        except (OSError, TimeoutError) as exc:
            self.__exit__(None, None, None)
            raise MoesimError(f"--scheduler {self.spec}: cannot connect ({one_line(exc)})") from None
        return self

    def __exit__(self, *exc) -> None:
        for obj in (self.client, self.cluster):
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass
        self.client = self.cluster = None

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {})) if self.client else 0

    def run(self, tasks: list[dict], on_result: Callable[[dict], None]) -> None:
        distributed = _import_distributed()
        from distributed.scheduler import KilledWorker
        if not self.workers:
            import sys
            print(f"moesim sweep: the Dask scheduler {self.spec} has no workers yet; the points "
                  "wait for them", file=sys.stderr)
        futs = {}
        for t in tasks:
            f = self.client.submit(run_point, t, pure=False,
                                   key=f"moesim-point-{t['point_id']:05d}-{os.getpid()}-{time.time_ns()}")
            futs[f] = t
        try:
            for f in distributed.as_completed(list(futs)):
                t = futs.pop(f)
                try:
                    rec = f.result()
                except KilledWorker as exc:
                    rec = _crash_record(t, f"dask reports {one_line(exc)}")
                except Exception as exc:
                    rec = _error_record(t, one_line(exc))
                on_result(rec)
        finally:
            if futs:
                self.client.cancel(list(futs))


# ---------------------------------------------------------------------------- results folder
def point_file(out: Path, point_id: int) -> Path:
    return out / POINTS_DIR / f"{point_id:05d}.json"


def read_point(out: Path, point_id: int) -> dict | None:
    try:
        return json.loads(point_file(out, point_id).read_text())
    except (OSError, ValueError):
        return None


def write_point(out: Path, rec: dict) -> None:
    body = json.dumps(to_plain(rec), indent=1, allow_nan=False) + "\n"
    atomic_write(point_file(out, rec["point_id"]), lambda p: p.write_text(body))


def manifest_of(exp: Experiment) -> dict[str, Any]:
    from .. import __version__
    return {"experiment": exp.name, "source": str(exp.path.resolve()), "sha256": exp.sha256(),
            "moesim_version": __version__, "columns": exp.columns, "metrics": exp.metrics,
            "points": [p.manifest_entry() for p in exp.points]}


def read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MoesimError(f"{out / MANIFEST}: not a readable sweep manifest ({exc})") from None


def check_folder(out: Path, exp: Experiment, resume: bool) -> dict | None:
    """Before validation: the output folder is usable. Returns the old manifest on --resume."""
    from ..outputs import check_output_dir
    check_output_dir(out, "-o")
    man = read_manifest(out) if out.is_dir() else None
    if resume:
        if man is None:
            raise MoesimError(f"--resume {out}: not a sweep folder (no {MANIFEST}); "
                              "run without --resume to start one")
        if man.get("experiment") != exp.name:
            raise MoesimError(f"--resume {out}: the folder holds sweep '{man.get('experiment')}' "
                              f"(from {man.get('source')}), not '{exp.name}' ({exp.source})")
        return man
    if man is not None:
        n = len(list((out / POINTS_DIR).glob("*.json"))) if (out / POINTS_DIR).is_dir() else 0
        raise MoesimError(f"-o {out}: already holds sweep '{man.get('experiment')}' "
                          f"({n} finished points); continue it with --resume, or choose another -o")
    if out.is_dir() and any(out.iterdir()):
        raise MoesimError(f"-o {out}: exists and is not empty (and not a sweep folder); "
                          "choose an empty or new folder")
    return None


def _ranges(ids: list[int], limit: int = 12) -> str:
    parts, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    more = f", ... ({len(parts) - limit} more)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def diff_points(old: dict, exp: Experiment) -> str:
    """'' when the points are the same, else which point ids changed / were added / removed."""
    before = {e["point_id"]: (e["point_key"], e["config_hash"]) for e in old.get("points", [])}
    now = {p.point_id: (p.key, p.config_hash) for p in exp.points}
    changed = sorted(i for i in before.keys() & now.keys() if before[i] != now[i])
    added = sorted(now.keys() - before.keys())
    removed = sorted(before.keys() - now.keys())
    parts = [f"{what} {_ranges(ids)}" for what, ids in
             (("changed", changed), ("added", added), ("removed", removed)) if ids]
    return "; ".join(parts)


LOCK = ".moesim-sweep.lock"


def take_lock(out: Path) -> Path:
    """One driver per folder: DIR/.moesim-sweep.lock holds the driver's pid. A lock whose
    process is gone (a SIGKILLed driver) is taken over."""
    lock = out / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid_alive(pid):
                raise MoesimError(f"-o {out}: another moesim sweep (pid {pid}) is running on "
                                  f"this folder (remove {lock} if it is not)") from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        return lock
    raise MoesimError(f"-o {out}: cannot take {lock}")


# ---------------------------------------------------------------------------- the driver
class Outcome:
    def __init__(self):
        self.ok = self.failed = self.kept = 0
        self.interrupted = False
        self.wall = 0.0
        self.table: Path | None = None


def run_sweep(exp: Experiment, out: Path, *, workers: int, scheduler: str | None = None,
              resume: bool = False, retry_failed: bool = False, quiet: bool = False) -> Outcome:
    """Validate, prepare the folder, run what is missing, fold the table. Raises MoesimError
    for bad input before anything runs."""
    from ..progress import bar
    from .spec import validate
    t0 = time.perf_counter()
    out = Path(out)
    old = check_folder(out, exp, resume)
    if scheduler:
        probe_scheduler(scheduler)
    else:
        PoolExecutor.warm()
    with bar(len(exp.points), desc="validate", unit="pt", quiet=quiet) as vbar:
        validate(exp, progress=vbar)
    if old is not None:
        diff = diff_points(old, exp)
        if diff:
            raise MoesimError(f"--resume {out}: {exp.source} changed since the folder was "
                              f"started: points {diff}; use a new -o (or restore the file)")
    (out / POINTS_DIR).mkdir(parents=True, exist_ok=True)
    lock = take_lock(out)
    try:
        return _run_locked(exp, out, old, workers=workers, scheduler=scheduler,
                           retry_failed=retry_failed, quiet=quiet, t0=t0)
    finally:
        lock.unlink(missing_ok=True)


def _run_locked(exp: Experiment, out: Path, old: dict | None, *, workers: int,
                scheduler: str | None, retry_failed: bool, quiet: bool, t0: float) -> Outcome:
    from ..progress import bar
    from .table import fold
    man = manifest_of(exp)
    atomic_write(out / MANIFEST, lambda p: p.write_text(json.dumps(to_plain(man), indent=1) + "\n"))

    res = Outcome()
    todo = []
    by_id = {p.point_id: p for p in exp.points}
    for p in exp.points:
        rec = read_point(out, p.point_id) if old is not None else None
        if rec is not None and rec.get("config_hash") == p.config_hash and (
                rec.get("status") == "ok" or (rec.get("status") == "error" and not retry_failed)):
            res.kept += 1
            continue
        run_dir = str(out / "runs" / f"{p.point_id:05d}") if exp.save_runs else None
        todo.append({"point_id": p.point_id, "raw": p.raw, "source": point_source(exp, p),
                     "base_dir": str(exp.base_dir),
                     "trace_path": p.trace_path, "run_dir": run_dir})

    progress = bar(len(todo), desc=f"sweep {exp.name}", unit="pt", quiet=quiet)

    def on_result(rec: dict) -> None:
        p = by_id[rec["point_id"]]
        rec = {"point_id": p.point_id, "point_key": p.key, "config_hash": p.config_hash,
               "values": p.values, "metrics": rec.get("metrics") or {},
               "status": rec["status"], "error": rec.get("error", ""),
               "wall_s": rec.get("wall_s"), "worker": rec.get("worker", ""),
               "cpu_s": rec.get("cpu_s"), "trace_reads": rec.get("trace_reads")}
        write_point(out, rec)
        if rec["status"] == "ok":
            res.ok += 1
        else:
            res.failed += 1
        progress.update(1)
        progress.set_postfix_str(f"ok {res.ok} failed {res.failed} "
                                 f"left {len(todo) - res.ok - res.failed}")

    prev_term = signal.getsignal(signal.SIGTERM)

    def _term(signum, frame):
        raise KeyboardInterrupt
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _term)
    try:
        if todo:
            executor = (DaskExecutor(scheduler) if scheduler else
                        PoolExecutor(min(workers, len(todo))))
            with executor:
                executor.run(todo, on_result)
    except KeyboardInterrupt:
        res.interrupted = True
    finally:
        progress.close()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, prev_term)
    res.table = fold(out, man, exp.metrics)
    res.wall = time.perf_counter() - t0
    return res
