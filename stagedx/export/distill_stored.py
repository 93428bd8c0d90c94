"""Training a draft from stored oracle targets (``stagedx distill --targets DIR``).

The targets (:mod:`.distill_targets`) hold, per position, the oracle's top-k next-token
log-probabilities and ids, so a training step costs only the draft's forward and backward:
many epochs over the same text without ever running the oracle again. This module reads
them, builds the draft (the oracle's first ``layers`` layers, its embedding and final norm,
tied head restricted to a frequency-ranked vocabulary: :mod:`.distill_vocab`), and defines
the two losses and the held-out metrics.

Losses (``loss``), over every position, the head restricted to the ids S:

- ``kl``: forward KL between the oracle and the draft coarsened to the oracle's top-k ids that
  lie in S plus one "everything else" bucket: sum_j p_j log(p_j / q_j) + p_rest log(p_rest /
  q_rest). Exact for the top-k, and the tail mass still pulls the draft's spare mass into
  place;
- ``greedy``: cross-entropy on the oracle's greedy token (where it is in S): what greedy
  acceptance rewards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StagedxError
from .distill_targets import HELDOUT, META, UNIGRAM

LOSSES = ("kl", "greedy")
VALID_ORDER = ("gen", "corpus")  # whose first shard is held out first (gen: the chain metric)


@dataclass(frozen=True)
class Sequences:
    """Concatenated shards: row t of ``ids`` / ``logp`` is the target after ``tokens[t]``."""

    tokens: np.ndarray  # [N] int64
    ids: np.ndarray  # [N, k] int64
    logp: np.ndarray  # [N, k] float32
    starts: np.ndarray  # [S+1] int64 sequence offsets
    kinds: tuple[str, ...]  # per sequence: "corpus" or "gen"

    @property
    def n_seqs(self) -> int:
        return len(self.starts) - 1


@dataclass(frozen=True)
class StoredTargets:
    meta: dict
    train: Sequences
    valid: Sequences  # the first shard of each kind (while others remain), never trained on
    heldout: np.ndarray  # [M] int64 held-out corpus tokens (for the oracle-run metrics)
    unigram: np.ndarray  # [V] int64 corpus token counts
    shards: int
    valid_shards: int


def _concat(parts: list[dict]) -> Sequences:
    starts, kinds, off = [0], [], 0
    for p in parts:
        s = p["starts"]
        starts += (s[1:] + off).tolist()
        kinds += [str(p["kind"])] * (len(s) - 1)
        off += int(s[-1])
    return Sequences(
        tokens=np.concatenate([p["tokens"] for p in parts]).astype(np.int64),
        ids=np.concatenate([p["ids"] for p in parts]).astype(np.int64),
        logp=np.concatenate([p["logp"] for p in parts]).astype(np.float32),
        starts=np.asarray(starts, np.int64),
        kinds=tuple(kinds),
    )


def load_targets(folder: Path) -> StoredTargets:
    """Every complete shard of ``folder``. Validation: the first generated-text shard, then the
    first corpus shard, each only while at least one shard is left to train on."""
    folder = Path(folder)
    if not (folder / META).is_file():
        raise StagedxError(f"--targets {folder}: no {META} (make it with `stagedx distill-targets`)")
    meta = json.loads((folder / META).read_text())
    files = sorted(folder.glob("shard-[0-9][0-9][0-9][0-9][0-9].npz"))
    parts = []
    for f in files:
        try:
            with np.load(f) as z:
                parts.append({k: z[k] for k in ("tokens", "ids", "logp", "starts", "kind")})
        except (OSError, ValueError, KeyError) as exc:
            raise StagedxError(f"unreadable targets shard {f}: {exc}") from exc
    first = {str(p["kind"]): i for i, p in reversed(list(enumerate(parts)))}
    held: list[int] = []
    for kind in VALID_ORDER:  # hold out a kind's first shard while a training shard remains
        if kind in first and len(parts) - len(held) > 1:
            held.append(first[kind])
    valid = [parts[i] for i in sorted(held)]
    train = [p for i, p in enumerate(parts) if i not in held]
    if not train or not valid:
        raise StagedxError(f"--targets {folder}: {len(parts)} shard(s); training needs at least 2")
    return StoredTargets(
        meta=meta,
        train=_concat(train),
        valid=_concat(valid),
        heldout=np.load(folder / HELDOUT).astype(np.int64),
        unigram=np.load(folder / UNIGRAM),
        shards=len(parts),
        valid_shards=len(valid),
    )


def token_counts(targets: StoredTargets) -> np.ndarray:
    """[V] frequencies for the head vocabulary: the whole tokenised corpus plus every stored
    position's text and the oracle's greedy tokens (the generated text counts that way too)."""
    v = len(targets.unigram)
    seqs = targets.train
    return targets.unigram + np.bincount(seqs.tokens, minlength=v)[:v] + np.bincount(seqs.ids[:, 0], minlength=v)[:v]


class WindowSampler:
    """Random windows (up to ``seq_len`` tokens, inside one sequence) of the training set,
    right-padded into a batch; its state survives a resume."""

    def __init__(self, seqs: Sequences, batch: int, seq_len: int, seed: int):
        self.seqs, self.batch, self.seq_len = seqs, batch, seq_len
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tokens [B, T], target ids [B, T, k], target logp [B, T, k], valid [B, T] bool)."""
        s = self.seqs
        pick = self.rng.integers(0, s.n_seqs, self.batch)  # [B]
        spans = []
        for i in pick:
            a, b = int(s.starts[i]), int(s.starts[i + 1])
            off = int(self.rng.integers(0, max(1, b - a - self.seq_len + 1)))
            spans.append((a + off, min(b, a + off + self.seq_len)))
        t = max(b - a for a, b in spans)
        k = s.ids.shape[1]
        tok = np.zeros((self.batch, t), np.int64)  # [B, T]
        ids = np.zeros((self.batch, t, k), np.int64)  # [B, T, k]
        logp = np.full((self.batch, t, k), -30.0, np.float32)  # [B, T, k]
        valid = np.zeros((self.batch, t), bool)  # [B, T]
        for r, (a, b) in enumerate(spans):
            tok[r, : b - a], ids[r, : b - a], logp[r, : b - a], valid[r, : b - a] = (
                s.tokens[a:b],
                s.ids[a:b],
                s.logp[a:b],
                True,
            )
        return tok, ids, logp, valid

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def draft_from_oracle(oracle_path: Path, layers: int):
    """A Llama draft: the oracle's first ``layers`` layers, embedding and final norm (tied head).
    Only those tensors are read from the oracle's safetensors."""
    import torch
    import transformers
    from safetensors import safe_open

    conf = transformers.AutoConfig.from_pretrained(oracle_path)
    if conf.model_type != "llama":
        raise StagedxError(f"--targets drafts start from a Llama oracle's layers, not {conf.model_type!r}")
    if not 1 <= layers <= conf.num_hidden_layers:
        raise StagedxError(f"--draft-layers must be 1..{conf.num_hidden_layers}, got {layers}")
    conf.num_hidden_layers, conf.tie_word_embeddings = layers, True
    with torch.device("meta"):
        draft = transformers.LlamaForCausalLM(conf)
    keep = {}
    with safe_open(str(Path(oracle_path) / "model.safetensors"), "pt") as f:
        for k in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers:
                keep[k] = f.get_tensor(k).to(torch.float32)
    missing, _unexpected = draft.load_state_dict(keep, strict=False, assign=True)
    if [m for m in missing if m != "lm_head.weight"]:
        raise StagedxError(f"oracle checkpoint lacks {missing[:3]}")
    draft.tie_weights()
    if draft.model.rotary_emb.inv_freq.is_meta:  # a buffer, not in the checkpoint
        draft.model.rotary_emb = type(draft.model.rotary_emb)(conf)
    return draft


def head_logits(draft, tokens, ids_t, mask=None):
    """Draft logits over the head vocabulary: [B, T, N]."""
    h = draft.model(input_ids=tokens, attention_mask=mask).last_hidden_state  # [B, T, E]
    head = draft.model.embed_tokens.weight[ids_t]  # [N, E]
    return h @ head.t()  # [B, T, N]


def stored_loss(logits, target_pos, logp, valid, loss: str):
    """Mean loss over valid positions. ``target_pos`` [B, T, k]: each target id's head
    position (N where it has none); ``logp`` [B, T, k] the oracle's log-probabilities."""
    import torch

    n = logits.shape[-1]
    lq = torch.log_softmax(logits.float(), dim=-1)  # [B, T, N]
    inside = target_pos < n  # [B, T, k]
    lq_k = torch.gather(lq, -1, target_pos.clamp(max=n - 1))  # [B, T, k]
    if loss == "greedy":
        per = -lq_k[..., 0]  # [B, T]
        keep = valid & inside[..., 0]  # [B, T]
        return (per * keep).sum() / keep.sum().clamp(min=1)
    p = logp.exp() * inside  # [B, T, k]: oracle mass on top-k ids the draft can score
    q = lq_k.exp() * inside  # [B, T, k]
    p_rest = (1 - p.sum(-1)).clamp(min=1e-6)  # [B, T]
    q_rest = (1 - q.sum(-1)).clamp(min=1e-6)  # [B, T]
    kl = (p * (logp - lq_k)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())  # [B, T]
    return (kl * valid).sum() / valid.sum().clamp(min=1)


def _greedy_suffix(tokens: np.ndarray, top1: np.ndarray) -> int:
    """First row of a sequence from which its text is the oracle's own greedy continuation
    (token t+1 == the oracle's argmax at t for every later row): the generated part."""
    miss = np.nonzero(tokens[1:] != top1[:-1])[0]  # [M]
    return int(miss[-1]) + 1 if len(miss) else 0


def chain_tokens(draft_top1: np.ndarray, oracle_top1: np.ndarray, start: int, depth: int = 4) -> tuple[float, int]:
    """(sum, count) over rows t >= ``start`` of a greedy ``depth``-chain's tokens per oracle
    call: 1 + the number of leading rows t, t+1, ... where the draft's argmax equals the
    oracle's. Exact on the oracle's greedy text: when the draft's guess is accepted, its next
    context is the stored text itself. Rows too near the end for a full chain are skipped."""
    hit = draft_top1 == oracle_top1  # [T]
    total = count = 0
    for t in range(start, len(hit) - depth + 1):
        run = 0
        while run < depth and hit[t + run]:
            run += 1
        total, count = total + 1 + run, count + 1
    return float(total), count


def valid_metrics(draft, seqs: Sequences, head_ids: np.ndarray, vocab_size: int) -> dict:
    """On the validation set: the ``kl`` loss, top-1 agreement with the oracle, and on the
    generated sequences the exact greedy 4-chain tokens per oracle call (:func:`chain_tokens`)."""
    import torch

    from .distill_vocab import inverse_table

    dev = next(draft.parameters()).device
    ids_t = torch.from_numpy(head_ids).to(dev)  # [N]
    inv = inverse_table(head_ids, vocab_size)  # [V]
    kl_sum = agree = n = chain_sum = chain_n = 0.0
    with torch.no_grad():
        for i in range(seqs.n_seqs):
            a, b = int(seqs.starts[i]), int(seqs.starts[i + 1])
            tok = torch.from_numpy(seqs.tokens[a:b])[None].to(dev)  # [1, T]
            logits = head_logits(draft, tok, ids_t)  # [1, T, N]
            tpos = torch.from_numpy(inv[seqs.ids[a:b]])[None].to(dev)  # [1, T, k]
            lp = torch.from_numpy(seqs.logp[a:b])[None].to(dev)  # [1, T, k]
            ok = torch.ones(1, b - a, dtype=torch.bool, device=dev)  # [1, T]
            kl_sum += float(stored_loss(logits, tpos, lp, ok, "kl")) * (b - a)
            pred = ids_t[logits[0].argmax(-1)].cpu().numpy()  # [T]
            agree += float((pred == seqs.ids[a:b, 0]).sum())
            n += b - a
            if seqs.kinds[i] == "gen":
                s, c = chain_tokens(pred, seqs.ids[a:b, 0], _greedy_suffix(seqs.tokens[a:b], seqs.ids[a:b, 0]))
                chain_sum, chain_n = chain_sum + s, chain_n + c
    return {
        "kl_topk_tail": kl_sum / max(n, 1),
        "top1": agree / max(n, 1),
        "positions": int(n),
        "gen_greedy_chain_tokens": chain_sum / chain_n if chain_n else None,
        "gen_chain_positions": int(chain_n),
    }
