#!/usr/bin/env python
"""Cost-scale a trained GPT-2 checkpoint: a much larger GPT-2 that computes the same function.

A benchmark instrument, not a new model: the scaled network's calls cost what a real model of
its size costs (every weight is distinct and read on every call), while its logits, and so
acceptance in speculative decoding, stay those of the small trained checkpoint.

Construction, with R the width factor (hidden E -> R*E, heads H -> R*H, head size unchanged):

- residual stream: R tiled copies of the source's (wte / wpe tiled along the hidden axis).
  The LayerNorm of a tiled vector is the tiled LayerNorm, exactly, so LayerNorm weights and
  biases are tiled too;
- input projections (QKV, MLP in) take 1/R of each copy (R is a power of two: exact scaling);
  output projections (attention out, MLP out) write every copy;
- extra attention heads (R*H - H of them) have random Q/K/V weights and zero rows in the
  output projection: they run and contribute exactly zero;
- extra MLP units (4*R*E - 4*E) have random weights and a bias below minus a bound on
  |pre-activation| over every possible LayerNorm output, so GELU / ReLU give exactly 0, and
  their random output rows add exactly 0;
- extra layers are exact identities that still run every matmul: V weights and biases zero
  (attention output exactly 0 whatever the random Q/K/output weights), every MLP unit
  saturated. Their two output biases are +c and -c with |c| ~ 1e-36 (distinct random
  vectors): an all-zero bias would be merged with the other all-zero biases by the ONNX
  exporter (it deduplicates equal initializers), and x + c - c == x exactly for every
  residual entry that is 0 or larger than ~1e-28 in magnitude;
- ln_f weight and bias scaled by 1/R, so the tied head (sum over R copies) gives the source's
  logits.

Subcommands:

- ``scale SRC OUT --factor R --layers N``: write the scaled checkpoint (fp32 safetensors, the
  source's tokenizer files) and check its logits against the source (relative error < 1e-5);
- ``check-bundle SMALL BIG``: the exported bundles' greedy outputs (oracle and draft) agree on
  a few HumanEval prompts, and every graph's initializer bytes equal 4 x its parameter count
  (nothing merged, nothing dropped).

tools/research/build_gpt2l_cost.sh builds the GPT-2-L-cost pair with both.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stagedx.errors import StagedxError  # noqa: E402

REL_TOL = 1e-5  # max |scaled - source| / max |source| over the checked logits
SAT_MARGIN = 30.0  # extra units' pre-activation stays below -SAT_MARGIN: GELU is exactly 0
TINY = 2.0**-120  # magnitude scale of the identity layers' cancelling output biases
INIT_STD = 0.02  # GPT-2's init, for the weights that carry no signal
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
)


# -- the construction (pure tensor code) -----------------------------------------------
def _tile(t, r: int, dim: int = -1):
    reps = [1] * t.dim()
    reps[dim] = r
    return t.repeat(*reps)


def _rand(gen, *shape):
    import torch

    return torch.randn(*shape, generator=gen) * INIT_STD


def _saturating_bias(w_in, ln_w, ln_b, hidden: int):
    """Bias per unit so that ``LN(x) @ w_in + bias <= -SAT_MARGIN`` for every input x.

    A LayerNorm output entry is bounded by ``sqrt(hidden - 1) * |g_i| + |b_i|`` (a normalised
    vector has no entry beyond sqrt(n - 1)); the result is distinct per unit."""
    bound = math.sqrt(hidden - 1) * ln_w.abs() + ln_b.abs()  # [E]
    return -(w_in.abs().T @ bound) - SAT_MARGIN  # [U]


def _split_qkv(w, e: int):
    return w[..., :e], w[..., e : 2 * e], w[..., 2 * e :]


def _real_layer(src: dict, r: int, e: int, gen) -> dict:
    """One source layer at R times the width. ``src``: that layer's HF GPT-2 tensors."""
    import torch

    big, f = r * e, src["mlp.c_fc.weight"].shape[1]
    out = {k: _tile(src[k], r) for k in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias")}
    # QKV: real heads first, reading 1/R of every copy; extra heads random.
    ws, bs = _split_qkv(src["attn.c_attn.weight"], e), _split_qkv(src["attn.c_attn.bias"], e)
    w_parts, b_parts = [], []
    for w, b in zip(ws, bs):
        real = _tile(w / r, r, dim=0)  # [R*E, E]
        w_parts.append(torch.cat([real, _rand(gen, big, big - e)], dim=1))  # [R*E, R*E]
        b_parts.append(torch.cat([b, _rand(gen, big - e)]))  # [R*E]
    out["attn.c_attn.weight"] = torch.cat(w_parts, dim=1)  # [R*E, 3*R*E]
    out["attn.c_attn.bias"] = torch.cat(b_parts)  # [3*R*E]
    # Attention out: real heads write every copy, extra heads' rows are zero.
    w_o = _tile(src["attn.c_proj.weight"], r, dim=1)  # [E, R*E]
    out["attn.c_proj.weight"] = torch.cat([w_o, torch.zeros(big - e, big)], dim=0)  # [R*E, R*E]
    out["attn.c_proj.bias"] = _tile(src["attn.c_proj.bias"], r)  # [R*E]
    # MLP: real units read 1/R of every copy; extra units random, saturated to exactly 0.
    w_fc_extra = _rand(gen, big, r * f - f)  # [R*E, R*F - F]
    out["mlp.c_fc.weight"] = torch.cat([_tile(src["mlp.c_fc.weight"] / r, r, dim=0), w_fc_extra], dim=1)
    sat = _saturating_bias(w_fc_extra, out["ln_2.weight"], out["ln_2.bias"], big)  # [R*F - F]
    out["mlp.c_fc.bias"] = torch.cat([src["mlp.c_fc.bias"], sat])  # [R*F]
    w_proj = _tile(src["mlp.c_proj.weight"], r, dim=1)  # [F, R*E]
    out["mlp.c_proj.weight"] = torch.cat([w_proj, _rand(gen, r * f - f, big)], dim=0)  # [R*F, R*E]
    out["mlp.c_proj.bias"] = _tile(src["mlp.c_proj.bias"], r)  # [R*E]
    return out


def _identity_layer(big: int, units: int, gen) -> dict:
    """A layer that returns its input exactly while running every matmul."""
    import torch

    out = {
        "ln_1.weight": 1.0 + 0.1 * torch.randn(big, generator=gen),
        "ln_1.bias": _rand(gen, big),
        "ln_2.weight": 1.0 + 0.1 * torch.randn(big, generator=gen),
        "ln_2.bias": _rand(gen, big),
    }
    # Q and K random, V exactly zero: attention output is 0 whatever the scores.
    w_qkv = torch.cat([_rand(gen, big, 2 * big), torch.zeros(big, big)], dim=1)  # [E, 3E]
    out["attn.c_attn.weight"] = w_qkv
    out["attn.c_attn.bias"] = torch.cat([_rand(gen, 2 * big), torch.zeros(big)])  # [3E]
    out["attn.c_proj.weight"] = _rand(gen, big, big)  # [E, E]
    c = TINY * (1.0 + torch.rand(big, generator=gen)) * torch.sign(torch.randn(big, generator=gen))  # [E]
    out["attn.c_proj.bias"] = c
    w_fc = _rand(gen, big, units)  # [E, F]
    out["mlp.c_fc.weight"] = w_fc
    out["mlp.c_fc.bias"] = _saturating_bias(w_fc, out["ln_2.weight"], out["ln_2.bias"], big)  # [F]
    out["mlp.c_proj.weight"] = _rand(gen, units, big)  # [F, E]
    out["mlp.c_proj.bias"] = -c  # x + c - c == x: c is far below half an ulp of any real entry
    return out


def scale_state_dict(sd: dict, n_layer: int, n_embd: int, factor: int, layers: int, seed: int = 0) -> dict:
    """The scaled model's tensors from a GPT-2 state dict (``transformer.`` prefix optional).

    ``factor`` must be a power of two (1/R scaling is then exact); ``layers >= n_layer``."""
    import torch

    if factor < 1 or factor & (factor - 1):
        raise StagedxError(f"--factor must be a power of two, got {factor}")
    if layers < n_layer:
        raise StagedxError(f"--layers must be at least the source's {n_layer}, got {layers}")
    sd = {k.removeprefix("transformer."): v.detach().to(torch.float32) for k, v in sd.items()}
    gen = torch.Generator().manual_seed(seed)
    e, r = n_embd, factor
    out = {"wte.weight": _tile(sd["wte.weight"], r), "wpe.weight": _tile(sd["wpe.weight"], r)}
    for i in range(n_layer):
        layer = {k.removeprefix(f"h.{i}."): v for k, v in sd.items() if k.startswith(f"h.{i}.")}
        out.update({f"h.{i}.{k}": v for k, v in _real_layer(layer, r, e, gen).items()})
    units = r * sd["h.0.mlp.c_fc.weight"].shape[1]
    for i in range(n_layer, layers):
        out.update({f"h.{i}.{k}": v for k, v in _identity_layer(r * e, units, gen).items()})
    out["ln_f.weight"] = _tile(sd["ln_f.weight"], r) / r
    out["ln_f.bias"] = _tile(sd["ln_f.bias"], r) / r
    if "lm_head.weight" in sd and not torch.equal(sd["lm_head.weight"], sd["wte.weight"]):
        raise StagedxError("only GPT-2 checkpoints with a tied output head can be scaled")
    return {f"transformer.{k}": v.contiguous() for k, v in out.items()}


def scaled_config(cfg: dict, factor: int, layers: int) -> dict:
    """The scaled model's config.json (fp32, n_inner unchanged when it is GPT-2's 4E)."""
    out = dict(cfg)
    if cfg.get("model_type") != "gpt2":
        raise StagedxError(f"only GPT-2 checkpoints can be scaled, not model_type {cfg.get('model_type')!r}")
    if not cfg.get("tie_word_embeddings", True):
        raise StagedxError("only GPT-2 checkpoints with a tied output head can be scaled")
    out.update(n_embd=factor * cfg["n_embd"], n_head=factor * cfg["n_head"], n_layer=layers, dtype="float32")
    if cfg.get("n_inner") is not None:
        out["n_inner"] = factor * cfg["n_inner"]
    out.pop("torch_dtype", None)
    return out


# -- checkpoint in, checkpoint out ------------------------------------------------------
def load_gpt2(path: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32", output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith("lm_head.weight")]
    if missing or info.get("unexpected_keys"):
        raise StagedxError(
            f"{path}: checkpoint does not match its config (missing {missing[:3]}, "
            f"unexpected {list(info.get('unexpected_keys', ()))[:3]})"
        )
    return model.eval()


def write_scaled(src: Path, out: Path, factor: int, layers: int, seed: int = 0) -> int:
    """Write the scaled checkpoint of ``src`` to ``out`` (a new folder); returns its parameter count."""
    from safetensors.torch import save_file

    cfg = json.loads((src / "config.json").read_text())
    new_cfg = scaled_config(cfg, factor, layers)
    model = load_gpt2(src)
    sd = scale_state_dict(model.state_dict(), cfg["n_layer"], cfg["n_embd"], factor, layers, seed)
    del model
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(new_cfg, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)
    n_params = sum(v.numel() for v in sd.values())
    tmp.rename(out)
    return n_params


def logits_rel_error(src_model, big_model, sequences) -> float:
    """max |big - src| / max |src| over the logits of every sequence (each scored once)."""
    import torch

    err, scale = 0.0, 0.0
    with torch.no_grad():
        for ids in sequences:
            x = torch.as_tensor([ids])
            ref = src_model(x).logits.float()  # [1, T, V]
            got = big_model(x).logits.float()  # [1, T, V]
            err = max(err, float((got - ref).abs().max()))
            scale = max(scale, float(ref.abs().max()))
    return err / max(scale, 1e-30)


def greedy_tokens(model, prompt: list, n: int) -> list:
    """``n`` greedy tokens after ``prompt`` (full recompute each step: small checks only)."""
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.as_tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def check_sequences(vocab: int, n_positions: int, seed: int = 1) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    length = min(64, n_positions)
    return [rng.integers(0, vocab, size=length).tolist() for _ in range(3)]


def cmd_scale(args) -> None:
    src, out = Path(args.src), Path(args.out)
    if not (src / "config.json").is_file():
        raise StagedxError(f"{src}: not a checkpoint folder (no config.json)")
    if out.exists():
        if not args.force:
            raise StagedxError(f"{out} exists (use --force to replace it)")
        shutil.rmtree(out)
    t0 = time.perf_counter()
    n_params = write_scaled(src, out, args.factor, args.layers, args.seed)
    print(f"{out}: {n_params:,} params, written in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    small, big = load_gpt2(src), load_gpt2(out)
    cfg = small.config
    rel = logits_rel_error(small, big, check_sequences(cfg.vocab_size, cfg.n_positions))
    same = greedy_tokens(small, [1, 2, 3], 8) == greedy_tokens(big, [1, 2, 3], 8)
    print(
        f"{out}: logits max rel error vs {src}: {rel:.2e} (limit {REL_TOL:.0e}); "
        f"greedy {'identical' if same else 'DIFFERENT'}",
        file=sys.stderr,
    )
    if not rel < REL_TOL or not same:
        raise StagedxError(f"{out}: scaled checkpoint does not reproduce {src} (rel error {rel:.2e})")


# -- exported bundles ------------------------------------------------------------------
def _runner(bundle: Path, role: str, threads: int):
    from stagedx.runtime.bundle import make_runner, open_bundle

    bundle_dir, manifest = open_bundle(bundle)
    return make_runner(bundle_dir, manifest, role, "cpu", threads)


def _runner_greedy(runner, prompt, n: int):
    """Greedy tokens and their top-1 logits from one model of a bundle (baseline decoding)."""
    import numpy as np

    from stagedx.runtime.runner import chain_mask

    runner.truncate(0)
    chain, tokens, values = np.asarray(prompt, np.int64), [], []
    for _ in range(n):
        out = runner.run(chain, runner.length + np.arange(len(chain)), chain_mask(len(chain)))
        runner.commit(np.arange(len(chain)))
        tokens.append(int(out.topk_indices[-1, 0]))
        values.append(float(out.topk_values[-1, 0]))
        chain = np.asarray(tokens[-1:], np.int64)
    return tokens, np.asarray(values)


def check_weight_bytes(bundle: Path) -> list:
    """Lines ``role: bytes vs params``; raises when a graph's initializers are not exactly 4
    (fp32) or 2 (fp16) bytes per parameter."""
    from stagedx.manifest import load_manifest

    m = load_manifest(bundle, check_files=False)
    lines = []
    for role in ("oracle", "draft"):
        e = m.models[role]
        per = {"fp32": 4, "fp16": 2}[e.dtype]
        lines.append(
            f"{role}: {e.weight_bytes:,} initializer bytes = {per} x {e.n_params:,} params"
            f" ({e.weight_bytes / (per * e.n_params):.6f})"
        )
        if e.weight_bytes != per * e.n_params:
            raise StagedxError(
                f"{bundle} {role}: {e.weight_bytes} initializer bytes for {e.n_params} params "
                f"at {per} bytes each: the exporter merged or dropped weights"
            )
    return lines


def compare_bundles(small: Path, big: Path, prompts: list, n: int, threads: int = 1) -> dict:
    """Greedy ``n`` tokens after each prompt (token ids) from the oracle and the draft of both
    bundles: raises when any differ; returns {role: max relative difference of the top-1 logit}."""
    import numpy as np

    worst = {}
    for role in ("oracle", "draft"):
        worst[role] = 0.0
        ours, theirs = _runner(small, role, threads), _runner(big, role, threads)
        for i, ids in enumerate(prompts):
            a, va = _runner_greedy(ours, ids, n)
            b, vb = _runner_greedy(theirs, ids, n)
            if a != b:
                raise StagedxError(f"{big} {role}: greedy output differs from {small} on prompt {i}")
            worst[role] = max(worst[role], float(np.abs(va - vb).max() / np.abs(va).max()))
    return worst


def cmd_check_bundle(args) -> None:
    from stagedx.bench.prompts import load_prompts
    from stagedx.runtime.tokenizer import Tokenizer

    small, big = Path(args.small), Path(args.big)
    for line in check_weight_bytes(big):
        print(f"{big} {line}", file=sys.stderr)
    tok = Tokenizer(small / "tokenizer.json")
    prompts = [tok.encode(p.text) for p in load_prompts("humaneval", limit=args.prompts)]
    worst = compare_bundles(small, big, prompts, args.tokens, args.threads)
    for role, rel in worst.items():
        print(
            f"{big} {role}: greedy output identical to {small} on {len(prompts)} HumanEval prompts x "
            f"{args.tokens} tokens (top-1 logit max rel difference {rel:.1e})",
            file=sys.stderr,
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scale", help="write a cost-scaled copy of a GPT-2 checkpoint and check it")
    s.add_argument("src", help="source checkpoint folder (GPT2LMHeadModel, tied head)")
    s.add_argument("out", help="output checkpoint folder")
    s.add_argument("--factor", type=int, required=True, help="width factor R (a power of two)")
    s.add_argument("--layers", type=int, required=True, help="layers of the scaled model (>= the source's)")
    s.add_argument("--seed", type=int, default=0, help="seed of the weights that carry no signal")
    s.add_argument("--force", action="store_true", help="replace an existing output folder")
    c = sub.add_parser("check-bundle", help="compare a scaled bundle with the small bundle")
    c.add_argument("small", help="bundle exported from the source checkpoints")
    c.add_argument("big", help="bundle exported from the scaled checkpoints")
    c.add_argument("--prompts", type=int, default=3, help="HumanEval prompts to decode")
    c.add_argument("--tokens", type=int, default=24, help="greedy tokens per prompt")
    c.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        {"scale": cmd_scale, "check-bundle": cmd_check_bundle}[args.cmd](args)
    except StagedxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
