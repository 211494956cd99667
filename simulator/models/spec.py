"""MoE model specifications: shapes from the models' public configs, and what follows from them.

A spec holds only what the public ``config.json`` says (layers, hidden size, experts, top-k,
attention shape, ...). Everything the simulator needs — bytes per expert at a precision, FLOPs
per token, KV bytes per token — is *derived* by the functions below, so a test can recompute
any of it by hand. The catalog lives in ``catalog.yaml`` next to this file, each model with its
sources; users add models with ``model: {file: my_model.yaml}`` in a run config.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from ..config import yamlload
from ..errors import ModelSpecError
from ..units import precision_bytes

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")


@dataclass(frozen=True, kw_only=True)
class AttentionSpec:
    """Attention shape of one layer. ``kind``: mha | gqa | mla.

    MLA (DeepSeek) caches a compressed latent of ``kv_lora_rank + qk_rope_head_dim`` values per
    token; decode attention is modelled in the weight-absorbed form that reads only the latent.
    ``full_attention_every`` > 1 marks hybrid models (e.g. Qwen3.5-MoE: 3 linear-attention
    layers per full-attention layer); only full-attention layers keep a KV cache and pay the
    context-length term, and linear-attention layers are costed as plain projections.
    """

    kind: str
    heads: int
    kv_heads: int = 0
    head_dim: int = 0
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    full_attention_every: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("mha", "gqa", "mla"):
            raise ModelSpecError(f"attention.kind must be mha, gqa or mla, got {self.kind!r}")
        if self.kind == "mla":
            if min(self.kv_lora_rank, self.qk_rope_head_dim, self.qk_nope_head_dim,
                   self.v_head_dim) <= 0:
                raise ModelSpecError("MLA attention needs kv_lora_rank, qk_rope_head_dim, "
                                     "qk_nope_head_dim and v_head_dim > 0")
        elif self.kv_heads <= 0 or self.head_dim <= 0:
            raise ModelSpecError(f"{self.kind} attention needs kv_heads and head_dim > 0")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str
    display_name: str
    hidden: int
    layers: int                       # all decoder layers (MoE + dense)
    moe_layers: int                   # layers with a routed-expert FFN (what a trace covers)
    num_experts: int                  # routed experts per MoE layer
    top_k: int
    expert_intermediate: int          # FFN width of one routed expert
    attention: AttentionSpec
    vocab: int
    ffn_kind: str = "swiglu"          # swiglu (3 matrices) | relu (2 matrices)
    shared_experts: int = 0
    shared_expert_intermediate: int = 0   # width of *one* shared expert
    dense_intermediate: int = 0       # FFN width of the dense (non-MoE) layers
    tied_embeddings: bool = False
    native_precision: str = "bf16"
    norm_topk_prob: bool = True
    aliases: tuple[str, ...] = ()
    notes: str = ""
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in ("hidden", "layers", "moe_layers", "num_experts", "top_k",
                  "expert_intermediate", "vocab"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise ModelSpecError(f"model '{self.name}': {f} must be a positive integer, got {v!r}")
        if self.moe_layers > self.layers:
            raise ModelSpecError(f"model '{self.name}': moe_layers {self.moe_layers} > layers {self.layers}")
        if self.top_k > self.num_experts:
            raise ModelSpecError(f"model '{self.name}': top_k {self.top_k} > num_experts {self.num_experts}")
        if self.ffn_kind not in ("swiglu", "relu"):
            raise ModelSpecError(f"model '{self.name}': ffn_kind must be swiglu or relu")
        if self.dense_layers and self.dense_intermediate <= 0:
            raise ModelSpecError(f"model '{self.name}': has {self.dense_layers} dense layers but "
                                 "dense_intermediate is not set")

    # ------------------------------------------------------------------ parameters
    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers

    @property
    def ffn_matrices(self) -> int:
        return 3 if self.ffn_kind == "swiglu" else 2

    @property
    def params_per_expert(self) -> int:
        return self.ffn_matrices * self.hidden * self.expert_intermediate

    @property
    def shared_params_per_layer(self) -> int:
        return self.shared_experts * self.ffn_matrices * self.hidden * self.shared_expert_intermediate

    @property
    def router_params_per_layer(self) -> int:
        return self.hidden * self.num_experts

    @property
    def dense_ffn_params(self) -> int:
        return self.ffn_matrices * self.hidden * self.dense_intermediate

    @property
    def attention_params_per_layer(self) -> int:
        a, h = self.attention, self.hidden
        if a.kind == "mla":
            qk = a.qk_nope_head_dim + a.qk_rope_head_dim
            q = (h * a.q_lora_rank + a.q_lora_rank * a.heads * qk) if a.q_lora_rank else h * a.heads * qk
            kv = h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank * a.heads * (
                a.qk_nope_head_dim + a.v_head_dim)
            o = a.heads * a.v_head_dim * h
            return q + kv + o
        return h * a.heads * a.head_dim + 2 * h * a.kv_heads * a.head_dim + a.heads * a.head_dim * h

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def total_params(self) -> int:
        moe = self.moe_layers * (self.num_experts * self.params_per_expert
                                 + self.shared_params_per_layer + self.router_params_per_layer)
        dense = self.dense_layers * self.dense_ffn_params
        return moe + dense + self.layers * self.attention_params_per_layer + self.embedding_params

    @property
    def active_params(self) -> int:
        moe = self.moe_layers * (self.top_k * self.params_per_expert
                                 + self.shared_params_per_layer + self.router_params_per_layer)
        dense = self.dense_layers * self.dense_ffn_params
        return moe + dense + self.layers * self.attention_params_per_layer + self.embedding_params

    # ------------------------------------------------------------------ bytes
    def expert_bytes(self, precision: str | None = None) -> int:
        """Bytes of one routed expert's weights at ``precision`` (default: native)."""
        return int(round(self.params_per_expert * precision_bytes(precision or self.native_precision)))

    def non_expert_bytes(self, precision: str | None = None) -> int:
        """Weights that are always resident on the compute unit: attention, shared experts,
        routers, dense layers, embeddings and LM head."""
        p = precision_bytes(precision or self.native_precision)
        params = (self.layers * self.attention_params_per_layer
                  + self.moe_layers * (self.shared_params_per_layer + self.router_params_per_layer)
                  + self.dense_layers * self.dense_ffn_params + self.embedding_params)
        return int(round(params * p))

    @property
    def kv_layers(self) -> int:
        """Layers that keep a KV cache (all, unless the model is a linear/full hybrid)."""
        return -(-self.layers // self.attention.full_attention_every)

    def kv_bytes_per_token_per_layer(self, precision: str = "bf16") -> float:
        a = self.attention
        p = precision_bytes(precision)
        if a.kind == "mla":
            return (a.kv_lora_rank + a.qk_rope_head_dim) * p
        return 2 * a.kv_heads * a.head_dim * p

    def kv_bytes_per_token(self, precision: str = "bf16") -> float:
        return self.kv_layers * self.kv_bytes_per_token_per_layer(precision)

    # ------------------------------------------------------------------ FLOPs
    def attention_context_flops_per_token(self, context: float) -> float:
        """FLOPs of the score and value products of one query token over ``context`` cached
        tokens in one full-attention layer (2 FLOPs per multiply-add)."""
        a = self.attention
        if a.kind == "mla":
            # absorbed form: scores over the latent + rope part, values over the latent
            return 2.0 * a.heads * context * ((a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank)
        return 2.0 * a.heads * context * (a.head_dim + a.head_dim)

    def expert_flops_per_token(self) -> float:
        return 2.0 * self.params_per_expert

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["aliases"] = list(self.aliases)
        d["sources"] = list(self.sources)
        return d


_SPEC_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}
_ATT_FIELDS = {f.name for f in dataclasses.fields(AttentionSpec)}


def spec_from_dict(data: dict[str, Any], *, source: str = "<model>") -> ModelSpec:
    """Build a ModelSpec from YAML data, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ModelSpecError("model spec must be a mapping", source=source)
    unknown = set(data) - _SPEC_FIELDS
    if unknown:
        raise ModelSpecError(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                             f"{', '.join(sorted(_SPEC_FIELDS))}", source=source)
    att = data.get("attention")
    if not isinstance(att, dict):
        raise ModelSpecError("attention must be a mapping", source=source, key="attention")
    bad = set(att) - _ATT_FIELDS
    if bad:
        raise ModelSpecError(f"unknown key(s) {', '.join(sorted(bad))}", source=source,
                             key="attention")
    kw = dict(data)
    try:
        kw["attention"] = AttentionSpec(**att)
        kw["aliases"] = tuple(kw.get("aliases", ()))
        kw["sources"] = tuple(kw.get("sources", ()))
        kw.setdefault("display_name", kw.get("name", "?"))
        return ModelSpec(**kw)
    except TypeError as exc:
        raise ModelSpecError(str(exc), source=source) from None
    except ModelSpecError as exc:
        raise ModelSpecError(str(exc), source=source) from None


def _norm(name: str) -> str:
    name = name.strip().lower()
    if "/" in name:
        name = name.rsplit("/", 1)[1]
    return name.replace("_", "-")


@lru_cache(maxsize=None)
def catalog() -> dict[str, ModelSpec]:
    with open(CATALOG_PATH) as fh:
        raw = yamlload.load(fh) or {}
    specs = {}
    for entry in raw.get("models", []):
        spec = spec_from_dict(entry, source=f"{CATALOG_PATH.name}:{entry.get('name', '?')}")
        if spec.name in specs:
            raise ModelSpecError(f"model '{spec.name}' defined twice", source=str(CATALOG_PATH))
        specs[spec.name] = spec
    return specs


def find_model(name: str) -> ModelSpec | None:
    """Look a model up by name or alias (case-insensitive; HF ``org/`` prefixes ignored)."""
    key = _norm(name)
    for spec in catalog().values():
        if key == _norm(spec.name) or key in (_norm(a) for a in spec.aliases):
            return spec
    return None


def get_model(name: str, *, key: str = "model.name") -> ModelSpec:
    spec = find_model(name)
    if spec is None:
        raise ModelSpecError(f"unknown model '{name}'; known: {', '.join(sorted(catalog()))} "
                             "(or give model.file: path/to/spec.yaml)", key=key)
    return spec


def load_model_file(path: str | Path) -> ModelSpec:
    try:
        with open(path) as fh:
            data = yamlload.load(fh)
    except OSError as exc:
        raise ModelSpecError(f"cannot read model file: {exc.strerror}", source=str(path)) from None
    except yaml.YAMLError as exc:
        raise ModelSpecError(yamlload.error_text(exc), source=str(path)) from None
    return spec_from_dict(data, source=str(path))


def check_trace_matches(spec: ModelSpec, meta, *, source: str = "<trace>") -> None:
    """A trace names its model; its shape (experts, MoE layers, top-k) must agree with the
    spec. Used by ``moesim run`` and ``moesim trace validate``.

    A different top-k is an error, not a silent variant: a top-1 trace on a top-2 model
    halves the experts per token (TPOT, traffic, hit rates). To simulate such a variant on
    purpose, give ``model.file``: a spec with the trace's ``top_k``."""
    from ..errors import TraceError
    if meta.num_experts != spec.num_experts:
        raise TraceError(f"trace has {meta.num_experts} experts per layer but model "
                         f"'{spec.name}' has {spec.num_experts}", source=source,
                         field="metadata.num_experts")
    if meta.num_layers != spec.moe_layers:
        raise TraceError(f"trace has {meta.num_layers} MoE layers but model '{spec.name}' has "
                         f"{spec.moe_layers}", source=source, field="metadata.num_layers")
    if meta.top_k != spec.top_k:
        raise TraceError(f"trace has top_k={meta.top_k} but model '{spec.name}' routes "
                         f"top-{spec.top_k} (tokens would use {meta.top_k} experts per layer "
                         f"instead of {spec.top_k}); use a top-{spec.top_k} trace, or model.file: "
                         f"a spec with top_k: {meta.top_k} to simulate that variant",
                         source=source, field="metadata.top_k")
