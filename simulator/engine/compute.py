"""Roofline compute model (DESIGN §3): time = max(FLOPs / peak, bytes / memory bandwidth).

Each *operation* of an iteration is one roofline term; operations run back to back on the
compute unit. With P = bytes per weight, F = peak FLOP/s at the weight precision (x compute
efficiency), B = read bandwidth of the local memory, h = hidden, E = experts, n = tokens in
the iteration, A = attention parameters per layer, Pe / Ps = parameters of one routed expert /
of a layer's shared experts, c_j = context of token j (its position + 1):

* attention of one full-attention layer:
  ``max((2·A·n + a·Σ_j c_j) / F, (A·P + KV_read + n·kv) / B)`` where ``a`` = context FLOPs per
  token per cached position (model spec) and ``KV_read`` = KV bytes of every sequence's
  context read once (prefill) or once per token (decode); linear-attention layers of hybrid
  models drop the context terms;
* MoE block of a layer whose tokens make ``m`` token→expert assignments over ``u`` distinct
  experts: ``max((2·Pe·m + 2·(Ps + h·E)·n) / F, (Pe·P·u + (Ps + h·E)·P) / B)`` — one grouped
  kernel for all resident experts, shared experts and the router;
* an expert that arrives late (fetched after a miss) runs as its own kernel:
  ``max(2·Pe·m_i / F, Pe·P / B)``;
* each dense layer: attention plus ``max(2·Pd·n / F, Pd·P / B)`` with Pd = dense FFN params;
* LM head, once per iteration for the ``o`` tokens that emit logits:
  ``max(2·h·V·o / F, h·V·P / B)``.

With mixed precision (policies/mixed_precision), an expert's weight bytes ``Pe·P`` become the
bytes of the copy it runs from (``moe_weights``, ``expert_weights``); FLOPs are unchanged.

FLOPs and bytes read from local memory are accumulated for the energy model.
"""
from __future__ import annotations

from ..hardware.profiles import ComputeSpec, MemorySpec
from ..models.spec import ModelSpec
from ..units import precision_bytes


class ComputeModel:
    def __init__(self, model: ModelSpec, compute: ComputeSpec, local: MemorySpec,
                 precision: str, kv_bytes_per_token_layer: float):
        self.P = precision_bytes(precision)
        self.F = compute.flops_for(precision)
        self.B = local.read_bw
        m = model
        self.A = float(m.attention_params_per_layer)
        self.Pe = float(m.params_per_expert)
        self.expert_weight_bytes = self.Pe * self.P
        self.moe_fixed_params = float(m.shared_params_per_layer + m.router_params_per_layer)
        self.Pd = float(m.dense_ffn_params)
        self.head_params = float(m.hidden * m.vocab)
        self.ctx_flops = m.attention_context_flops_per_token(1.0)
        self.kv_bytes = float(kv_bytes_per_token_layer)   # from the KV policy
        every = m.attention.full_attention_every
        # which MoE layers are full-attention (hybrid models: the last of every group)
        self.full_attention = [((l + m.dense_layers) % every) == every - 1 or every == 1
                               for l in range(m.moe_layers)]
        n_dense_full = sum(1 for l in range(m.dense_layers) if (l % every) == every - 1 or every == 1)
        self.n_dense_full = n_dense_full
        self.n_dense_linear = m.dense_layers - n_dense_full
        self.flops = [0.0, 0.0]          # per phase
        self.local_bytes = [0.0, 0.0]    # weight + KV bytes read by compute, per phase

    # ------------------------------------------------------------------ per iteration
    def attention(self, n: int, ctx_sum: float, kv_read_tokens: float, phase: int
                  ) -> tuple[float, float]:
        """(full-attention time, linear-attention time) of one layer; does not accumulate."""
        fl_lin = 2.0 * self.A * n
        by_lin = self.A * self.P
        fl_full = fl_lin + self.ctx_flops * ctx_sum
        by_full = by_lin + self.kv_bytes * (kv_read_tokens + n)
        return (max(fl_full / self.F, by_full / self.B), max(fl_lin / self.F, by_lin / self.B))

    def attention_cost(self, n: int, ctx_sum: float, kv_read_tokens: float):
        """FLOPs and bytes of (full, linear) attention layers, for accounting."""
        fl_lin = 2.0 * self.A * n
        by_lin = self.A * self.P
        return ((fl_lin + self.ctx_flops * ctx_sum, by_lin + self.kv_bytes * (kv_read_tokens + n)),
                (fl_lin, by_lin))

    def account(self, phase: int, flops: float, nbytes: float) -> None:
        self.flops[phase] += flops
        self.local_bytes[phase] += nbytes

    def dense_and_head(self, n: int, n_out: int, ctx_sum: float, kv_read_tokens: float,
                       phase: int) -> float:
        """Time of all dense layers plus the LM head for one iteration (accumulates)."""
        (ff, fb), (lf, lb) = self.attention_cost(n, ctx_sum, kv_read_tokens)
        t = 0.0
        dfl, dby = 2.0 * self.Pd * n, self.Pd * self.P
        t += self.n_dense_full * (max(ff / self.F, fb / self.B) + max(dfl / self.F, dby / self.B))
        t += self.n_dense_linear * (max(lf / self.F, lb / self.B) + max(dfl / self.F, dby / self.B))
        dl = self.n_dense_full + self.n_dense_linear
        hfl, hby = 2.0 * self.head_params * n_out, self.head_params * self.P
        t += max(hfl / self.F, hby / self.B)
        self.account(phase, self.n_dense_full * ff + self.n_dense_linear * lf + dl * dfl + hfl,
                     self.n_dense_full * fb + self.n_dense_linear * lb + dl * dby + hby)
        return t

    def moe(self, n: int, assignments: float, unique: int, phase: int) -> float:
        """Grouped MoE kernel over ``unique`` resident experts with ``assignments`` token-
        expert pairs, plus shared experts and router for ``n`` tokens (accumulates)."""
        fl = 2.0 * self.Pe * assignments + 2.0 * self.moe_fixed_params * n
        by = self.expert_weight_bytes * unique + self.moe_fixed_params * self.P
        self.flops[phase] += fl
        self.local_bytes[phase] += by
        return max(fl / self.F, by / self.B)

    def moe_weights(self, n: int, assignments: float, weight_bytes: float, phase: int) -> float:
        """``moe`` when the resident experts' weights are stored at several precisions:
        ``weight_bytes`` is what the grouped kernel reads of them (accumulates)."""
        fl = 2.0 * self.Pe * assignments + 2.0 * self.moe_fixed_params * n
        by = weight_bytes + self.moe_fixed_params * self.P
        self.flops[phase] += fl
        self.local_bytes[phase] += by
        return max(fl / self.F, by / self.B)

    def expert_weights(self, assignments: float, weight_bytes: float, phase: int) -> float:
        """``expert`` for a late expert whose stored copy has ``weight_bytes`` (accumulates)."""
        fl = 2.0 * self.Pe * assignments
        self.flops[phase] += fl
        self.local_bytes[phase] += weight_bytes
        return max(fl / self.F, weight_bytes / self.B)

    def moe_unit_times(self, n: int, umax: int) -> list[float]:
        """``moe(n, u, u)`` for u = 0..umax without accounting: the MoE block's time when each
        of ``u`` resident experts serves one token assignment (decode at small batch), for
        table lookup on the hot path. Account with :meth:`account_moe`."""
        c_fl, c_by = 2.0 * self.moe_fixed_params * n, self.moe_fixed_params * self.P
        fpe, eb, F, B = 2.0 * self.Pe, self.expert_weight_bytes, self.F, self.B
        return [max((fpe * u + c_fl) / F, (eb * u + c_by) / B) for u in range(umax + 1)]

    def unit_expert_time(self) -> float:
        """``expert(1, ·)`` without accounting: a late expert serving one assignment."""
        return max(2.0 * self.Pe / self.F, self.expert_weight_bytes / self.B)

    def account_moe(self, phase: int, n: int, blocks: int, assignments: float, resident: int,
                    late: int) -> None:
        """Accumulate what ``blocks`` MoE blocks of ``n`` tokens timed from the tables above
        did: ``assignments`` over ``resident`` experts in the grouped kernels, and ``late``
        experts of one assignment each run on their own."""
        fpe, eb = 2.0 * self.Pe, self.expert_weight_bytes
        self.flops[phase] += fpe * (assignments + late) + 2.0 * self.moe_fixed_params * n * blocks
        self.local_bytes[phase] += eb * (resident + late) + self.moe_fixed_params * self.P * blocks

    def experts_serial(self, assignments, phase: int) -> float:
        """Total time of late experts run back to back, one kernel each (accumulates)."""
        fpe, eb, F, B = 2.0 * self.Pe, self.expert_weight_bytes, self.F, self.B
        floor = eb / B
        t = 0.0
        total = 0.0
        n = 0
        for m in assignments:
            fl = fpe * m
            total += fl
            n += 1
            x = fl / F
            t += x if x > floor else floor
        self.flops[phase] += total
        self.local_bytes[phase] += eb * n
        return t

    def expert(self, assignments: float, phase: int) -> float:
        """One late expert's own kernel (accumulates)."""
        fl = 2.0 * self.Pe * assignments
        by = self.expert_weight_bytes
        self.flops[phase] += fl
        self.local_bytes[phase] += by
        return max(fl / self.F, by / self.B)
