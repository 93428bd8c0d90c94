"""The distillation loss and the oracle/draft agreement metrics of ``stagedx distill``.

Metrics on held-out contexts (teacher-forced text, fp32, no autocast):

- ``kl``: mean per-token KL(p || q) in nats at T=1 over every context position, p the oracle's
  and q the draft's next-token distribution;
- ``top1``: fraction of those positions where both models' most likely tokens agree;
- ``greedy_tokens``: tokens one oracle call yields for a 4-token greedy draft chain: 1 + the
  length of the prefix of the draft's greedy chain that the oracle's greedy choice accepts,
  from each context's end (exact: the draft and the oracle are both run along the chain);
- ``topk_tokens``: the same for a 4-chain drawn from the draft at top-k 50, T=1 and verified
  by speculative sampling: E = 1 + a1 + a1 a2 + a1 a2 a3 + a1 a2 a3 a4 with
  a_i = sum_x min(p_i(x), q_i(x)) the exact acceptance probability at depth i (both
  distributions top-k 50 warped). Given acceptance the accepted token follows
  min(p, q) / a_i; one such path is drawn per context (fixed seed), so the figure is an
  unbiased estimate whose standard error is reported beside it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

CHAIN_DEPTH = 4
SAMPLED_TOPK = 50
KL_ROWS = 8  # contexts per chunk of the [rows, C, V] KL computation


@dataclass(frozen=True)
class Metrics:
    kl: float  # nats per token
    top1: float  # fraction
    greedy_tokens: float  # per oracle call, 4-chain greedy
    topk_tokens: float  # per oracle call, 4-chain top-k 50 (estimate)
    topk_stderr: float
    n_tokens: int  # positions behind kl / top1
    n_contexts: int  # chains behind the tokens-per-call figures

    def as_dict(self) -> dict:
        return asdict(self)


def warp_log_probs(logits, temperature: float = 1.0, top_k: int = 0):
    """log softmax(logits / T) with everything outside the top k at -inf (k = 0: no cut)."""
    import torch

    z = logits.float() / temperature  # [..., V]
    if 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]  # [..., 1]
        z = z.masked_fill(z < kth, float("-inf"))
    return torch.log_softmax(z, dim=-1)


def forward_kl(teacher_logits, student_logits, temperature: float = 1.0, top_k: int = 0):
    """Mean over positions of KL(p_T,k || q_T): the teacher warped as the user will decode,
    the student at the same temperature over the whole vocabulary."""
    import torch

    lp = warp_log_probs(teacher_logits, temperature, top_k)  # [B, T, V]
    lq = torch.log_softmax(student_logits.float() / temperature, dim=-1)  # [B, T, V]
    p = lp.exp()  # [B, T, V]
    per_token = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1)  # [B, T]
    return per_token.mean()


def _kl_top1(lo, ld) -> tuple[float, float]:
    """Sums over positions of KL(p || q) and of argmax agreement, chunked over rows."""
    import torch

    kl = agree = 0.0
    for r in range(0, lo.shape[0], KL_ROWS):
        lp = torch.log_softmax(lo[r : r + KL_ROWS].float(), dim=-1)  # [R, C, V]
        lq = torch.log_softmax(ld[r : r + KL_ROWS].float(), dim=-1)  # [R, C, V]
        kl += (lp.exp() * (lp - lq)).sum().item()
        agree += (lp.argmax(-1) == lq.argmax(-1)).sum().item()
    return kl, agree


def _step(model, tokens, past):
    """Logits after feeding ``tokens`` [N, 1] on top of ``past``: ([N, V], new past)."""
    out = model(input_ids=tokens, past_key_values=past, use_cache=True)
    return out.logits[:, -1], out.past_key_values


def _chain(oracle, draft, first, mode: str, gen):
    """Per-context tokens per oracle call for a CHAIN_DEPTH chain; ``first`` = (oracle logits,
    draft logits, oracle past, draft past) at the contexts' ends."""
    import torch

    lo, ld, po, pd = first
    alive = torch.ones(lo.shape[0], dtype=torch.float64, device=lo.device)  # [N]
    total = torch.ones_like(alive)  # [N]
    for depth in range(CHAIN_DEPTH):
        if mode == "greedy":
            tok = ld.argmax(-1)  # [N]
            accept = (lo.argmax(-1) == tok).double()  # [N]
        else:
            pw = warp_log_probs(lo, 1.0, SAMPLED_TOPK).exp()  # [N, V]
            qw = warp_log_probs(ld, 1.0, SAMPLED_TOPK).exp()  # [N, V]
            both = torch.minimum(pw, qw)  # [N, V]
            accept = both.sum(-1).double()  # [N]
            weights = torch.where(accept[:, None] > 1e-12, both, qw)  # [N, V]
            tok = torch.multinomial(weights, 1, generator=gen)[:, 0]  # [N]
        alive = alive * accept
        total = total + alive
        if depth + 1 < CHAIN_DEPTH:
            lo, po = _step(oracle, tok[:, None], po)
            ld, pd = _step(draft, tok[:, None], pd)
    return total


def evaluate(oracle, draft, contexts: np.ndarray, seed: int = 0) -> Metrics:
    """The metrics above on ``contexts`` [N, C] (held-out token windows)."""
    import torch

    device = next(oracle.parameters()).device
    x = torch.from_numpy(contexts).to(device)  # [N, C]
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad(), warnings.catch_warnings():
        # newer transformers rename past_key_values (same semantics); older ones lack the new name
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        o = oracle(input_ids=x, use_cache=True)
        d = draft(input_ids=x, use_cache=True)
        kl, agree = _kl_top1(o.logits, d.logits)
        greedy = _chain(
            oracle, draft, (o.logits[:, -1], d.logits[:, -1], o.past_key_values, d.past_key_values), "greedy", gen
        )
        del o, d
        o = oracle(input_ids=x, use_cache=True, logits_to_keep=1)
        d = draft(input_ids=x, use_cache=True, logits_to_keep=1)
        sampled = _chain(
            oracle, draft, (o.logits[:, -1], d.logits[:, -1], o.past_key_values, d.past_key_values), "topk", gen
        )
    n_pos = x.numel()
    n = x.shape[0]
    stderr = sampled.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return Metrics(
        kl=kl / n_pos,
        top1=agree / n_pos,
        greedy_tokens=greedy.mean().item(),
        topk_tokens=sampled.mean().item(),
        topk_stderr=stderr,
        n_tokens=n_pos,
        n_contexts=n,
    )
