"""``--peers``: other runtimes on the same model, in the same run as stagedx.

Two families (``--peers`` alone runs both; ``--peers transformers`` or ``--peers llama.cpp``
one of them); a family that cannot run here (its package missing, no checkpoint or GGUF
file) is skipped with a note, printed and kept in bench.json:

- ``transformers``: PyTorch (CPU, fp32, same thread count) on the very checkpoints the bundle
  was exported from. Three peers, all greedy, all producing exactly ``max_new_tokens`` tokens
  (EOS ignored through ``min_new_tokens``): plain ``generate``, assisted generation with the
  draft checkpoint as ``assistant_model``, and prompt-lookup decoding
  (``prompt_lookup_num_tokens``).
- ``llama.cpp``: the GGUF file the oracle came from, plain and with prompt lookup, in every
  sampling mode (``llamacpp.py``).

Inputs are tokenised by the bundle's own tokenizer, so every method sees the same token ids.
This is the only module of stagedx that imports torch, and only when a transformers peer is
built.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import StagedxError
from .prompts import Prompt

PEER_METHODS = ("hf-greedy", "hf-assisted", "hf-prompt-lookup")
PEER_FAMILIES = ("transformers", "llama.cpp")
PROMPT_LOOKUP_TOKENS = 10


def parse_peers(spec: str) -> tuple:
    """``""`` -> no peers; ``all`` -> every family; else a comma-separated list of families."""
    names = tuple(v.strip().lower() for v in (spec or "").split(",") if v.strip())
    if "all" in names:
        return PEER_FAMILIES
    bad = [n for n in names if n not in PEER_FAMILIES]
    if bad:
        raise StagedxError(f"unknown --peers {','.join(bad)}: use all or a list of {','.join(PEER_FAMILIES)}")
    return tuple(f for f in PEER_FAMILIES if f in names)


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


def make_peers(gen, req, prompts, echo) -> tuple[list, dict]:
    """The peer methods ``req.peers`` asks for, and a record of each family: what ran it, or
    why it was skipped (also echoed)."""
    from .llamacpp import make_llamacpp_peers, unavailable_reason

    bundle, methods, families = Path(req.bundle), [], {}
    new_tokens = req.cfg.max_new_tokens
    if "transformers" in req.peers:
        try:
            echo("loading transformers peers (PyTorch, CPU, fp32) ...")
            models = PeerModels(gen.manifest, bundle, req.threads)
        except StagedxError as exc:
            families["transformers"] = {"skipped": f"transformers peers skipped: {exc}"}
        else:
            methods += [PeerMethod(name, models, gen.tokenizer, new_tokens) for name in PEER_METHODS]
            families["transformers"] = {"checkpoints": {k: str(v) for k, v in models.checkpoints.items()}}
    if "llama.cpp" in req.peers:
        reason = unavailable_reason(gen.manifest, bundle, req.gguf)
        if reason:
            families["llama.cpp"] = {"skipped": reason}
        else:
            from .llamacpp import gguf_source

            echo("loading llama.cpp peers (llama-cpp-python) ...")
            cpp = make_llamacpp_peers(
                gen, gguf_source(gen.manifest, bundle, req.gguf), req.threads, new_tokens, prompts
            )
            methods += cpp
            families["llama.cpp"] = cpp[0].model.info()
    for fam in families.values():
        if "skipped" in fam:
            echo(fam["skipped"])
    return methods, families


def _peer_cell(rs: list, ref: dict) -> dict:
    from .metrics import decode_tokens_per_second, latency_summary, ratio, tokens_per_oracle_call, tokens_per_second

    tps, dtps = tokens_per_second(rs), decode_tokens_per_second(rs)
    cell = {
        "runs": len(rs),
        "new_tokens": int(sum(r["new_tokens"] for r in rs)),
        "wall_s": float(sum(r["wall_s"] for r in rs)),
        "tokens_per_s": tps,
        "decode_tokens_per_s": dtps if all("time_s" in r for r in rs) else float("nan"),
        "latency_ms_per_token": latency_summary(rs),
        "ratio_to_stagedx_baseline": ratio(tps, ref["baseline"]["tokens_per_s"]),
        "ratio_to_stagedx_staged": ratio(tps, ref["staged"]["tokens_per_s"]),
    }
    if all("time_s" in r for r in rs):
        cell["prefill_s"] = float(sum(r["time_s"]["prefill"] for r in rs))
        cell["decode_ratio_to_stagedx_baseline"] = ratio(dtps, ref["baseline"]["decode_tokens_per_s"])
        cell["decode_ratio_to_stagedx_staged"] = ratio(dtps, ref["staged"]["decode_tokens_per_s"])
    if all("oracle_calls" in r for r in rs):
        cell["tokens_per_oracle_call"] = tokens_per_oracle_call(rs)
    return cell


def summarize_peers(peer_records: list, stagedx_records: list, families: dict | None = None) -> dict:
    """Each peer's tokens/s (and decode tokens/s where it reports its prefill) as a ratio to
    stagedx's baseline and staged runs of the same run and sampling mode, on the same prompts;
    ``methods`` holds the greedy cells; plus the sanity line."""
    from .metrics import decode_tokens_per_second, tokens_per_second

    def ref_for(sampling: str) -> dict:
        rs = [r for r in stagedx_records if r["sampling"] == sampling]
        return {
            m: {
                "tokens_per_s": tokens_per_second([r for r in rs if r["method"] == m]),
                "decode_tokens_per_s": decode_tokens_per_second([r for r in rs if r["method"] == m]),
            }
            for m in ("baseline", "staged")
        }

    cells: dict = {}
    for sampling in dict.fromkeys(r["sampling"] for r in peer_records):
        ref = ref_for(sampling)
        names = dict.fromkeys(r["method"] for r in peer_records if r["sampling"] == sampling)
        cells[sampling] = {
            name: _peer_cell([r for r in peer_records if r["method"] == name and r["sampling"] == sampling], ref)
            for name in names
        }
    greedy = ref_for("greedy")
    out = {
        "families": dict(families or {}),
        "cells": cells,
        "methods": cells.get("greedy", {}),
        "stagedx_tokens_per_s": {m: v["tokens_per_s"] for m, v in greedy.items()},
        "stagedx_decode_tokens_per_s": {m: v["decode_tokens_per_s"] for m, v in greedy.items()},
    }
    out["sanity"] = sanity_line(
        out["stagedx_tokens_per_s"]["baseline"], out["methods"].get("hf-greedy", {}).get("tokens_per_s")
    )
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
