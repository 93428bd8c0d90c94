"""``--peers``: transformers on PyTorch (CPU, fp32, same thread count) on the very checkpoints
the bundle was exported from, in the same run as stagedx.

Three peers, all greedy, all producing exactly ``max_new_tokens`` tokens (EOS ignored through
``min_new_tokens``): plain ``generate``, assisted generation with the draft checkpoint as
``assistant_model``, and prompt-lookup decoding (``prompt_lookup_num_tokens``). Inputs are
tokenised by the bundle's own tokenizer, so every method sees the same token ids.

This is the only module of stagedx that imports torch, and only when a peer is built.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import StagedxError
from .prompts import Prompt

PEER_METHODS = ("hf-greedy", "hf-assisted", "hf-prompt-lookup")
PROMPT_LOOKUP_TOKENS = 10


def resolve_checkpoint(source: str, bundle: Path) -> Path:
    """The manifest records the checkpoint path used at export time: absolute, relative to the
    working directory, or relative to the bundle (tried in that order)."""
    p = Path(source)
    for cand in [p] if p.is_absolute() else [Path.cwd() / p, Path(bundle) / p, Path(bundle).parent / p]:
        if (cand / "config.json").is_file():
            return cand
    raise StagedxError(
        f"--peers needs the checkpoint the bundle was exported from, recorded as {source!r}; "
        "not found (run from the folder you exported in)"
    )


class PeerModels:
    """Loads the oracle and draft checkpoints once, fp32, CPU, ``threads`` torch threads."""

    def __init__(self, manifest, bundle: Path, threads: int):
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError as exc:
            raise StagedxError("--peers needs torch and transformers: pip install 'stagedx[export]'") from exc
        torch.set_num_threads(int(threads))
        self.torch = torch
        self.checkpoints = {
            role: resolve_checkpoint(manifest.models[role].source["checkpoint"], bundle) for role in ("oracle", "draft")
        }

        def load(role: str):
            return AutoModelForCausalLM.from_pretrained(self.checkpoints[role], dtype=torch.float32).eval()

        self.oracle, self.draft = load("oracle"), load("draft")
        self.eos = manifest.tokenizer.eos_token_id
        self.threads = int(threads)


class PeerMethod:
    family = "transformers"

    def __init__(self, name: str, models: PeerModels, tokenizer, max_new_tokens: int):
        if name not in PEER_METHODS:
            raise StagedxError(f"unknown peer {name!r}")
        self.name, self.models, self.tokenizer, self.max_new_tokens = name, models, tokenizer, max_new_tokens

    def supports(self, sampling: str) -> bool:
        return sampling == "greedy"

    def _kwargs(self) -> dict:
        m = self.models
        kw = dict(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=m.eos if m.eos is not None else 0,
        )
        if self.name == "hf-assisted":
            kw["assistant_model"] = m.draft
        elif self.name == "hf-prompt-lookup":
            kw["prompt_lookup_num_tokens"] = PROMPT_LOOKUP_TOKENS
        return kw

    def run(self, prompt: Prompt, sampling: str, seed: int) -> dict:
        torch = self.models.torch
        ids = torch.tensor([list(self.tokenizer.encode(prompt.text))], dtype=torch.long)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.models.oracle.generate(ids, attention_mask=mask, **self._kwargs())
            wall = time.perf_counter() - t0
        return {"new_tokens": int(out.shape[1] - ids.shape[1]), "wall_s": wall, "prompt_tokens": int(ids.shape[1])}


def make_peers(gen, bundle: Path, threads: int, max_new_tokens: int) -> list[PeerMethod]:
    models = PeerModels(gen.manifest, Path(bundle), threads)
    return [PeerMethod(name, models, gen.tokenizer, max_new_tokens) for name in PEER_METHODS]


def summarize_peers(peer_records: list, stagedx_records: list) -> dict:
    """Each peer's tokens/s as a ratio to stagedx's baseline and staged greedy runs of the
    same run, on the same prompts; plus the sanity line."""
    from .metrics import latency_summary, ratio, tokens_per_second

    greedy = [r for r in stagedx_records if r["sampling"] == "greedy"]
    ref = {m: tokens_per_second([r for r in greedy if r["method"] == m]) for m in ("baseline", "staged")}
    out = {"methods": {}, "stagedx_tokens_per_s": ref}
    for name in PEER_METHODS:
        rs = [r for r in peer_records if r["method"] == name]
        if not rs:
            continue
        tps = tokens_per_second(rs)
        out["methods"][name] = {
            "runs": len(rs),
            "new_tokens": int(sum(r["new_tokens"] for r in rs)),
            "wall_s": float(sum(r["wall_s"] for r in rs)),
            "tokens_per_s": tps,
            "latency_ms_per_token": latency_summary(rs),
            "ratio_to_stagedx_baseline": ratio(tps, ref["baseline"]),
            "ratio_to_stagedx_staged": ratio(tps, ref["staged"]),
        }
    out["sanity"] = sanity_line(ref["baseline"], out["methods"].get("hf-greedy", {}).get("tokens_per_s"))
    return out


def sanity_line(stagedx_baseline: float, hf_greedy: float | None) -> str:
    if hf_greedy is None or stagedx_baseline != stagedx_baseline:
        return ""
    if stagedx_baseline < hf_greedy:
        return (
            f"!!!!! SANITY CHECK FAILED: stagedx baseline ({stagedx_baseline:.1f} tokens/s) is SLOWER than "
            f"transformers' plain greedy generate ({hf_greedy:.1f} tokens/s) on the same checkpoint and threads: "
            "the runtime has overhead to fix "
            "before any speedup over baseline means anything !!!!!"
        )
    return (
        f"sanity: stagedx baseline {stagedx_baseline:.1f} tokens/s >= transformers greedy {hf_greedy:.1f} tokens/s (ok)"
    )
