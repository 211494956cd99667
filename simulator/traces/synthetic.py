"""Seeded synthetic routing traces from an explicit generative routing model.

A :class:`RoutingModel` says, per phase (prefill / decode) and MoE layer, how a token picks
its k experts::

    for each request r:
        for each layer l:  pi_rl ~ Dirichlet(kappa_l * pi_l)   (request "topic"; kappa = inf: pi_l)
        for each token t of r (prefill tokens, then decode tokens), all layers at once:
            the first tokens of a request may route exactly like a recorded common prefix
                (prefix bank: at position p, routing pattern j with its fitted frequency; BOS
                and chat-template tokens route identically in every request);
            the token takes a cross-layer pattern from the bank (B recorded token routings,
                each k experts at every layer: real tokens' experts are coherent across
                layers, which pairwise transition statistics cannot express);
            for each layer l and each of the k slots:
                with probability rho_l (stickiness): reuse an expert of the token d earlier at
                    layer l (same request), d drawn from the reuse-distance bins
                    {1, 2, 3-4, 5-8, 9-16, 17-32, 33-64}; with probability lambda (coupling)
                    the decision and d use random numbers shared by all layers of the token;
            repeats dropped, the remaining slots are drawn without replacement from
                q(e) ∝ pi_rl(e) * exp(-nu_l if request r already used e at layer l else 0)
                       * (1 / (1 - c_l) if e is in the token's bank pattern at layer l else 1)
                (nu_l > 0 spreads a request over more experts, < 0 concentrates it; c_l, the
                chain weight, carries the cross-layer structure into the draw while the
                request's own popularity and repeat bias still apply);
            gate scores, best first: "logits" model (z ~ N(0, sigma^2) per expert, the chosen
                experts take the k largest, scores = softmax probabilities) or "empirical"
                model (top-1 share of the top-k mass drawn from fitted quantiles, the rest
                split by a Dirichlet over ranks 2..k, times a top-k mass drawn from quantiles)

Tokens of many requests are generated at once (vectorised over requests) and streamed to
Parquet a chunk of requests at a time; chunks are a fixed function of the request lengths,
so the same (model, lengths, seed) gives byte-identical files and memory stays bounded
by the window of requests being generated (``WINDOW_ACCESSES`` token -> expert accesses),
however long the trace.

``RoutingModel.from_knobs`` builds a model from intuitive knobs (tests, defaults);
``simulator.traces.fit`` estimates one from a real trace. Both round-trip through a readable
YAML file (``to_yaml`` / ``from_yaml``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import ConfigError
from ..serialize import atomic_write, to_plain
from .io import TraceWriter
from .schema import DECODE, PHASE_NAMES, PREFILL, TraceMeta

# Reuse-distance bins (tokens back): (lo, hi) inclusive
REUSE_BINS = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 32), (33, 64))
REUSE_BIN_LABELS = tuple(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in REUSE_BINS)
YAML_VERSION = 1


@dataclass
class GateModel:
    """How gate scores are drawn. ``kind`` "logits" uses ``sigma``/``temperature``;
    "empirical" uses quantile tables (values at evenly spaced probabilities 0..1)."""

    kind: str = "logits"
    sigma: float = 1.0
    temperature: float = 1.0
    top1_share: list[float] | None = None       # quantiles of top-1 / sum(top-k)
    rest_proportions: list[float] | None = None  # mean split of the rest over ranks 2..k
    rest_concentration: float = 10.0            # Dirichlet concentration of that split
    topk_mass: list[float] | None = None         # quantiles of sum(top-k) (None: renormalised)

    def validate(self, k: int, key: str) -> None:
        if self.kind not in ("logits", "empirical"):
            raise ConfigError(f"must be 'logits' or 'empirical', got {self.kind!r}", key=f"{key}.kind")
        if self.kind == "logits":
            if not (self.sigma >= 0 and self.temperature > 0):
                raise ConfigError("sigma must be >= 0 and temperature > 0", key=key)
            return
        for name in ("top1_share", "topk_mass"):
            q = getattr(self, name)
            if q is None:
                if name == "top1_share":
                    raise ConfigError("the empirical gate needs top1_share quantiles", key=f"{key}.{name}")
                continue
            a = np.asarray(q, dtype=float)
            if a.ndim != 1 or a.size < 2 or (np.diff(a) < -1e-12).any() or a.min() < 0 or a.max() > 1 + 1e-9:
                raise ConfigError("must be >= 2 non-decreasing values in [0, 1]", key=f"{key}.{name}")
        if k > 1:
            rp = np.asarray(self.rest_proportions or [], dtype=float)
            if rp.shape != (k - 1,) or (rp < 0).any() or not np.isclose(rp.sum(), 1.0, atol=1e-4):
                raise ConfigError(f"needs {k - 1} proportions summing to 1", key=f"{key}.rest_proportions")
            if not self.rest_concentration > 0:
                raise ConfigError("must be > 0", key=f"{key}.rest_concentration")


@dataclass
class PhaseModel:
    """Per-layer routing parameters of one phase."""

    popularity: np.ndarray          # (L, E) rows sum to 1
    stickiness: np.ndarray          # (L,) probability a slot reuses an expert of an earlier token
    reuse_bins: np.ndarray          # (L, len(REUSE_BINS)) distribution of the look-back bin
    concentration: np.ndarray       # (L,) kappa_l; inf = no per-request variation
    gate: GateModel = field(default_factory=GateModel)
    repeat_bias: np.ndarray | None = None   # (L,) nu_l; None = 0 (no bias)
    coupling: float = 0.0                   # lambda: share reuse draws across a token's layers
    chain_weight: np.ndarray | None = None  # (L,) c_l in [0, 1); None = 0 (layers independent)

    def __post_init__(self) -> None:
        L = self.popularity.shape[0]
        if self.repeat_bias is None:
            self.repeat_bias = np.zeros(L)
        if self.chain_weight is None:
            self.chain_weight = np.zeros(L)


@dataclass
class RoutingModel:
    num_layers: int
    num_experts: int
    top_k: int
    model: str = "synthetic"
    norm_topk: bool = True
    phases: dict[str, PhaseModel] = field(default_factory=dict)
    lengths: list[tuple[int, int]] | None = None   # per request (prompt, decode), when fitted
    chain_bank: np.ndarray | None = None       # (B, L, k) token routings across layers
    # prefix bank: per request position p, list of (probability, (L, k) experts) patterns
    prefix: list[list[tuple[float, np.ndarray]]] = field(default_factory=list)
    source: str = "synthetic"
    notes: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_knobs(cls, *, num_layers: int, num_experts: int, top_k: int, model: str = "synthetic",
                   zipf_alpha: float = 0.8, locality_decode: float = 0.3,
                   locality_prefill: float = 0.15, cross_layer: float = 0.3,
                   transition_concentration: float = 0.3, request_concentration: float = math.inf,
                   gate_sigma: float = 1.0, norm_topk: bool = True, seed: int = 0) -> "RoutingModel":
        """A model from intuitive knobs. Popularity at every layer is Zipf(zipf_alpha) over a
        random permutation of the experts; ``cross_layer`` is the chain weight (capped at
        0.99) toward a bank of patterns that follow transitions with
        Dirichlet(transition_concentration) rows (small = peaky = strong layer-to-layer
        correlation); locality reuses experts of the previous token."""
        _check_knobs(num_layers=num_layers, num_experts=num_experts, top_k=top_k,
                     zipf_alpha=zipf_alpha, locality_decode=locality_decode,
                     locality_prefill=locality_prefill, cross_layer=cross_layer,
                     transition_concentration=transition_concentration,
                     request_concentration=request_concentration, gate_sigma=gate_sigma)
        from ..config.strict import check_arg
        seed = check_arg(seed, "seed", integer=True, min=0)
        rng = np.random.default_rng(seed)
        L, E = num_layers, num_experts
        ranks = np.arange(1, E + 1, dtype=np.float64) ** (-zipf_alpha)
        pop = np.empty((L, E))
        for l in range(L):
            pop[l, rng.permutation(E)] = ranks / ranks.sum()
        one_back = np.zeros((L, len(REUSE_BINS)))
        one_back[:, 0] = 1.0
        phases = {}
        for name, rho in (("prefill", locality_prefill), ("decode", locality_decode)):
            phases[name] = PhaseModel(popularity=pop.copy(), stickiness=np.full(L, rho),
                                      reuse_bins=one_back.copy(),
                                      concentration=np.full(L, request_concentration),
                                      gate=GateModel(kind="logits", sigma=gate_sigma))
        for ph in phases.values():
            ph.chain_weight = np.full(L, min(cross_layer, 0.99))
        # a bank of CHAIN_BANK cross-layer patterns: chains of expert sets through transitions
        # with Dirichlet rows (small concentration = peaky), mixed with the next layer's
        # popularity so that the patterns keep every layer's marginal roughly right
        bank = np.empty((CHAIN_BANK, L, top_k), dtype=np.int64)
        bank[:, 0] = _gumbel_topk(rng, np.tile(np.log(pop[0]), (CHAIN_BANK, 1)), top_k)
        for l in range(L - 1):
            trans = (0.5 * rng.dirichlet(np.full(E, transition_concentration), size=E)
                     + 0.5 * pop[l + 1][None])
            mix = trans[bank[:, l]].mean(axis=1)
            bank[:, l + 1] = _gumbel_topk(rng, np.log(np.maximum(mix, 1e-300)), top_k)
        return cls(L, E, top_k, model=model, norm_topk=norm_topk, phases=phases,
                   chain_bank=bank if L > 1 else None,
                   source=f"synthetic knobs (seed {seed})",
                   notes={"knobs": dict(zipf_alpha=zipf_alpha, locality_decode=locality_decode,
                                        locality_prefill=locality_prefill, cross_layer=cross_layer,
                                        transition_concentration=transition_concentration,
                                        request_concentration=request_concentration,
                                        gate_sigma=gate_sigma, seed=seed)})

    def validate(self) -> "RoutingModel":
        L, E, k = self.num_layers, self.num_experts, self.top_k
        if not (L >= 1 and E >= 1 and 1 <= k <= E):
            raise ConfigError(f"need num_layers >= 1 and 1 <= top_k <= num_experts; got L={L}, "
                              f"E={E}, k={k}")
        if set(self.phases) != {"prefill", "decode"}:
            raise ConfigError(f"needs phases prefill and decode, got {', '.join(self.phases)}",
                              key="phases")
        for name, ph in self.phases.items():
            key = f"phases.{name}"
            _check_rows(ph.popularity, (L, E), f"{key}.popularity")
            _check_rows(ph.reuse_bins, (L, len(REUSE_BINS)), f"{key}.reuse_bins")
            if ph.stickiness.shape != (L,) or (ph.stickiness < 0).any() or (ph.stickiness > 1).any():
                raise ConfigError(f"needs {L} values in [0, 1]", key=f"{key}.stickiness")
            if ph.concentration.shape != (L,) or not (ph.concentration > 0).all():
                raise ConfigError(f"needs {L} values > 0 (inf allowed)", key=f"{key}.concentration")
            if ph.repeat_bias.shape != (L,) or not np.isfinite(ph.repeat_bias).all():
                raise ConfigError(f"needs {L} finite values", key=f"{key}.repeat_bias")
            if not 0.0 <= ph.coupling <= 1.0:
                raise ConfigError(f"must be in [0, 1], got {ph.coupling}", key=f"{key}.coupling")

        for name, ph in self.phases.items():
            cw = ph.chain_weight
            if cw.shape != (L,) or (cw < 0).any() or (cw >= 1).any():
                raise ConfigError(f"needs {L} values in [0, 1)", key=f"phases.{name}.chain_weight")
        if L > 1 and any((ph.chain_weight > 0).any() for ph in self.phases.values()):
            b = self.chain_bank
            if b is None or b.ndim != 3 or b.shape[1:] != (L, k) or b.shape[0] < 1:
                raise ConfigError(f"a chain weight needs a bank of (L={L}, k={k}) patterns",
                                  key="cross_layer_bank")
            if b.min() < 0 or b.max() >= E:
                raise ConfigError(f"expert ids must be in [0, {E})", key="cross_layer_bank")
        for pos, bank in enumerate(self.prefix):
            if sum(p for p, _ in bank) > 1 + 1e-6 or any(p < 0 for p, _ in bank):
                raise ConfigError("probabilities must be >= 0 and sum to <= 1",
                                  key=f"prefix[{pos}]")
            for _p, ex in bank:
                ex = np.asarray(ex)
                if ex.shape != (L, k) or ex.min() < 0 or ex.max() >= E or any(
                        len(set(row)) != k for row in ex.tolist()):
                    raise ConfigError(f"each pattern needs {L} layers of {k} distinct experts "
                                      f"in [0, {E})", key=f"prefix[{pos}]")
            ph.gate.validate(k, f"{key}.gate")
        if self.lengths is not None and any(p < 0 or d < 0 or p + d < 1 for p, d in self.lengths):
            raise ConfigError("request lengths must be >= 0 and not both 0", key="lengths")
        return self

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict[str, Any]:
        """A readable mapping: model-wide settings, per-phase and per-layer parameters, the
        prefix bank, and last the cross-layer bank (B patterns x L layers x k experts)."""
        def r(x, n=5):
            return float(f"{float(x):.{n}g}") if math.isfinite(x) else float(x)

        out: dict[str, Any] = {
            "moesim_routing_model": YAML_VERSION, "model": self.model,
            "num_layers": self.num_layers, "num_experts": self.num_experts,
            "top_k": self.top_k, "norm_topk": self.norm_topk, "source": self.source,
            "notes": to_plain(self.notes, nonfinite_as_none=False),
        }
        if self.lengths is not None:
            out["lengths"] = {"prompt": [int(p) for p, _ in self.lengths],
                              "decode": [int(d) for _, d in self.lengths]}
        phases = {}
        for name, ph in self.phases.items():
            g = ph.gate
            gate = {"kind": g.kind}
            if g.kind == "logits":
                gate.update(sigma=r(g.sigma), temperature=r(g.temperature))
            else:
                gate.update(top1_share=[r(x) for x in g.top1_share],
                            rest_proportions=[r(x) for x in (g.rest_proportions or [])],
                            rest_concentration=r(g.rest_concentration),
                            topk_mass=None if g.topk_mass is None else [r(x) for x in g.topk_mass])
            layers = []
            for l in range(self.num_layers):
                layers.append({
                    "layer": l, "stickiness": r(ph.stickiness[l]),
                    "reuse_bins": {lab: r(v) for lab, v in zip(REUSE_BIN_LABELS, ph.reuse_bins[l])},
                    "concentration": r(ph.concentration[l]),
                    "repeat_bias": r(ph.repeat_bias[l]),
                    "chain_weight": r(ph.chain_weight[l]),
                    "popularity": [r(x, 4) for x in ph.popularity[l]],
                })
            phases[name] = {"gate": gate, "coupling": r(ph.coupling), "layers": layers}
        out["phases"] = phases
        if self.chain_bank is not None:
            out["cross_layer_bank"] = np.asarray(self.chain_bank).tolist()
        out["prefix"] = [{"position": pos, "patterns": [
            {"probability": r(p), "experts": np.asarray(ex).tolist()} for p, ex in bank]}
            for pos, bank in enumerate(self.prefix)]
        return out

    def to_yaml(self, path: str | Path) -> Path:
        header = ("# moesim generative routing model (see simulator/traces/synthetic.py for its\n"
                  "# meaning). Edit freely: rows are renormalised on load.\n")
        text = header + yaml.safe_dump(self.to_dict(), sort_keys=False, width=100,
                                       default_flow_style=None)
        return atomic_write(path, lambda tmp: tmp.write_text(text))

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "<model>") -> "RoutingModel":
        try:
            return cls._from_dict(d)
        except ConfigError as exc:
            raise ConfigError(str(exc).split(": ", 1)[-1] if exc.key else str(exc),
                              source=source, key=exc.key) from None
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"malformed routing model ({type(exc).__name__}: {exc})",
                              source=source) from None

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> "RoutingModel":
        if not isinstance(d, dict) or d.get("moesim_routing_model") != YAML_VERSION:
            raise ConfigError(f"not a moesim routing model (expected moesim_routing_model: "
                              f"{YAML_VERSION})", key="moesim_routing_model")
        L, E, k = int(d["num_layers"]), int(d["num_experts"]), int(d["top_k"])
        phases = {}
        for name in PHASE_NAMES:
            pd_ = d["phases"][name]
            layers = sorted(pd_["layers"], key=lambda x: x["layer"])
            if [x["layer"] for x in layers] != list(range(L)):
                raise ConfigError(f"needs layers 0..{L - 1}", key=f"phases.{name}.layers")
            pop = _renorm(np.array([x["popularity"] for x in layers], dtype=float),
                          f"phases.{name}.popularity")
            bins = _renorm(np.array([[x["reuse_bins"].get(lab, 0.0) for lab in REUSE_BIN_LABELS]
                                     for x in layers], dtype=float), f"phases.{name}.reuse_bins")
            g = dict(pd_.get("gate") or {})
            gate = GateModel(**{key: g[key] for key in g if key in GateModel.__dataclass_fields__})
            phases[name] = PhaseModel(
                popularity=pop, reuse_bins=bins,
                stickiness=np.array([x["stickiness"] for x in layers], dtype=float),
                concentration=np.array([x["concentration"] for x in layers], dtype=float),
                repeat_bias=np.array([x.get("repeat_bias", 0.0) for x in layers], dtype=float),
                coupling=float(pd_.get("coupling", 0.0)),
                chain_weight=np.array([x.get("chain_weight", 0.0) for x in layers], dtype=float),
                gate=gate)
        bank = None
        if d.get("cross_layer_bank") is not None:
            bank = np.asarray(d["cross_layer_bank"], dtype=np.int64)
        prefix = []
        for entry in sorted(d.get("prefix") or [], key=lambda e: e["position"]):
            prefix.append([(float(x["probability"]), np.asarray(x["experts"], dtype=np.int64))
                           for x in entry["patterns"]])
        lengths = None
        if d.get("lengths"):
            lengths = list(zip(map(int, d["lengths"]["prompt"]), map(int, d["lengths"]["decode"])))
        return cls(L, E, k, model=str(d.get("model", "synthetic")), norm_topk=bool(d.get("norm_topk", True)),
                   phases=phases, chain_bank=bank, lengths=lengths, prefix=prefix,
                   source=str(d.get("source", "")),
                   notes=dict(d.get("notes") or {})).validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RoutingModel":
        from ..config import yamlload
        try:
            data = yamlload.load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError("file not found", source=str(path)) from None
        except IsADirectoryError:
            raise ConfigError("is a directory, not a routing-model YAML", source=str(path)) from None
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
        except UnicodeDecodeError:
            raise ConfigError("not a text file (a routing-model YAML from `moesim trace fit` "
                              "is wanted)", source=str(path)) from None
        except yaml.YAMLError as exc:
            raise ConfigError(yamlload.error_text(exc), source=str(path)) from None
        return cls.from_dict(data, source=str(path))


ROW_SUM_TOLERANCE = 1e-3    # rows of probabilities may be off by rounding in YAML


def _renorm(a: np.ndarray, key: str) -> np.ndarray:
    if not np.isfinite(a).all() or (a < 0).any():
        raise ConfigError("entries must be finite and >= 0", key=key)
    s = a.sum(axis=-1, keepdims=True)
    if (s <= 0).any():
        raise ConfigError("a row sums to 0", key=key)
    # rows already normalised up to the YAML's rounding are kept as written, so that a
    # saved model reloads to the same numbers (a fixed point); edited rows are rescaled.
    # The sampler normalises again where it needs exact sums.
    return np.where(np.abs(s - 1.0) <= ROW_SUM_TOLERANCE, a, a / s)


def _check_knobs(**kw) -> None:
    for name in ("num_layers", "num_experts", "top_k"):
        if int(kw[name]) < 1:
            raise ConfigError(f"must be >= 1, got {kw[name]}", key=name)
    if kw["top_k"] > kw["num_experts"]:
        raise ConfigError(f"top_k {kw['top_k']} > num_experts {kw['num_experts']}", key="top_k")
    for name in ("locality_decode", "locality_prefill", "cross_layer"):
        if not 0 <= kw[name] <= 1:
            raise ConfigError(f"must be in [0, 1], got {kw[name]}", key=name)
    for name in ("zipf_alpha", "gate_sigma"):
        if not kw[name] >= 0:
            raise ConfigError(f"must be >= 0, got {kw[name]}", key=name)
    for name in ("transition_concentration", "request_concentration"):
        if not kw[name] > 0:
            raise ConfigError(f"must be > 0, got {kw[name]}", key=name)


def _check_rows(a: np.ndarray, shape, key: str) -> None:
    if a.shape != tuple(shape):
        raise ConfigError(f"expected shape {tuple(shape)}, got {a.shape}", key=key)
    if not np.isfinite(a).all() or (a < 0).any():
        raise ConfigError("entries must be finite and >= 0", key=key)
    s = a.sum(axis=-1)
    if not np.allclose(s, 1.0, rtol=0, atol=ROW_SUM_TOLERANCE):
        bad = int(np.flatnonzero(~np.isclose(s, 1.0, rtol=0, atol=ROW_SUM_TOLERANCE))[0])
        raise ConfigError(f"row {bad} sums to {s[bad]:.6g}, not 1", key=key)


# ---------------------------------------------------------------------- sampling
CHAIN_BANK = 256              # cross-layer patterns in a model's bank (fitted or from knobs)
CHUNK_REQUESTS = 256          # requests generated together (vectorised over requests)
CHUNK_ACCESSES = 1 << 22      # ... and at most this many token -> expert accesses per chunk
WINDOW_ACCESSES = 1 << 22     # requests are generated window by window (bounded memory)
WRITE_TOKENS = 8192           # tokens per Parquet write (bounds the Arrow conversion)


def windows(lengths: np.ndarray, per_token: int = 1):
    """Consecutive request ranges [w0, w1) of at most WINDOW_ACCESSES accesses (lengths x
    ``per_token`` accesses per token; >= 1 request per window)."""
    cap = WINDOW_ACCESSES // max(1, per_token)
    w0, n = 0, len(lengths)
    while w0 < n:
        w1, tok = w0, 0
        while w1 < n and (w1 == w0 or tok + lengths[w1] <= cap):
            tok += int(lengths[w1])
            w1 += 1
        yield w0, w1
        w0 = w1


def chunks(lengths: np.ndarray, per_token: int = 1):
    """Groups of request indices generated together: within each window, requests sorted by
    length (stable) and cut into runs of at most CHUNK_REQUESTS requests and CHUNK_ACCESSES
    accesses, so a chunk's requests have similar lengths and few steps are wasted on
    padding. A fixed function of the lengths and the model's layers x top-k (``per_token``):
    part of what a seed means."""
    lengths = np.asarray(lengths)
    cap = CHUNK_ACCESSES // max(1, per_token)
    for w0, w1 in windows(lengths, per_token):
        order = w0 + np.argsort(lengths[w0:w1], kind="stable")
        c0, n = 0, order.size
        while c0 < n:
            c1, tok = c0, 0
            while c1 < n and c1 - c0 < CHUNK_REQUESTS and (
                    c1 == c0 or tok + lengths[order[c1]] <= cap):
                tok += int(lengths[order[c1]])
                c1 += 1
            yield w0, w1, order[c0:c1]
            c0 = c1


def _gumbel_topk(rng, logq: np.ndarray, k: int) -> np.ndarray:
    """k draws without replacement from softmax(logq), per row, in draw order (Gumbel-top-k)."""
    g = logq + rng.gumbel(size=logq.shape)
    n, E = g.shape
    rows = np.arange(n)[:, None]
    if k >= E:
        part = np.broadcast_to(np.arange(E), (n, E))
    else:
        part = np.argpartition(-g, kth=k - 1, axis=1)[:, :k]
    order = np.argsort(-g[rows, part], axis=1, kind="stable")
    return part[rows, order]


def _quantile_draw(rng, table, n: int) -> np.ndarray:
    q = np.asarray(table, dtype=float)
    return np.interp(rng.random(n), np.linspace(0.0, 1.0, q.size), q)


class ChunkSampler:
    """Generates the tokens of a chunk of requests: step t of every request at once, all
    layers at once (layers depend on each other only through the token's bank pattern and
    its shared random numbers, both drawn before the layers). Output arrays are ragged
    (requests concatenated), so memory is proportional to the chunk's tokens."""

    def __init__(self, model: RoutingModel, rng: np.random.Generator, prompt_lens, decode_lens,
                 with_scores: bool, with_probs: bool):
        self.m, self.rng = model, rng
        self.P = np.asarray(prompt_lens, dtype=np.int64)
        self.D = np.asarray(decode_lens, dtype=np.int64)
        self.n_tok = self.P + self.D
        self.offset = np.concatenate(([0], np.cumsum(self.n_tok)[:-1])).astype(np.int64)
        self.with_scores, self.with_probs = with_scores, with_probs
        ph = [model.phases[n] for n in PHASE_NAMES]            # indexed by phase code
        self.rho = np.stack([p.stickiness for p in ph])        # (2, L)
        self.bins_cdf = np.stack([np.cumsum(p.reuse_bins / p.reuse_bins.sum(axis=1, keepdims=True),
                                            axis=1)[:, :-1] for p in ph])
        self.nu = np.stack([p.repeat_bias for p in ph])        # (2, L)
        self.coupling = np.array([p.coupling for p in ph])     # (2,)
        # log multiplier of a chain expert's weight: -log(1 - c_l), (2, L)
        self.chain_boost = -np.log1p(-np.stack([p.chain_weight for p in ph]))

        self._bin_lo = np.array([lo for lo, _ in REUSE_BINS])
        self._bin_w = np.array([hi - lo + 1 for lo, hi in REUSE_BINS])

    def run(self):
        m, rng = self.m, self.rng
        L, E, k = m.num_layers, m.num_experts, m.top_k
        R = self.P.size
        total = int(self.n_tok.sum())
        T = int(self.n_tok.max()) if R else 0
        # per-request popularity (topic) of each phase, log space: (2, R, L, E)
        logpop = np.empty((2, R, L, E), dtype=np.float64)
        for code, name in enumerate(PHASE_NAMES):
            ph = m.phases[name]
            for l in range(L):
                kap = ph.concentration[l] / ph.popularity[l].sum()
                if math.isinf(kap):
                    logpop[code, :, l] = np.log(np.maximum(ph.popularity[l], 1e-300))
                else:
                    logpop[code, :, l] = np.log(np.maximum(rng.dirichlet(
                        np.maximum(kap * ph.popularity[l], 1e-3), size=R), 1e-300))
        out = np.zeros((total, L, k), dtype=np.int32)
        use_chain = L > 1 and bool((self.chain_boost > 0).any())
        cbank = m.chain_bank
        use_reuse = bool((self.rho > 0).any())
        biased = bool((self.nu != 0).any())
        used = np.zeros((R, L, E), dtype=bool) if biased else None
        scores = np.zeros((total, L, k), dtype=np.float32) if self.with_scores else None
        probs = np.zeros((total, L, E), dtype=np.float16) if self.with_probs else None
        rows = np.arange(R)
        lay = np.arange(L)[None, :, None]
        for t in range(T):
            alive = rows[t < self.n_tok]
            if alive.size == 0:
                break
            n = alive.size
            pos = self.offset[alive] + t
            code = (t >= self.P[alive]).astype(np.int64)         # 0 prefill, 1 decode
            logq = logpop[code, alive]                            # (n, L, E)
            if biased:
                logq = logq - self.nu[code][:, :, None] * used[alive]
            cand = []
            if use_reuse and t > 0:
                shared = rng.random((3, n, 1, k))
                u = rng.random((3, n, L, k))
                cpl = self.coupling[code]
                if cpl.any():
                    coupled = rng.random((n, L, k)) < cpl[:, None, None]
                    u = np.where(coupled[None], shared, u)
                b = (u[1][..., None] > self.bins_cdf[code][:, :, None, :]).sum(-1)
                d = np.minimum(self._bin_lo[b] + (u[2] * self._bin_w[b]).astype(np.int64), t)
                src = out[pos[:, None, None] - d, lay, rng.integers(0, k, size=(n, L, k))]
                cand.append(np.where(u[0] < self.rho[code][:, :, None], src, -1))
            if use_chain:
                chain = cbank[rng.integers(0, cbank.shape[0], size=n)]   # (n, L, k)
                mark = np.zeros((n, L, E), dtype=bool)
                np.put_along_axis(mark, chain, True, axis=2)
                logq = logq + mark * self.chain_boost[code][:, :, None]
            chosen = self._combine(rng, cand, logq, n, L, k)
            if t < len(m.prefix) and m.prefix[t]:
                bank = m.prefix[t]
                cum = np.cumsum([p for p, _ in bank])
                j = np.searchsorted(cum, rng.random(n), side="right")   # == len(bank): none
                hit = j < len(bank)
                if hit.any():
                    pats = np.stack([np.asarray(ex) for _p, ex in bank])   # (B, L, k)
                    chosen = chosen.copy()
                    chosen[hit] = pats[j[hit]]
            out[pos] = chosen
            if biased:
                used[alive[:, None, None], lay, chosen] = True
            if self.with_scores or self.with_probs:
                for c in (PREFILL, DECODE):
                    sel = code == c
                    if sel.any():
                        self._gate(m.phases[PHASE_NAMES[c]].gate, pos[sel], chosen[sel],
                                   scores, probs)
        return out, scores, probs

    @staticmethod
    def _combine(rng, cand, logq: np.ndarray, n: int, L: int, k: int) -> np.ndarray:
        """k distinct experts per (row, layer): reuse candidates, repeats dropped, then fresh
        draws from ``logq``; random slot order."""
        E = logq.shape[2]
        flat_q = logq.reshape(n * L, E)
        if not cand:
            chosen = _gumbel_topk(rng, flat_q, k).reshape(n, L, k)
        else:
            c = (np.concatenate(cand, axis=2) if len(cand) > 1 else cand[0]).reshape(n * L, -1)
            mm = c.shape[1]
            earlier = np.tril(np.ones((mm, mm), dtype=bool), -1)
            dup = ((c[:, :, None] == c[:, None, :]) & earlier[None]).any(axis=2)
            valid = (c >= 0) & ~dup
            order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
            chosen = np.take_along_axis(c, order, axis=1)
            n_kept = np.minimum(valid.sum(axis=1), k)
            if n_kept.min() < k:
                q = flat_q.copy()
                rr, cc = np.nonzero(chosen >= 0)
                q[rr, chosen[rr, cc]] = -np.inf
                fresh = _gumbel_topk(rng, q, k)
                r2, c2 = np.nonzero(np.arange(k)[None, :] < (k - n_kept)[:, None])
                chosen[r2, n_kept[r2] + c2] = fresh[r2, c2]
            chosen = chosen.reshape(n, L, k)
        perm = np.argsort(rng.random((n, L, k)), axis=2)
        return np.take_along_axis(chosen, perm, axis=2)

    def _gate(self, g: GateModel, pos: np.ndarray, chosen: np.ndarray, scores, probs) -> None:
        """Gate scores (and router probabilities) of ``chosen`` (n, L, k), best first."""
        rng, m = self.rng, self.m
        E, k = m.num_experts, m.top_k
        n, L = chosen.shape[:2]
        ch = chosen.reshape(n * L, k).astype(np.int64)
        N = n * L
        p = None
        if g.kind == "logits":
            z = rng.normal(size=(N, E)) * g.sigma
            zs = -np.sort(-z, axis=1)
            logits = np.empty((N, E))
            others = np.ones((N, E), dtype=bool)
            np.put_along_axis(others, ch, False, axis=1)
            np.put_along_axis(logits, ch, zs[:, :k], axis=1)
            rest = zs[:, k:]
            rest = np.take_along_axis(rest, np.argsort(rng.random(rest.shape), axis=1), axis=1)
            logits[others] = rest.ravel()
            p = np.exp((logits - logits.max(axis=1, keepdims=True)) / g.temperature)
            p /= p.sum(axis=1, keepdims=True)
            sc = np.take_along_axis(p, ch, axis=1)
        else:
            top1 = _quantile_draw(rng, g.top1_share, N)
            if k > 1:
                split = rng.dirichlet(np.maximum(np.asarray(g.rest_proportions) * g.rest_concentration,
                                                 1e-3), size=N)
                rest = -np.sort(-(split * (1.0 - top1)[:, None]), axis=1)
                top1 = np.maximum(top1, rest[:, 0])
                sc = np.concatenate([top1[:, None], rest], axis=1)
                sc /= sc.sum(axis=1, keepdims=True)
            else:
                sc = np.ones((N, 1))
            mass = np.ones(N) if g.topk_mass is None else _quantile_draw(rng, g.topk_mass, N)
            sc = sc * mass[:, None]
            if probs is not None:
                # the remaining mass over the other experts, each below the k-th score
                p = np.zeros((N, E))
                np.put_along_axis(p, ch, sc, axis=1)
                others = np.ones((N, E), dtype=bool)
                np.put_along_axis(others, ch, False, axis=1)
                if E > k:
                    w = rng.dirichlet(np.ones(E - k), size=N) * (1.0 - mass)[:, None]
                    p[others] = np.minimum(w, sc[:, -1:]).ravel()
                p /= p.sum(axis=1, keepdims=True)
        if probs is not None:
            probs[pos] = p.reshape(n, L, E)
        if scores is not None:
            if m.norm_topk:
                sc = sc / sc.sum(axis=1, keepdims=True)
            scores[pos] = sc.reshape(n, L, k)


def resolve_lengths(model: RoutingModel, requests: int | None, prompt_len: int | None,
                    decode_len: int | None, len_jitter: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Per-request (prompt, decode) lengths: explicit values (with optional jitter), or the
    fitted model's own request lengths, cycled in order (so ``requests`` = the source's count
    reproduces its length and phase mix exactly)."""
    if prompt_len is None and decode_len is None and model.lengths:
        n = requests if requests is not None else len(model.lengths)
        if n < 1:
            raise ConfigError(f"must be >= 1, got {n}", key="requests")
        pairs = [model.lengths[i % len(model.lengths)] for i in range(n)]
        return (np.array([p for p, _ in pairs], dtype=np.int64),
                np.array([d for _, d in pairs], dtype=np.int64))
    if requests is None or requests < 1:
        raise ConfigError(f"must be >= 1, got {requests}", key="requests")
    if prompt_len is None or decode_len is None:
        raise ConfigError("give both prompt and decode lengths (the model records no lengths)",
                          key="prompt_len/decode_len")
    if prompt_len < 0 or decode_len < 0 or prompt_len + decode_len < 1:
        raise ConfigError("prompt_len and decode_len must be >= 0 and not both 0",
                          key="prompt_len/decode_len")
    if not 0 <= len_jitter < 1:
        raise ConfigError(f"must be in [0, 1), got {len_jitter}", key="len_jitter")

    def lengths(mean: int) -> np.ndarray:
        if len_jitter == 0 or mean == 0:
            return np.full(requests, mean, dtype=np.int64)
        lo, hi = max(0, int(round(mean * (1 - len_jitter)))), int(round(mean * (1 + len_jitter)))
        return rng.integers(lo, hi + 1, size=requests)

    P, D = lengths(prompt_len), lengths(decode_len)
    D[(P + D) == 0] = 1
    return P, D


def sample_arrays(model: RoutingModel, P: np.ndarray, D: np.ndarray, seed: int, *,
                  scores: bool = True, router_probs: bool = False, progress=None):
    """Yield (w0, w1, experts, scores, probs) per window of requests [w0, w1), the arrays
    ragged over the window's requests in their original order; ``progress(tokens)`` after
    each chunk sampled."""
    model.validate()
    lens = P + D
    window_parts: dict = {}
    for w0, w1, idx in chunks(lens, model.num_layers * model.top_k):
        crng = np.random.default_rng([seed, int(idx[0])])
        ex, sc, pr = ChunkSampler(model, crng, P[idx], D[idx], scores, router_probs).run()
        if progress is not None:
            progress(int(lens[idx].sum()))
        offs = np.concatenate(([0], np.cumsum(lens[idx])))
        parts = window_parts.setdefault((w0, w1), {})
        for j, r in enumerate(idx.tolist()):
            a, b = offs[j], offs[j + 1]
            parts[r] = (ex[a:b], None if sc is None else sc[a:b], None if pr is None else pr[a:b])
        if len(parts) == w1 - w0:
            del window_parts[(w0, w1)]
            order = range(w0, w1)
            yield (w0, w1, np.concatenate([parts[r][0] for r in order]),
                   None if sc is None else np.concatenate([parts[r][1] for r in order]),
                   None if pr is None else np.concatenate([parts[r][2] for r in order]))


def generate(model: RoutingModel, path: str | Path, *, requests: int | None = None,
             prompt_len: int | None = None, decode_len: int | None = None, seed: int = 0,
             len_jitter: float = 0.0, arrival_rate: float | None = None, scores: bool = True,
             router_probs: bool = False, trace_model: str | None = None,
             quiet: bool = True) -> dict[str, Any]:
    """Stream a synthetic trace to ``path``; returns a small report (tokens, accesses).
    ``quiet=False`` draws a progress bar over the tokens (on a terminal).

    Lengths: ``prompt_len`` / ``decode_len`` per request (uniform in ``[(1-j)x, (1+j)x]`` for
    ``len_jitter`` j), or, when both are None, the fitted model's recorded request lengths.
    ``arrival_rate`` (requests/s) records Poisson arrival times in the trace.
    """
    from ..config.strict import check_arg
    check_arg(arrival_rate, "arrival_rate", above=0, optional=True)
    seed = check_arg(seed, "seed", integer=True, min=0)
    model.validate()
    rng = np.random.default_rng(seed)
    P, D = resolve_lengths(model, requests, prompt_len, decode_len, len_jitter, rng)
    n = P.size
    arrivals = None
    if arrival_rate:
        gaps = rng.exponential(1.0 / arrival_rate, size=n)
        arrivals = {i: float(t) for i, t in enumerate(np.cumsum(gaps) - gaps[0])}
    meta = TraceMeta(model=trace_model or model.model, num_layers=model.num_layers,
                     num_experts=model.num_experts, top_k=model.top_k, source=model.source,
                     notes={"generator": "simulator.traces.synthetic", "seed": seed,
                            "requests": int(n), "prompt_len": prompt_len if prompt_len is not None
                            else "model lengths", "decode_len": decode_len if decode_len is not None
                            else "model lengths", "len_jitter": len_jitter,
                            **{k: v for k, v in to_plain(model.notes, nonfinite_as_none=False).items() if k == "knobs"}})
    L, k = model.num_layers, model.top_k
    tokens = 0
    from ..progress import bar
    with bar(int((P + D).sum()), desc="trace synth", unit="tok", quiet=quiet) as pb, \
            TraceWriter(path, meta, list(range(n)), arrival_s=arrivals, has_scores=scores,
                        probs_dtype=np.float16 if router_probs else None) as w:
        for c0, c1, ex, sc, pr in sample_arrays(model, P, D, seed, scores=scores,
                                                router_probs=router_probs,
                                                progress=pb.update):
            lens = (P + D)[c0:c1]
            rid = np.repeat(np.arange(c0, c1), lens)
            tok = np.concatenate([np.arange(x) for x in lens])
            ph = np.concatenate([(np.arange(p + d) >= p) for p, d in zip(P[c0:c1], D[c0:c1])]).astype(np.int8)
            for a in range(0, rid.size, WRITE_TOKENS):
                b = a + WRITE_TOKENS
                w.write(rid[a:b], tok[a:b], ph[a:b], ex[a:b], None if sc is None else sc[a:b],
                        None if pr is None else pr[a:b])
            tokens += int(lens.sum())
            del ex, sc, pr
    return {"path": str(path), "requests": int(n), "tokens": tokens,
            "prefill_tokens": int(P.sum()), "decode_tokens": int(D.sum()),
            "accesses": tokens * L * k}
