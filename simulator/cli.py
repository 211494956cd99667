"""``moesim`` command line. The only place that turns errors into messages and exit codes.

    moesim run [CONFIG] [-o DIR] [--set KEY=VALUE ...]     simulate (default: bundled config)
    moesim trace stats|validate|import|synth|fit|compare|holdout ...   routing traces
    moesim profiles list|show                              device profiles
    moesim models list|show                                MoE model specs
    moesim policies [AXIS]                                 registered policies and parameters
    moesim metrics                                         every reported metric, unit, formula
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from .errors import MoesimError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 2      # an unexpected exception (see main); same code, its own message
# moesim sweep / plot / mrc live in their own packages (simulator/<group>/cli.py).
COMMAND_GROUPS = ("sweeps", "plots", "mrc", "quant")


# ---------------------------------------------------------------------------- formatting
def _fmt(v, unit: str = "", scale: float = 1.0, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    v = v * scale
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15 and not unit):
        return f"{int(v):,}"
    return f"{v:.{digits}g}{unit}"


def _joules(v) -> str:
    """Energy in J: whole joules with thousands separators from 1,000 J, else 4 digits."""
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:,.0f} J" if abs(v) >= 1000 else f"{v:.4g} J"


def _dollars(v) -> str:
    """One cost format everywhere: whole dollars with separators ($5,802), cents below $100."""
    if v is None or not math.isfinite(v):
        return "-"
    return f"${v:,.0f}" if abs(v) >= 100 else f"${v:,.2f}"


def energy_parts(s: dict) -> list[tuple[str, float]]:
    """The parts energy_j.total is the sum of (metrics/definitions.py), grouped as printed:
    static power of every device, memory dynamic (reads/writes), links, compute (FLOPs)."""
    def total(prefix):
        return sum(v for k, v in s.items() if k.startswith(prefix) and v is not None)
    return [("static power", total("energy_j.static.")),
            ("memory reads/writes", total("energy_j.dynamic.")),
            ("links", total("energy_j.link.")),
            ("compute FLOPs", s["energy_j.compute"])]


def energy_parts_text(s: dict) -> str:
    tot = s["energy_j.total"]
    out = []
    for name, v in energy_parts(s):
        shown = name == "static power" and tot and math.isfinite(tot)
        out.append(f"{name} {_joules(v)}" + (f" ({100 * v / tot:.0f} %)" if shown else ""))
    return "= " + " + ".join(out)


def format_summary(s: dict, *, title: str, notes: list[str] = ()) -> str:
    lines = [title]
    lines.append(f"  requests {s['requests']:,}: {s['prefill_tokens']:,} prefill + "
                 f"{s['decode_tokens']:,} decode tokens in {_fmt(s['makespan_s'])} s simulated")
    lines.append("")
    lines.append(f"  {'latency':<22}{'mean':>12}{'p50':>12}{'p99':>12}")
    for label, key, scale, unit in (("TTFT (ms)", "ttft_s", 1e3, ""), ("TPOT (ms)", "tpot_s", 1e3, ""),
                                    ("end-to-end (s)", "e2e_s", 1.0, "")):
        lines.append(f"  {label:<22}" + "".join(
            f"{_fmt(s[f'{key}.{q}'], scale=scale):>12}" for q in ("mean", "p50", "p99")))
    lines.append(f"  throughput: {_fmt(s['decode_tokens_per_s'])} decode tokens/s, "
                 f"{_fmt(s['tokens_per_s'])} tokens/s overall")
    lines.append("")
    lines.append(f"  {'experts':<22}{'accesses':>12}{'lookups':>12}{'hits':>12}{'hit rate':>12}")
    for ph in ("prefill", "decode"):
        lines.append(f"  {ph:<22}{_fmt(s[f'expert_accesses.{ph}']):>12}{_fmt(s[f'lookups.{ph}']):>12}"
                     f"{_fmt(s[f'hits.{ph}']):>12}{_fmt(s[f'hit_rate.{ph}'], digits=3):>12}")
    served = sorted({k.split(".", 2)[2] for k in s if k.startswith("lookups_served.")})
    if served:
        parts = []
        for d in served:
            n = s.get(f"lookups_served.prefill.{d}", 0) + s.get(f"lookups_served.decode.{d}", 0)
            parts.append(f"{d} {n:,}")
        lines.append("  lookups served by: " + ", ".join(parts))
    lines.append("")
    links = sorted(k.split(".", 2)[2] for k in s if k.startswith("bytes.link."))
    lines.append(f"  traffic: fetched {_fmt(s['bytes.fetched.prefill'] + s['bytes.fetched.decode'], ' GB', 1e-9)}"
                 + "".join(f"; link {l} {_fmt(s[f'bytes.link.{l}'], ' GB', 1e-9)} "
                           f"(busy {_fmt(s.get(f'utilization.link.{l}'), '%', 100, 3)})" for l in links))
    lines.append(f"  energy: {_joules(s['energy_j.total'])} total {energy_parts_text(s)}")
    lines.append(f"  {'':<8}= prefill {_joules(s['energy_j.prefill'])} + decode "
                 f"{_joules(s['energy_j.decode'])} + idle {_joules(s['energy_j.idle'])}; "
                 f"{_fmt(s['energy_j_per_decode_token'], ' J')} per decode token")
    lines.append(f"  memory: cost {_dollars(s['memory_cost_usd'])}; local "
                 f"{_fmt(s['local.capacity_bytes'], ' GB', 1e-9)} = weights "
                 f"{_fmt(s['local.non_expert_bytes'], ' GB', 1e-9)} + pinned "
                 f"{_fmt(s['local.pinned_bytes'], ' GB', 1e-9)} + cache "
                 f"{_fmt(s['cache.capacity_bytes'], ' GB', 1e-9)} + KV peak "
                 f"{_fmt(s['local.kv_peak_bytes'], ' GB', 1e-9)} + headroom "
                 f"{_fmt(s['local.headroom_bytes'], ' GB', 1e-9)}")
    for n in notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- commands
def cmd_run(a) -> int:
    from . import load_config
    from .engine.simulation import Simulation
    sets = list(a.set or [])
    if a.trace:
        sets.append(f"trace={Path(a.trace).resolve()}")
    loaded = load_config(a.config, sets)
    from .outputs import check_output_dir
    out = check_output_dir(a.output if a.output else Path("results") / loaded.config.name,
                           "-o" if a.output else "results folder")
    t0 = time.perf_counter()
    sim = Simulation(loaded)
    from .progress import bar, enabled
    quiet = a.quiet or a.json
    with bar(sum(q.n_prefill + q.n_decode for q in sim.requests), desc="simulating",
             unit="tok", quiet=quiet) as pb:
        result = sim.run(progress=pb if enabled(quiet) else None)
    wall = time.perf_counter() - t0
    from .results.writer import write_results    # pandas/pyarrow writing: after the run
    write_results(result, loaded, out, extra={"wall_s": wall, "trace": str(sim.trace.path),
                                               "model": sim.model.name, "precision": sim.precision})
    if a.json:
        from .serialize import to_plain
        print(json.dumps(to_plain(result.summary), indent=1, allow_nan=False))
    elif not a.quiet:
        title = (f"moesim run '{loaded.config.name}' (config {loaded.config_hash}): "
                 f"{sim.model.display_name} {sim.precision} on {sim.system.compute.profile}, "
                 f"cache {loaded.config.cache.get('name')}, placement {loaded.config.placement.get('name')}")
        print(format_summary(result.summary, title=title, notes=result.notes))
        acc = result.summary["expert_accesses.prefill"] + result.summary["expert_accesses.decode"]
        tables = "requests, layers" + (", steps, transfers" if loaded.config.output.events else "")
        print(f"\nresults in {out}/ (summary.json, {tables}); "
              f"wall {wall:.2f} s, {acc / max(wall, 1e-9):,.0f} expert accesses/s")
    return 0


def cmd_trace_stats(a) -> int:
    from .traces.io import read_trace
    from .traces import stats
    tr = read_trace(a.file)
    st = stats.trace_stats(tr)
    if a.json:
        print(json.dumps(st, indent=1, default=float))
    else:
        print(stats.format_stats(st))
    return 0


def cmd_trace_validate(a) -> int:
    """The schema checks of every load, plus the model checks of ``moesim run`` (experts,
    layers and top-k against the trace's model, or --model / --model-file)."""
    from .models.spec import check_trace_matches, get_model, load_model_file
    from .traces.io import read_trace
    tr = read_trace(a.file)
    if a.model and a.model_file:
        raise MoesimError("give --model or --model-file, not both")
    spec = (load_model_file(a.model_file) if a.model_file else
            get_model(a.model or tr.meta.model,
                      key="--model" if a.model else f"{a.file}: metadata.model"))
    check_trace_matches(spec, tr.meta, source=tr.path)
    print(f"{a.file}: valid. {tr.summary_line()}; matches model {spec.name}")
    for k, v in tr.meta.notes.items():
        if k in ("cross_layer_alignment", "imputed_cells", "gaps"):
            print(f"  note: {k} = {v}")
    return 0


def _synth_model(a):
    from .models.spec import get_model
    from .traces.synthetic import RoutingModel
    spec = get_model(a.model, key="--model")
    return RoutingModel.from_knobs(
        num_layers=spec.moe_layers, num_experts=spec.num_experts, top_k=spec.top_k,
        model=spec.name, zipf_alpha=a.zipf_alpha, locality_decode=a.locality_decode,
        locality_prefill=a.locality_prefill, cross_layer=a.cross_layer,
        transition_concentration=a.transition_concentration,
        request_concentration=a.request_concentration, gate_sigma=a.gate_sigma,
        norm_topk=spec.norm_topk_prob, seed=a.seed)


def cmd_trace_synth(a) -> int:
    from .traces.synthetic import RoutingModel, generate
    from .outputs import check_output_file
    check_output_file(a.output, "-o")
    if a.from_model:
        model = RoutingModel.from_yaml(a.from_model)
        requests, prompt_len, decode_len = a.requests, a.prompt_len, a.decode_len
    else:
        model = _synth_model(a)
        requests = 8 if a.requests is None else a.requests
        prompt_len = 128 if a.prompt_len is None else a.prompt_len
        decode_len = 64 if a.decode_len is None else a.decode_len
    rep = generate(model, a.output, requests=requests, prompt_len=prompt_len,
                   decode_len=decode_len, seed=a.seed, len_jitter=a.len_jitter,
                   arrival_rate=a.arrival_rate, router_probs=a.router_probs, quiet=a.quiet)
    print(f"wrote {rep['path']}: {rep['requests']} requests, {rep['prefill_tokens']:,} prefill + "
          f"{rep['decode_tokens']:,} decode tokens, {rep['accesses']:,} expert accesses "
          f"({model.model}, seed {a.seed})")
    return 0


def cmd_trace_fit(a) -> int:
    from .traces.fit import fit_counts, fit_trace
    from .traces.io import read_trace, read_trace_meta
    from .traces.counts import read_counts
    from .errors import TraceError
    from .outputs import check_output_file
    check_output_file(a.output, "-o")
    src = Path(a.file)
    try:
        read_trace_meta(src)
        is_trace = True
    except TraceError as exc:
        if "moesim.trace" not in str(exc):
            raise
        is_trace = False
    if is_trace:
        trace = read_trace(src)
        from .progress import enabled
        # a bar on a terminal, else the steps as lines (a log shows where the time goes)
        say = None if a.quiet or enabled() else (lambda m: print(f"  {m}", file=sys.stderr))
        model = fit_trace(trace, seed=a.seed, calibrate=not a.no_calibrate,
                          iterations=a.iterations, progress=say, quiet=a.quiet)
    else:
        model = fit_counts(read_counts(src), num_layers=a.num_layers)
    model.to_yaml(a.output)
    print(f"wrote {a.output}: routing model of {model.model} ({model.num_layers} layers, "
          f"top-{model.top_k} of {model.num_experts})")
    cal = model.notes.get("calibration")
    if cal:
        print(f"  calibrated on {cal['requests']} requests / {cal['tokens']:,} tokens; "
              f"score {cal['loss'][0]} -> {cal['best_loss']} (worst LRU gap x 10 + mismatch)")
    for k, v in (model.notes.get("missing") or {}).items():
        print(f"  missing {k}: {v}")
    for k in ("missing_prefill", "missing_decode", "prefill_gate", "decode_gate"):
        if k in model.notes:
            print(f"  note: {model.notes[k]}")
    return 0


def cmd_trace_compare(a) -> int:
    from .traces.compare import compare, format_compare, plot_compare
    from .traces.io import read_trace
    from .traces.compare import _PLOT_FORMATS
    from .outputs import check_output_file
    if a.plot:
        check_output_file(a.plot, "--plot", suffixes=tuple(f".{f}" for f in _PLOT_FORMATS))
    ta, tb = read_trace(a.a), read_trace(a.b)
    names = (Path(a.a).stem, Path(a.b).stem)
    res = compare(ta, tb, names=names, belady_max_lookups=a.belady_max_lookups, quiet=a.quiet)
    if a.json:
        print(json.dumps(res, indent=1, default=float))
    else:
        print(format_compare(res))
    if a.plot:
        panels = plot_compare(res, a.plot)
        if not a.json:
            print(f"\nplot: {a.plot} ({len(panels)} panels)")
    return 0


def cmd_trace_holdout(a) -> int:
    from .traces.holdout import format_holdout, holdout_validation
    from .traces.io import read_trace
    from .progress import enabled
    say = (None if a.quiet or a.json or enabled()
           else (lambda m: print(f"  {m}", file=sys.stderr)))
    res = holdout_validation(read_trace(a.file), fraction=a.fraction, seed=a.seed,
                             iterations=a.iterations, progress=say, quiet=a.quiet)
    if a.json:
        print(json.dumps({k: res[k] for k in ("split", "fraction", "seed", "tokens", "rows")},
                         indent=1, default=float))
    else:
        print(format_holdout(res))
    return 0


def cmd_trace_import(a) -> int:
    from .traces.importers import IMPORTERS, import_path
    from .traces.io import write_trace
    from .config.strict import describe
    if a.list_formats:
        for name, imp in IMPORTERS.items():
            print(f"{name}: {imp.description}")
            for key, tp, default, help_ in describe(imp.Options):
                print(f"    --option {key}=<{tp}> (default {default!r}) {help_}")
        return 0
    if not a.source or not a.output:
        raise MoesimError("trace import needs SOURCE and -o OUTPUT (or --list-formats)")
    opts = {}
    for item in a.option or []:
        if "=" not in item:
            raise MoesimError(f"--option expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k.strip()] = v
    from .outputs import check_output_file
    check_output_file(a.output, "-o")
    res = import_path(a.source, a.format, opts)
    if res.trace is not None:
        write_trace(res.trace, a.output)
        print(f"wrote {a.output}: {res.trace.summary_line()}")
    else:
        from .traces.counts import write_counts
        write_counts(res.counts, a.output)
        c = res.counts
        print(f"wrote {a.output}: aggregate expert counts of {c.model} (layers {c.model_layers}, "
              f"domains {', '.join(c.domains)}); not a per-token trace")
    for k, v in res.report.items():
        if isinstance(v, (dict, list)) and len(json.dumps(v, default=str)) > 160:
            v = f"({len(v)} entries; see the file's metadata notes)"
        print(f"  {k}: {v}")
    return 0


def cmd_profiles(a) -> int:
    from .hardware.profiles import KEYS, all_profiles, get_profile
    if a.action == "list":
        profs = all_profiles()
        for kind in ("compute", "memory", "link"):
            if a.kind and a.kind != kind:
                continue
            print(f"{kind}:")
            for name, p in sorted(profs.items()):
                if p.kind == kind:
                    print(f"  {name:<20} {p.description}")
        return 0
    if not a.name:
        raise MoesimError("profiles show needs a profile NAME (see `moesim profiles list`)")
    p = get_profile(a.name)
    print(f"{p.name} ({p.kind}): {p.description}\n  file: {p.path}")
    for key, (req, help_) in KEYS[p.kind].items():
        v = p.values.get(key)
        if v is None:
            continue
        print(f"  {key:<26} {v.value:>12g}   {help_}\n  {'':<26} source: {v.source}")
    for k, v in p.flags.items():
        print(f"  {k:<26} {v}")
    return 0


def cmd_models(a) -> int:
    from .models.spec import catalog, get_model
    if a.action == "list":
        for name, m in catalog().items():
            print(f"  {name:<20} {m.display_name:<22} {m.moe_layers:>3} MoE layers, "
                  f"top-{m.top_k} of {m.num_experts}, expert {m.expert_bytes() / 2**20:,.1f} MiB "
                  f"({m.native_precision})")
        return 0
    if not a.name:
        raise MoesimError("models show needs a model NAME (see `moesim models list`)")
    m = get_model(a.name, key="NAME")
    print(f"{m.name}: {m.display_name}")
    for k, v in m.to_dict().items():
        if k not in ("name", "display_name"):
            print(f"  {k}: {v}")
    print(f"  derived: params/expert {m.params_per_expert:,}; bytes/expert ({m.native_precision}) "
          f"{m.expert_bytes():,}; total params {m.total_params / 1e9:.2f}B, active "
          f"{m.active_params / 1e9:.2f}B; KV bytes/token {m.kv_bytes_per_token():,.0f} (bf16)")
    return 0


def policy_summary(cls) -> str:
    """The first paragraph of the policy module's docstring, whole, on one line."""
    doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip()
    return " ".join(doc.split("\n\n", 1)[0].split())


def cmd_policies(a) -> int:
    from .config.strict import describe
    from .policies.base import AXES
    axes = [a.axis] if a.axis else list(AXES)
    for axis in axes:
        if axis not in AXES:
            raise MoesimError(f"unknown axis '{axis}'; choose from {', '.join(AXES)}")
        print(f"{axis}:")
        for name, cls in AXES[axis].items():
            print(f"  {name}: {policy_summary(cls)}")
            for key, tp, default, help_ in describe(cls.Params):
                print(f"      {key} ({tp}, default {default!r}): {help_}")
    return 0


def cmd_metrics(a) -> int:
    from .metrics.definitions import METRICS
    for name, unit, formula in METRICS:
        print(f"{name:<34} {unit:<9} {formula}")
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .traces.compare import DEFAULT_BELADY_MAX_LOOKUPS
    p = argparse.ArgumentParser(prog="moesim", description="Trace-driven simulator of memory "
                                "hierarchies for Mixture-of-Experts inference.")
    p.add_argument("--version", action="version", version=f"moesim {__version__}")
    p.add_argument("--debug", action="store_true", help="on an error, also print the Python "
                   "traceback (same as MOESIM_DEBUG=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = sub.add_parser("run", help="simulate a run config and write a results folder",
                       description="Simulate CONFIG (default: the bundled default: Mixtral-8x7B "
                       "on an H100 with an LRU expert cache over host DDR5) and write DIR/summary.json "
                       "and per-request/per-event tables.")
    r.add_argument("config", nargs="?", help="run config YAML (default: bundled default.yaml)")
    r.add_argument("-o", "--output", help="results folder (default: results/<config name>)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key, e.g. --set cache.capacity_gb=24 (repeatable)")
    r.add_argument("--trace", help="use this trace instead of the config's")
    r.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    r.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("trace", help="inspect, generate and convert routing traces")
    tsub = t.add_subparsers(dest="trace_command", metavar="ACTION", required=True)
    ts = tsub.add_parser("stats", help="popularity, locality, reuse distances, gate scores, "
                                       "LRU hit rates of a trace")
    ts.add_argument("file", help="canonical Parquet trace")
    ts.add_argument("--json", action="store_true", help="machine-readable output")
    ts.set_defaults(func=cmd_trace_stats)
    tv = tsub.add_parser("validate", help="check a trace against the schema and its model "
                         "(exit 0 if valid)", description="Check a trace as `moesim run` does: "
                         "the schema, and its experts, layers and top-k against its model "
                         "(from the catalog, or --model / --model-file).")
    tv.add_argument("file")
    tv.add_argument("--model", help="check against this catalog model (default: the trace's)")
    tv.add_argument("--model-file", metavar="SPEC.yaml",
                    help="check against a model spec file (as run's model.file)")
    tv.set_defaults(func=cmd_trace_validate)
    fi = tsub.add_parser("fit", help="fit a generative routing model (YAML) to a trace",
                         description="Fit a routing model to a canonical trace (or to aggregate "
                         "expert counts written by `trace import`): popularity, reuse, prefix, "
                         "cross-layer patterns and gate scores per phase, calibrated so synthetic "
                         "traces reproduce the source's LRU hit-rate curves. The YAML is "
                         "readable and editable; use it with `trace synth --from`.")
    fi.add_argument("file", help="canonical Parquet trace, or an expert-counts Parquet file")
    fi.add_argument("-o", "--output", required=True, help="output YAML")
    fi.add_argument("--seed", type=int, default=0, help="seed of the calibration syntheses")
    fi.add_argument("--iterations", type=int, default=24, help="calibration iterations")
    fi.add_argument("--no-calibrate", action="store_true", help="direct estimates only")
    fi.add_argument("--num-layers", type=int, default=None,
                    help="MoE layers of the model (counts input only; default: from the catalog)")
    fi.add_argument("-q", "--quiet", action="store_true", help="no progress bar or lines")
    fi.set_defaults(func=cmd_trace_fit)
    co = tsub.add_parser("compare", help="set two traces side by side (cache behaviour first)",
                         description="Compare traces A and B: LRU and Belady hit rates over cache "
                         "sizes per phase, popularity TVD, reuse distances, consecutive overlap, "
                         "cross-layer divergence and gate scores.")
    co.add_argument("a", help="first trace (e.g. the real one)")
    co.add_argument("b", help="second trace (e.g. the synthetic one)")
    co.add_argument("--plot", help="write a figure (.png, .svg or .pdf)")
    co.add_argument("--json", action="store_true", help="machine-readable output")
    co.add_argument("--belady-max-lookups", type=int, default=DEFAULT_BELADY_MAX_LOOKUPS,
                    help="replay Belady on at most this many lookups per stream")
    co.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    co.set_defaults(func=cmd_trace_compare)
    ho = tsub.add_parser("holdout", help="held-out validation of `trace fit` on a trace",
                         description="Fit on part of a trace, synthesise the held-out part's "
                         "request lengths and phase mix, and compare (LRU/Belady hit-rate gaps, "
                         "popularity, overlap, reuse, cross-layer, gate scores); the fit part's "
                         "own distance to the held-out part is shown as a reference. Splits by "
                         "request when the trace has 5 or more, else inside each request.")
    ho.add_argument("file", help="canonical Parquet trace")
    ho.add_argument("--fraction", type=float, default=0.3, help="share held out")
    ho.add_argument("--seed", type=int, default=0, help="fit seed (synthesis uses seed + 1)")
    ho.add_argument("--iterations", type=int, default=24, help="calibration iterations")
    ho.add_argument("--json", action="store_true", help="machine-readable output")
    ho.add_argument("-q", "--quiet", action="store_true", help="no progress bar or lines")
    ho.set_defaults(func=cmd_trace_holdout)
    sy = tsub.add_parser("synth", help="generate a seeded synthetic trace",
                         description="Generate a synthetic routing trace, from a fitted model "
                         "(--from MODEL.yaml) or from knobs (per-layer Zipf popularity, temporal "
                         "locality, cross-layer correlation). Streams to Parquet with bounded "
                         "memory; the same seed gives the same bytes.")
    sy.add_argument("-o", "--output", required=True, help="output Parquet file")
    sy.add_argument("--from", dest="from_model", metavar="MODEL.yaml",
                    help="a routing model from `trace fit` (the knob options are ignored)")
    sy.add_argument("--model", default="mixtral-8x7b", help="model catalog name (layers, experts, top-k)")
    sy.add_argument("--requests", type=int, default=None,
                    help="number of requests (default 8; with --from: the source's count)")
    sy.add_argument("--prompt-len", type=int, default=None,
                    help="prompt tokens per request (default 128; with --from: the source's "
                         "lengths, request by request)")
    sy.add_argument("--decode-len", type=int, default=None,
                    help="decode tokens per request (default 64; with --from: the source's)")
    sy.add_argument("--len-jitter", type=float, default=0.0,
                    help="lengths uniform in [(1-j)x, (1+j)x] (0 = fixed)")
    sy.add_argument("--seed", type=int, default=0, help="random seed (same seed = same file)")
    sy.add_argument("--zipf-alpha", type=float, default=0.8, help="per-layer popularity skew")
    sy.add_argument("--locality-decode", type=float, default=0.3,
                    help="probability a decode slot reuses an expert of the previous token")
    sy.add_argument("--locality-prefill", type=float, default=0.15, help="the same for prefill tokens")
    sy.add_argument("--cross-layer", type=float, default=0.3,
                    help="weight of the layer-to-layer transition in expert choice")
    sy.add_argument("--transition-concentration", type=float, default=0.3,
                    help="Dirichlet concentration of transition rows (small = peaky)")
    sy.add_argument("--request-concentration", type=float, default=math.inf,
                    help="per-request popularity Dirichlet concentration (inf = none)")
    sy.add_argument("--gate-sigma", type=float, default=1.0,
                    help="std of router logits (larger = more dominant top-1)")
    sy.add_argument("--arrival-rate", type=float, default=None,
                    help="record Poisson arrival times at this rate (requests/s)")
    sy.add_argument("--router-probs", action="store_true", help="also store full router distributions")
    sy.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sy.set_defaults(func=cmd_trace_synth)
    im = tsub.add_parser("import", help="convert a public trace format to canonical Parquet",
                         description="Convert SOURCE (file or folder) to a canonical trace. "
                         "The format is detected unless --format is given; --list-formats "
                         "shows formats and their options.")
    im.add_argument("source", nargs="?", help="file or folder to convert")
    im.add_argument("-o", "--output", help="output Parquet file")
    im.add_argument("--format", help="source format (see --list-formats)")
    im.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="format option, e.g. --option gaps=fill-previous (repeatable)")
    im.add_argument("--list-formats", action="store_true", help="list formats and options")
    im.set_defaults(func=cmd_trace_import)

    pr = sub.add_parser("profiles", help="list or show device profiles")
    pr.add_argument("action", choices=("list", "show"))
    pr.add_argument("name", nargs="?", help="profile name (for show)")
    pr.add_argument("--kind", choices=("compute", "memory", "link"), help="list only this kind")
    pr.set_defaults(func=cmd_profiles)

    mo = sub.add_parser("models", help="list or show MoE model specifications")
    mo.add_argument("action", choices=("list", "show"))
    mo.add_argument("name", nargs="?", help="model name or alias (for show)")
    mo.set_defaults(func=cmd_models)

    po = sub.add_parser("policies", help="list registered policies and their parameters")
    po.add_argument("axis", nargs="?", help="placement, cache, prefetch, routing, warmup, kv, "
                                            "scheduler, migration or mixed_precision")
    po.set_defaults(func=cmd_policies)

    me = sub.add_parser("metrics", help="list every reported metric with unit and formula")
    me.set_defaults(func=cmd_metrics)
    # Command groups with their own modules (each exposes add_parser(subparsers)).
    import importlib
    for group in COMMAND_GROUPS:
        importlib.import_module(f".{group}.cli", __package__).add_parser(sub)
    return p


def _command_name(args) -> str:
    """'trace fit' etc.: the command and its subcommand (any ``*_command`` dest)."""
    parts = [args.command] + [v for k, v in vars(args).items()
                              if k.endswith("_command") and isinstance(v, str)]
    return " ".join(p for p in parts if p)


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Run one command. A MoesimError (bad input) is one ``moesim: error:`` line; any other
    exception is a bug or an input nothing checked, reported as one line ``moesim: error:
    COMMAND: internal error: Type: message`` -- both exit 2. ``--debug`` (or
    MOESIM_DEBUG=1) also prints the traceback."""
    import os
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("MOESIM_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except MoesimError as exc:
        if debug:
            import traceback
            traceback.print_exc()
        print(f"moesim: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("moesim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 -- the backstop: never a bare traceback
        if debug:
            import traceback
            traceback.print_exc()
        print(f"moesim: error: {_command_name(args)}: internal error: {type(exc).__name__}: "
              f"{_one_line(exc)}" + ("" if debug else " (rerun with --debug for the traceback)"),
              file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
