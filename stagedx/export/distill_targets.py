"""``stagedx distill-targets``: the oracle's next-token targets, computed once and stored.

Online distillation runs the oracle's full forward pass (every layer and the whole
vocabulary head) for every training step; for a 135M oracle on a CPU that is nearly all of
the time. Here the oracle runs once over the training text and each position keeps its
top-k next-token log-probabilities (fp16) and their token ids (uint16 when the vocabulary
fits, else int32); ``stagedx distill --targets DIR`` then trains a draft for many epochs
without the oracle.

Two kinds of text, interleaved shard by shard:

- **corpus**: the tokenised ``--corpus`` (as for ``stagedx distill``) cut into windows of
  ``seq_len`` tokens, each its own sequence (positions from 0);
- **self-generated** (``--prompts FILE``, one instruction per line): each prompt through the
  oracle's chat template, then the oracle's own greedy continuation of up to ``gen_tokens``
  tokens. The targets of those positions come from the very forward passes that generated them
  (no second pass): the text the draft will meet when users prompt the oracle (Medusa / EAGLE
  train on such data too).

Layout of DIR: ``meta.json`` (oracle, tokenizer hash, k, seq_len, sources, held-out tokens),
``heldout.npy`` (held-out corpus tokens, for the metrics), ``unigram.npy`` (token counts of
the whole tokenised training corpus, for a frequency-ranked draft vocabulary) and ``shard-NNNNN.npz``, each with
``tokens [N]``, ``ids [N, k]``, ``logp [N, k]`` and ``starts [S+1]`` (sequence offsets into
the flat arrays). Row t of ``ids`` / ``logp`` is the oracle's distribution of token t+1 of its
sequence; a sequence's last row has no next token in the data and is still the oracle's
prediction. Shards are written under a temporary name and renamed, so rerunning the same
command resumes after the last complete shard; a different configuration is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StagedxError
from .distill_data import CorpusSpec, load_tokens

META = "meta.json"
HELDOUT = "heldout.npy"
UNIGRAM = "unigram.npy"  # [V] token counts of the whole tokenised training corpus


@dataclass(frozen=True)
class TargetsConfig:
    oracle: str
    output: Path
    corpus: CorpusSpec
    prompts: Path | None = None  # one instruction per line, for self-generated text
    seq_len: int = 256  # corpus window length
    k: int = 32  # top-k kept per position
    shard_seqs: int = 16  # corpus windows (or prompts) per shard
    batch: int = 4  # corpus windows per oracle forward
    gen_tokens: int = 192  # most tokens the oracle generates per prompt
    max_shards: int = 1_000_000  # stop after this many shards exist
    minutes: float | None = None  # stop (resumably) after this much wall time
    threads: int | None = None
    device: str = "auto"

    def fingerprint(self, tokenizer_sha: str) -> dict:
        return {
            "oracle": str(self.oracle),
            "tokenizer_sha256": tokenizer_sha,
            "corpus": [list(self.corpus.paths), str(self.corpus.exclude_from), self.corpus.max_tokens],
            "seed": self.corpus.seed,
            "prompts": str(self.prompts) if self.prompts else None,
            "seq_len": self.seq_len,
            "k": self.k,
            "shard_seqs": self.shard_seqs,
            "gen_tokens": self.gen_tokens,
        }


def read_prompts(path: Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise StagedxError(f"cannot read --prompts {path}: {exc.strerror}") from exc
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    if not prompts:
        raise StagedxError(f"--prompts {path} holds no prompt (one per line)")
    return prompts


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _topk(logits, k: int, id_dtype):
    """Top-k log-probabilities (fp16) and ids of [N, V] logits."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
    vals, ids = torch.topk(logp, k, dim=-1)  # [N, k], [N, k]
    return vals.cpu().numpy().astype(np.float16), ids.cpu().numpy().astype(id_dtype)


def _corpus_shard(model, windows: np.ndarray, cfg: TargetsConfig, id_dtype, device) -> dict:
    import torch

    ids_out, logp_out = [], []
    for s in range(0, len(windows), cfg.batch):
        x = torch.from_numpy(windows[s : s + cfg.batch].astype(np.int64)).to(device)  # [B, T]
        with torch.no_grad():
            logits = model(input_ids=x).logits  # [B, T, V]
        lp, ix = _topk(logits.reshape(-1, logits.shape[-1]), cfg.k, id_dtype)  # [B*T, k]
        logp_out.append(lp)
        ids_out.append(ix)
    n, t = windows.shape
    return {
        "tokens": windows.reshape(-1).astype(id_dtype),
        "ids": np.concatenate(ids_out),
        "logp": np.concatenate(logp_out),
        "starts": np.arange(0, n * t + 1, t, dtype=np.int64),
    }


def _generate(model, prompt_ids: list[int], cfg: TargetsConfig, eos: int, device):
    """Greedy continuation with the targets of every position: (tokens, logits [N, V])."""
    import inspect

    import torch

    # newer transformers call the cache argument ``cache`` (same semantics)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    x = torch.tensor([prompt_ids], device=device)  # [1, P]
    rows, tokens, past = [], list(prompt_ids), None
    with torch.no_grad():
        for _ in range(cfg.gen_tokens):
            out = model(input_ids=x, use_cache=True, **{key: past})
            past = out.past_key_values
            rows.append(out.logits[0])  # [t, V]
            nxt = int(out.logits[0, -1].argmax())
            if nxt == eos:
                break
            tokens.append(nxt)
            x = torch.tensor([[nxt]], device=device)  # [1, 1]
    logits = torch.cat(rows)  # [N, V]: the last appended token may have no row yet
    return tokens[: len(logits)], logits[: len(tokens)]


def _selfgen_shard(model, prompts: list[list[int]], cfg: TargetsConfig, id_dtype, eos: int, device) -> dict:
    toks, ids, logp, starts = [], [], [], [0]
    for p in prompts:
        seq, logits = _generate(model, p, cfg, eos, device)
        lp, ix = _topk(logits, cfg.k, id_dtype)
        toks.append(np.asarray(seq, id_dtype))
        ids.append(ix)
        logp.append(lp)
        starts.append(starts[-1] + len(seq))
    return {
        "tokens": np.concatenate(toks),
        "ids": np.concatenate(ids),
        "logp": np.concatenate(logp),
        "starts": np.asarray(starts, np.int64),
    }


def _save_npz(path: Path, arrays: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _plan(cfg: TargetsConfig, n_windows: int, n_prompts: int) -> list[tuple[str, int]]:
    """The shard sequence: ('corpus', first window) / ('gen', first prompt), alternating
    while both kinds last."""
    corpus = [("corpus", i) for i in range(0, n_windows - cfg.shard_seqs + 1, cfg.shard_seqs)]
    gen = [("gen", i) for i in range(0, n_prompts, cfg.shard_seqs)]
    plan = []
    for i in range(max(len(corpus), len(gen))):
        plan += ([corpus[i]] if i < len(corpus) else []) + ([gen[i]] if i < len(gen) else [])
    return plan


def _prepare(cfg: TargetsConfig, ckpt, fingerprint: dict):
    """Tokenised corpus windows and prompts; writes meta.json / heldout.npy the first time."""
    eos = ckpt.special_token("eos_token_id") or 0
    data = load_tokens(cfg.corpus, ckpt.tokenizer_file, eos, cfg.seq_len)
    n = len(data.train) // cfg.seq_len
    windows = data.train[: n * cfg.seq_len].reshape(n, cfg.seq_len)  # [n, T]
    windows = windows[np.random.default_rng(cfg.corpus.seed).permutation(n)]
    prompts: list[list[int]] = []
    if cfg.prompts is not None:
        from transformers import AutoTokenizer

        if ckpt.chat_template() is None:
            raise StagedxError(f"--prompts needs a chat template and {ckpt.path} has none")
        tok = AutoTokenizer.from_pretrained(str(ckpt.path))
        texts = read_prompts(cfg.prompts)
        random.Random(cfg.corpus.seed).shuffle(texts)
        for text in texts:
            chat = tok.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            prompts.append(list(tok(chat, add_special_tokens=False)["input_ids"]))
    meta_file = cfg.output / META
    if meta_file.is_file():
        old = json.loads(meta_file.read_text())
        if old.get("fingerprint") != fingerprint:
            diff = [k for k in fingerprint if old.get("fingerprint", {}).get(k) != fingerprint[k]]
            raise StagedxError(
                f"{cfg.output} holds targets made with other options ({', '.join(diff)}); "
                "use the same options to continue, or another folder"
            )
    else:
        cfg.output.mkdir(parents=True, exist_ok=True)
        np.save(cfg.output / HELDOUT, data.heldout.astype(np.int32))
        counts = np.bincount(data.train, minlength=int(ckpt.config["vocab_size"]))  # [V]
        np.save(cfg.output / UNIGRAM, counts.astype(np.int64))
        meta = {
            "fingerprint": fingerprint,
            "vocab_size": int(ckpt.config["vocab_size"]),
            "eos_token_id": eos,
            "corpus_train_tokens": int(len(data.train)),
            "corpus_train_files": data.train_files,
            "heldout_tokens": int(len(data.heldout)),
            "heldout": data.heldout_source,
            "prompts": len(prompts),
        }
        meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    return windows, prompts, eos


def compute_targets(cfg: TargetsConfig, log: Callable[[str], None] | None = None) -> dict:
    """Write (or continue) the shards in ``cfg.output``; returns a summary of this run."""
    import torch

    from .arch import load_reference, open_checkpoint
    from .distill import _device

    log = log or (lambda _m: None)
    if cfg.k < 1 or cfg.seq_len < 2 or cfg.shard_seqs < 1 or cfg.batch < 1:
        raise StagedxError("--k, --batch and --shard-seqs must be at least 1, --seq-len at least 2")
    if cfg.output.exists() and not cfg.output.is_dir():
        raise StagedxError(f"output exists and is not a folder: {cfg.output}")
    ckpt = open_checkpoint(cfg.oracle)
    if ckpt.tokenizer_file is None:
        raise StagedxError(f"oracle checkpoint {ckpt.path} has no tokenizer.json")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    vocab = int(ckpt.config["vocab_size"])
    id_dtype = np.uint16 if vocab <= 1 << 16 else np.int32
    windows, prompts, eos = _prepare(cfg, ckpt, cfg.fingerprint(_sha256(ckpt.tokenizer_file)))
    plan = _plan(cfg, len(windows), len(prompts))[: cfg.max_shards]
    device = _device(cfg.device)
    model = load_reference(ckpt).to(device).requires_grad_(False)
    t0, made, tokens = time.perf_counter(), 0, 0
    for i, (kind, first) in enumerate(plan):
        path = cfg.output / f"shard-{i:05d}.npz"
        if path.is_file():
            continue
        if cfg.minutes is not None and time.perf_counter() - t0 >= cfg.minutes * 60:
            break
        t1 = time.perf_counter()
        if kind == "corpus":
            arrays = _corpus_shard(model, windows[first : first + cfg.shard_seqs], cfg, id_dtype, device)
        else:
            arrays = _selfgen_shard(model, prompts[first : first + cfg.shard_seqs], cfg, id_dtype, eos, device)
        arrays["kind"] = np.asarray(kind)
        _save_npz(path, arrays)
        made, tokens = made + 1, tokens + len(arrays["tokens"])
        dt = time.perf_counter() - t1
        n = len(arrays["tokens"])
        log(f"{path.name}: {kind}, {n} positions in {dt:.1f} s ({n / dt:.1f} tok/s)")
    seconds = time.perf_counter() - t0
    return {"shards_written": made, "tokens": tokens, "seconds": round(seconds, 1), "planned": len(plan)}
