"""``stagedx distill ORACLE --targets DIR``: train a small-head draft on stored oracle targets.

The draft is the oracle's first ``--draft-layers`` layers with its embedding and final norm,
its tied head restricted to the ``--head-vocab`` most frequent tokens (:mod:`.distill_vocab`);
every step is the draft's forward and backward only (:mod:`.distill_stored`). AdamW with the
warm-up and cosine schedule of ``stagedx distill``, gradient clipping, resume state every
``checkpoint_minutes`` in ``OUT.resume/`` (rerun the same command to continue), validation
metrics from the stored targets (no oracle run) at the end and every ``eval_every`` steps.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import StagedxError
from ..files import AtomicFolder, _umask, utc_now
from .distill import TOKENIZER_FILES, _device, _lr, _save_state
from .distill_card import offline_card
from .distill_stored import (
    LOSSES,
    WindowSampler,
    draft_from_oracle,
    head_logits,
    load_targets,
    stored_loss,
    token_counts,
    valid_metrics,
)
from .distill_vocab import inverse_table, rank_by_frequency, write_head_vocab

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class OfflineConfig:
    oracle: str
    targets: Path
    output: Path
    layers: int = 1  # the oracle's first layers the draft keeps
    head_vocab: int = 8192  # 0: the full vocabulary
    loss: str = "kl"  # kl | greedy
    minutes: float | None = None
    steps: int | None = None
    seq_len: int = 256
    batch: int = 8
    lr: float = 3e-4
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    eval_every: int = 0  # steps between validation metrics (0: only before and after)
    checkpoint_minutes: float = 5.0
    checkpoint_steps: int = 0  # 0: by time only
    save_dtype: str = "fp16"  # weights as written: fp16 | fp32
    force: bool = False
    command: str = ""

    @property
    def resume_dir(self) -> Path:
        return self.output.with_name(self.output.name + ".resume")

    def fingerprint(self) -> dict:
        keys = ("oracle", "layers", "head_vocab", "loss", "seq_len", "batch", "lr", "seed")
        return {
            **{k: getattr(self, k) for k in keys},
            "targets": str(self.targets),
            "budget": [self.minutes, self.steps],
        }


def _check(cfg: OfflineConfig) -> None:
    if (cfg.minutes is None) == (cfg.steps is None):
        raise StagedxError("give exactly one of --minutes M and --steps N")
    if cfg.loss not in LOSSES:
        raise StagedxError(f"--loss must be one of {', '.join(LOSSES)}, not {cfg.loss!r}")
    if cfg.head_vocab < 0 or cfg.batch < 1 or cfg.seq_len < 2 or cfg.lr <= 0:
        raise StagedxError("--head-vocab must be 0 or more, --batch positive, --seq-len at least 2, --lr positive")
    if cfg.output.exists() and not cfg.force:
        raise StagedxError(f"output exists: {cfg.output} (use --force to replace it)")


class _Budget:
    """What ``distill._lr`` reads: the budget in steps or minutes and the peak rate."""

    def __init__(self, cfg: OfflineConfig):
        self.steps, self.minutes, self.lr = cfg.steps, cfg.minutes, cfg.lr

    def done(self, step: int, elapsed: float) -> bool:
        return step >= self.steps if self.steps is not None else elapsed >= self.minutes * 60


def _load_state(cfg: OfflineConfig) -> dict | None:
    import torch

    path = cfg.resume_dir / STATE_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != cfg.fingerprint():
        raise StagedxError(f"{cfg.resume_dir} holds a run with other options; rerun with the same options or delete it")
    return state


def _train(cfg: OfflineConfig, draft, data, head_ids, hooks) -> dict:
    import torch

    log, on_step = hooks
    device = next(draft.parameters()).device
    vocab = len(data.unigram)
    inv = torch.from_numpy(inverse_table(head_ids, vocab)).to(device)  # [V]
    ids_t = torch.from_numpy(head_ids).to(device)  # [N]
    sampler = WindowSampler(data.train, cfg.batch, cfg.seq_len, cfg.seed)
    opt = torch.optim.AdamW(draft.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    budget, step, elapsed, loss_avg, history = _Budget(cfg), 0, 0.0, float("nan"), []
    state = _load_state(cfg)
    if state is not None:
        draft.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
        step, elapsed, loss_avg, history = state["step"], state["elapsed"], state["loss_avg"], state["history"]
        log(f"resuming from step {step} ({elapsed / 60:.1f} min trained)")
    draft.train()
    t_run, t_saved = time.perf_counter() - elapsed, time.perf_counter()
    while not budget.done(step, elapsed):
        for group in opt.param_groups:
            group["lr"] = _lr(budget, step, elapsed)
        tok, ids, logp, valid = (torch.from_numpy(a).to(device) for a in sampler.next())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = head_logits(draft, tok, ids_t, valid.long())  # [B, T, N]
        loss = stored_loss(logits, inv[ids], logp, valid, cfg.loss)  # in fp32
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step, elapsed = step + 1, time.perf_counter() - t_run
        loss_avg = loss.item() if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * loss.item()
        if step % 10 == 0:
            log(f"step {step}: {elapsed / 60:.1f} min, {cfg.loss} loss {loss_avg:.4f}")
        if cfg.eval_every and step % cfg.eval_every == 0:
            draft.eval()
            m = valid_metrics(draft, data.valid, head_ids, vocab)
            draft.train()
            history.append({"step": step, "minutes": round(elapsed / 60, 2), **m})
            log(f"valid @ {step}: {_line(m)}")
        due = (cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0) or (
            time.perf_counter() - t_saved >= cfg.checkpoint_minutes * 60
        )
        if due and not budget.done(step, elapsed):
            _save_state(
                cfg,
                {
                    "fingerprint": cfg.fingerprint(),
                    "model": draft.state_dict(),
                    "optimizer": opt.state_dict(),
                    "sampler": sampler.state(),
                    "step": step,
                    "elapsed": elapsed,
                    "loss_avg": loss_avg,
                    "history": history,
                },
            )
            t_saved = time.perf_counter()
        if on_step is not None:
            on_step(step, loss.item())
    draft.eval()
    return {"steps": step, "seconds": round(elapsed, 1), "final_loss_avg": loss_avg, "history": history}


def _line(m: dict) -> str:
    chain = m["gen_greedy_chain_tokens"]
    return (
        f"KL(top-k+tail) {m['kl_topk_tail']:.4f}, top-1 {m['top1']:.3f}, greedy 4-chain tokens/call on "
        f"generated text {'-' if chain is None else f'{chain:.3f}'}"
    )


def _write(cfg: OfflineConfig, draft, head_ids, record: dict) -> None:
    import torch

    oracle = Path(cfg.oracle)
    with AtomicFolder(cfg.output, cfg.force) as tmp:
        dtype = {"fp16": torch.float16, "fp32": torch.float32}[cfg.save_dtype]
        draft.to(dtype).save_pretrained(tmp)
        for name in (*TOKENIZER_FILES, "chat_template.jinja", "generation_config.json"):
            if (oracle / name).is_file():
                shutil.copyfile(oracle / name, tmp / name)
        if cfg.head_vocab:
            write_head_vocab(tmp, head_ids, f"{cfg.head_vocab} most frequent tokens of {cfg.targets}")
        (tmp / "distill.json").write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(offline_card(record))
        mode = 0o666 & ~_umask()
        for f in tmp.iterdir():
            f.chmod(mode)


def distill_offline(
    cfg: OfflineConfig,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict:
    """Train, write ``cfg.output`` (HF checkpoint + head_vocab.json + distill.json); returns the record."""
    import numpy as np
    import torch

    log = log or (lambda _m: None)
    _check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_targets(cfg.targets)
    vocab = len(data.unigram)
    eos = int(data.meta.get("eos_token_id", 0))
    head_ids = rank_by_frequency(token_counts(data), cfg.head_vocab, (eos,)) if cfg.head_vocab else np.arange(vocab)
    log(
        f"targets: {data.shards} shards, {len(data.train.tokens):,} training positions "
        f"({data.train.n_seqs} sequences), {len(data.valid.tokens):,} validation; head {len(head_ids)} ids"
    )
    draft = draft_from_oracle(Path(cfg.oracle), cfg.layers).to(_device(cfg.device))
    before = valid_metrics(draft.eval(), data.valid, head_ids, vocab)
    log("before: " + _line(before))
    t0 = time.perf_counter()
    run = _train(cfg, draft, data, head_ids, (log, on_step))
    after = valid_metrics(draft, data.valid, head_ids, vocab)
    log("after:  " + _line(after))
    in_head = np.isin(data.valid.ids[:, 0], head_ids).mean()
    record = {
        "created_utc": utc_now(),
        "command": cfg.command,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "force"},
        "n_params": sum(p.numel() for p in draft.parameters()),
        "head_params": len(head_ids) * draft.config.hidden_size,
        "targets": {
            "shards": data.shards,
            "train_positions": int(len(data.train.tokens)),
            "train_sequences": data.train.n_seqs,
            "valid_positions": int(len(data.valid.tokens)),
            "valid_shards": data.valid_shards,
            "oracle_top1_in_head": float(in_head),
            "meta": {k: v for k, v in data.meta.items() if k != "fingerprint"},
        },
        "run": {**run, "this_session_seconds": round(time.perf_counter() - t0, 1), "device": str(_device(cfg.device))},
        "before": before,
        "after": after,
    }
    _write(cfg, draft.to("cpu"), head_ids, record)
    shutil.rmtree(cfg.resume_dir, ignore_errors=True)
    log(f"wrote {cfg.output}")
    return record
