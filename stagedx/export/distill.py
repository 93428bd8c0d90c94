"""``stagedx distill``: train a draft to match its oracle (forward KL, DistillSpec-style).

The draft starts from a checkpoint (``init``) or from random weights of a given shape in the
oracle's family, sees the oracle's next-token distribution on every position of random
windows of the corpus, and minimises KL(oracle || draft), optionally with the oracle warped
to the temperature / top-k the user decodes with. bf16 autocast (CPU or CUDA), gradient
clipping, AdamW with warm-up and a cosine schedule to 10%.

Resume: every ``checkpoint_minutes`` (and ``checkpoint_steps``) the model, optimizer,
sampler state and step go to ``<OUT>.resume/state.pt`` (written to a temporary name, then
renamed). Rerunning the same command continues from there; the finished checkpoint folder
is written atomically and the resume folder removed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import StagedxError
from ..files import AtomicFolder, _umask, utc_now
from .distill_data import BatchSampler, CorpusSpec, eval_contexts, load_tokens

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
WARMUP_STEPS = 20
STATE_FILE = "state.pt"
RESUME_KEYS = (
    "oracle",
    "init",
    "shape",
    "corpus",
    "seq_len",
    "batch",
    "lr",
    "temperature",
    "top_k",
    "seed",
    "max_corpus_tokens",
)  # options a resumed run must share


@dataclass(frozen=True)
class DistillConfig:
    oracle: str
    output: Path
    corpus: CorpusSpec
    init: str | None = None  # draft checkpoint to start from, or None with ``shape``
    shape: tuple[int, int, int] | None = None  # (layers, width, heads) of a fresh draft
    minutes: float | None = None  # training budget: wall minutes, or ...
    steps: int | None = None  # ... optimizer steps
    seq_len: int = 256
    batch: int = 16
    lr: float = 3e-4
    temperature: float = 1.0
    top_k: int = 0  # 0: the oracle's full distribution
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | bf16 | fp32 (bf16 autocast; auto: where the hardware has bf16)
    eval_contexts: int = 64
    eval_len: int = 128
    checkpoint_minutes: float = 5.0
    checkpoint_steps: int = 0  # 0: by time only
    force: bool = False
    progress: bool = False
    command: str = ""  # the command line, for the model card

    @property
    def resume_dir(self) -> Path:
        return self.output.with_name(self.output.name + ".resume")

    def fingerprint(self) -> dict:
        return {
            "oracle": self.oracle,
            "init": self.init,
            "shape": list(self.shape or ()),
            "corpus": [list(self.corpus.paths), str(self.corpus.exclude_from)],
            "seq_len": self.seq_len,
            "batch": self.batch,
            "lr": self.lr,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "seed": self.seed,
            "max_corpus_tokens": self.corpus.max_tokens,
        }


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        layers, width, heads = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise StagedxError(f"--draft-shape must look like LAYERSxWIDTHxHEADS (e.g. 2x192x3), got {text!r}") from None
    if min(layers, width, heads) < 1 or width % heads:
        raise StagedxError(f"--draft-shape {text}: all positive and WIDTH a multiple of HEADS")
    return layers, width, heads


def _check(cfg: DistillConfig) -> None:
    if (cfg.init is None) == (cfg.shape is None):
        raise StagedxError("give exactly one of --draft INIT_CHECKPOINT and --draft-shape LAYERSxWIDTHxHEADS")
    if (cfg.minutes is None) == (cfg.steps is None):
        raise StagedxError("give exactly one of --minutes M and --steps N")
    if (cfg.minutes is not None and cfg.minutes <= 0) or (cfg.steps is not None and cfg.steps < 1):
        raise StagedxError("--minutes and --steps must be positive")
    for name, value in (
        ("--seq-len", cfg.seq_len),
        ("--batch", cfg.batch),
        ("--eval-contexts", cfg.eval_contexts),
        ("--eval-len", cfg.eval_len),
    ):
        if value < 1:
            raise StagedxError(f"{name} must be at least 1, got {value}")
    if cfg.lr <= 0 or cfg.temperature <= 0 or cfg.top_k < 0:
        raise StagedxError("--lr and --temperature must be positive, --top-k 0 or more")
    if cfg.output.exists() and not cfg.force:
        raise StagedxError(f"output exists: {cfg.output} (use --force to replace it)")


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StagedxError("--device cuda: no CUDA device visible to torch")
    return torch.device(name)


def _autocast_bf16(precision: str, device) -> bool:
    """bf16 autocast? ``auto``: on CUDA with bf16 support, and on CPUs with native bf16
    (without it, autocast emulates bf16 and runs ~25x slower than fp32: measured on AVX2)."""
    import torch

    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _fresh_draft(oracle_ckpt, shape: tuple[int, int, int], seed: int):
    """A randomly initialised model of the oracle's family with (layers, width, heads)."""
    import torch
    import transformers

    layers, width, heads = shape
    conf = transformers.AutoConfig.from_pretrained(oracle_ckpt.path)
    if conf.model_type == "gpt2":
        conf.n_layer, conf.n_embd, conf.n_head = layers, width, heads
    elif conf.model_type == "llama":
        ratio = conf.intermediate_size / conf.hidden_size
        conf.num_hidden_layers, conf.hidden_size, conf.num_attention_heads = layers, width, heads
        conf.num_key_value_heads, conf.head_dim = heads, width // heads
        conf.intermediate_size = int(round(ratio * width))
    else:
        raise StagedxError(f"--draft-shape supports gpt2 and llama oracles, not {conf.model_type!r}")
    torch.manual_seed(seed)
    return getattr(transformers, oracle_ckpt.spec.hf_class)(conf)


def _models(cfg: DistillConfig):
    """(oracle ckpt, oracle model, draft model), both fp32; vocabularies checked."""
    from .arch import load_reference, open_checkpoint
    from .bundle import _check_pair

    oracle_ckpt = open_checkpoint(cfg.oracle)
    if oracle_ckpt.tokenizer_file is None:
        raise StagedxError(f"oracle checkpoint {oracle_ckpt.path} has no tokenizer.json")
    if cfg.init is not None:
        init = open_checkpoint(cfg.init)
        _check_pair(oracle_ckpt, init)
        draft = load_reference(init)
    else:
        draft = _fresh_draft(oracle_ckpt, cfg.shape, cfg.seed)
    oracle = load_reference(oracle_ckpt)
    for role, model in (("oracle", oracle), ("draft", draft)):
        limit = model.config.max_position_embeddings
        need = max(cfg.seq_len, cfg.eval_len + 4)
        if need > limit:
            raise StagedxError(f"the {role} has {limit} positions; --seq-len / --eval-len + 4 need {need}")
    return oracle_ckpt, oracle, draft


class _Bar:
    """tqdm over steps (or seconds with --minutes) with steps/s and KL; plain lines without tqdm."""

    def __init__(self, cfg: DistillConfig, start_step: int, start_s: float):
        self.total = cfg.steps if cfg.steps is not None else int(cfg.minutes * 60)
        self.by_steps, self.bar, self.t_print = cfg.steps is not None, None, 0.0
        self.enabled, self.pos = cfg.progress, start_step if cfg.steps is not None else int(start_s)
        if self.enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=self.total,
                    initial=self.pos,
                    file=sys.stderr,
                    dynamic_ncols=True,
                    desc="distill",
                    unit="step",
                    mininterval=0.5 if sys.stderr.isatty() else 30.0,
                    bar_format=None
                    if self.by_steps
                    else "{l_bar}{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]",
                )
            except ImportError:
                pass

    def update(self, step: int, elapsed: float, rate: float, kl: float) -> None:
        note = f"step {step}, {rate:.2f} steps/s, KL {kl:.4f}"
        new = step if self.by_steps else min(self.total, int(elapsed))
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(new - self.pos)
        elif self.enabled and time.time() >= self.t_print:
            self.t_print = time.time() + 30
            print(f"distill: {new}/{self.total} {note}", file=sys.stderr, flush=True)
        self.pos = new

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _lr(cfg: DistillConfig, step: int, elapsed: float) -> float:
    frac = step / cfg.steps if cfg.steps is not None else elapsed / (cfg.minutes * 60)
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _save_state(cfg: DistillConfig, state: dict) -> None:
    import torch

    cfg.resume_dir.mkdir(parents=True, exist_ok=True)
    tmp = cfg.resume_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, cfg.resume_dir / STATE_FILE)


def _load_state(cfg: DistillConfig) -> dict | None:
    import torch

    path = cfg.resume_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors come in many types
        raise StagedxError(f"unreadable resume state {path}: {exc} (delete it to start over)") from exc
    if state.get("fingerprint") != cfg.fingerprint():
        old, new = state.get("fingerprint", {}), cfg.fingerprint()
        diff = [k for k in RESUME_KEYS if old.get(k) != new.get(k)]
        raise StagedxError(
            f"{cfg.resume_dir} holds a run with other options ({', '.join(diff)}); "
            "rerun with the same options to resume, or delete it to start over"
        )
    return state


def _train(cfg: DistillConfig, models, sampler: BatchSampler, state: dict | None, meta: dict, hooks) -> dict:
    """The training loop; returns the run's record (steps, seconds, last KL). ``models``:
    (oracle, draft); ``meta``: saved with every resume state; ``hooks``: (log, on_step)."""
    import torch

    from .distill_metrics import forward_kl

    (oracle, draft), (log, on_step) = models, hooks
    device = next(draft.parameters()).device
    bf16 = _autocast_bf16(cfg.precision, device)
    opt = torch.optim.AdamW(draft.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    step, elapsed, kl_avg = 0, 0.0, float("nan")
    if state is not None:
        draft.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
        step, elapsed, kl_avg = state["step"], state["elapsed"], state["kl_avg"]
        log(f"resuming from step {step} ({elapsed / 60:.1f} min trained) in {cfg.resume_dir}")
    draft.eval()  # dropout off: the target is the oracle's distribution, not a regulariser
    bar = _Bar(cfg, step, elapsed)
    t_run, t_saved, step0 = time.perf_counter() - elapsed, time.perf_counter(), step
    t_session = t_saved

    def done() -> bool:
        return step >= cfg.steps if cfg.steps is not None else elapsed >= cfg.minutes * 60

    while not done():
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step, elapsed)
        x = torch.from_numpy(sampler.next()).to(device)  # [B, T]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                teacher = oracle(input_ids=x).logits  # [B, T, V]
            student = draft(input_ids=x).logits  # [B, T, V]
        loss = forward_kl(teacher, student, cfg.temperature, cfg.top_k)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - t_run
        kl = loss.item()
        kl_avg = kl if math.isnan(kl_avg) else 0.95 * kl_avg + 0.05 * kl
        rate = (step - step0) / max(time.perf_counter() - t_session, 1e-9)
        bar.update(step, elapsed, rate, kl_avg)
        due = (
            cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0
        ) or time.perf_counter() - t_saved >= cfg.checkpoint_minutes * 60
        if due and not done():
            _save_state(
                cfg,
                {
                    "fingerprint": cfg.fingerprint(),
                    "model": draft.state_dict(),
                    "optimizer": opt.state_dict(),
                    "sampler": sampler.state(),
                    "step": step,
                    "elapsed": elapsed,
                    "kl_avg": kl_avg,
                    **meta,
                },
            )
            t_saved = time.perf_counter()
        if on_step is not None:
            on_step(step, kl)
    bar.close()
    return {
        "steps": step,
        "seconds": round(elapsed, 1),
        "final_kl_avg": kl_avg,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "tokens": step * cfg.batch * cfg.seq_len,
    }


def _write_output(cfg: DistillConfig, oracle_ckpt, draft, record: dict) -> None:
    from .distill_card import model_card

    with AtomicFolder(cfg.output, cfg.force) as tmp:
        draft.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (oracle_ckpt.path / name).is_file():
                shutil.copyfile(oracle_ckpt.path / name, tmp / name)
        (tmp / "distill.json").write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(record))
        mode = 0o666 & ~_umask()
        for f in tmp.iterdir():  # safetensors writes 0600 files
            f.chmod(mode)


def distill(
    cfg: DistillConfig, log: Callable[[str], None] | None = None, on_step: Callable[[int, float], None] | None = None
) -> dict:
    """Run the distillation; writes ``cfg.output`` and returns its record (also distill.json)."""
    import torch

    from .distill_metrics import evaluate

    log = log or (lambda _msg: None)
    _check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    log(f"loading the oracle {cfg.oracle} and the draft ...")
    oracle_ckpt, oracle, draft = _models(cfg)
    eos = oracle_ckpt.special_token("eos_token_id") or 0
    log(f"tokenizing the corpus ({', '.join(cfg.corpus.paths)}) ...")
    data = load_tokens(cfg.corpus, oracle_ckpt.tokenizer_file, eos, cfg.seq_len + 1)
    contexts = eval_contexts(data.heldout, cfg.eval_contexts, cfg.eval_len)
    log(
        f"corpus: {len(data.train):,} training tokens from {data.train_files} files; held-out "
        f"{len(data.heldout):,} tokens ({data.heldout_source})"
    )
    device = _device(cfg.device)
    oracle.to(device).requires_grad_(False)
    draft.to(device)
    state = _load_state(cfg)
    if state is not None and state.get("before"):
        before = state["before"]
    else:
        log(f"measuring the draft against the oracle on {len(contexts)} held-out contexts before training ...")
        before = evaluate(oracle, draft.eval(), contexts, cfg.seed).as_dict()
    log("before: " + _metrics_line(before))
    sampler = BatchSampler(data.train, cfg.batch, cfg.seq_len, cfg.seed)
    t0 = time.perf_counter()
    run = _train(cfg, (oracle, draft), sampler, state, {"before": before}, (log, on_step))
    after = evaluate(oracle, draft.eval(), contexts, cfg.seed).as_dict()
    log("after:  " + _metrics_line(after))
    record = {
        "created_utc": utc_now(),
        "command": cfg.command,
        "oracle": str(oracle_ckpt.path),
        "init": cfg.init,
        "shape": list(cfg.shape) if cfg.shape else None,
        "n_params": sum(p.numel() for p in draft.parameters()),
        "options": {
            k: v
            for k, v in dataclasses.asdict(cfg).items()
            if k not in ("oracle", "output", "corpus", "init", "shape", "command", "force", "progress")
        },
        "corpus": {
            "paths": list(cfg.corpus.paths),
            "exclude_from": str(cfg.corpus.exclude_from),
            "train_tokens": len(data.train),
            "train_files": data.train_files,
            "heldout_tokens": len(data.heldout),
            "heldout": data.heldout_source,
        },
        "device": str(device),
        "threads": torch.get_num_threads(),
        "run": {**run, "this_session_seconds": round(time.perf_counter() - t0, 1)},
        "before": before,
        "after": after,
    }
    _write_output(cfg, oracle_ckpt, draft.to("cpu"), record)
    shutil.rmtree(cfg.resume_dir, ignore_errors=True)
    log(f"wrote {cfg.output}")
    return record


def _metrics_line(m: dict) -> str:
    return (
        f"KL {m['kl']:.4f} nats/token, top-1 agreement {m['top1']:.3f}, tokens per oracle "
        f"call (4-chain) greedy {m['greedy_tokens']:.3f}, top-k 50 {m['topk_tokens']:.3f} "
        f"± {m['topk_stderr']:.3f}"
    )
