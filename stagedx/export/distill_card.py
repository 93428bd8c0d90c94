"""The model card (README.md) that ``stagedx distill`` writes into its checkpoint folder."""

from __future__ import annotations

ROWS = (
    ("per-token KL(oracle ‖ draft), nats, T=1", "kl", "{:.4f}"),
    ("top-1 agreement", "top1", "{:.3f}"),
    ("tokens per oracle call, 4-chain, greedy", "greedy_tokens", "{:.3f}"),
    ("tokens per oracle call, 4-chain, top-k 50, T=1", "topk_tokens", "{:.3f}"),
)


def _table(before: dict, after: dict) -> list[str]:
    lines = ["| metric (held-out) | before | after |", "|---|---|---|"]
    for label, key, fmt in ROWS:
        b, a = fmt.format(before[key]), fmt.format(after[key])
        if key == "topk_tokens":
            b += f" ± {before['topk_stderr']:.3f}"
            a += f" ± {after['topk_stderr']:.3f}"
        lines.append(f"| {label} | {b} | {a} |")
    return lines


def model_card(record: dict) -> str:
    """Markdown describing how the draft was made and how well it matches its oracle."""
    opts, run, corpus, after = record["options"], record["run"], record["corpus"], record["after"]
    start = (
        f"initialised from `{record['init']}`"
        if record["init"]
        else f"fresh random weights, shape {'x'.join(map(str, record['shape']))} (layers x width x heads)"
    )
    budget = f"{opts['minutes']} minutes" if opts.get("minutes") else f"{opts['steps']} steps"
    warp = f"T={opts['temperature']:g}" + (f", top-k {opts['top_k']}" if opts["top_k"] else ", full vocabulary")
    lines = [
        "# Distilled draft",
        "",
        f"A draft model distilled by `stagedx distill` to match the oracle `{record['oracle']}` "
        f"({record['n_params']:,} parameters, {start}). Its vocabulary and tokenizer are the "
        "oracle's, so `stagedx export ORACLE --draft THIS_FOLDER` pairs them directly.",
        "",
        "Made with:",
        "",
        "```",
        record["command"] or "(called from Python)",
        "```",
        "",
        "## Training",
        "",
        f"- Loss: forward KL from the oracle's next-token distribution ({warp}) at every position "
        f"of random {opts['seq_len']}-token windows, batch {opts['batch']}, AdamW lr {opts['lr']:g} "
        f"(warm-up, cosine to 10%), gradient norm clipped at 1, {run['precision']}, seed {opts['seed']}.",
        f"- Corpus: {', '.join(corpus['paths'])}; {corpus['train_tokens']:,} training tokens from "
        f"{corpus['train_files']} files.",
        f"- Budget {budget}: {run['steps']} steps ({run['tokens']:,} tokens) in "
        f"{run['seconds'] / 60:.1f} min of training on {record['device']} with "
        f"{record['threads']} thread(s); created {record['created_utc']}.",
        "",
        "## Agreement with the oracle",
        "",
        f"Held-out text: {corpus['heldout']} ({corpus['heldout_tokens']:,} tokens); "
        f"{after['n_contexts']} windows of {after['n_tokens'] // max(after['n_contexts'], 1)} tokens.",
        "",
        *_table(record["before"], after),
        "",
        "KL and top-1 are averaged over every position of the windows. Tokens per oracle call: "
        "1 + the expected number of a 4-token draft chain's tokens accepted, from each window's "
        "end. Greedy: exact (both models run along the draft's greedy chain). Top-k 50: exact "
        "acceptance probabilities sum_x min(p, q) at each depth along one accepted path per "
        "window (drawn from min(p, q), fixed seed), so the figure is an estimate ± its standard "
        "error. See `distill.json` for every figure and option.",
        "",
    ]
    return "\n".join(lines)


def offline_card(record: dict) -> str:
    """Markdown for a draft trained by ``stagedx distill --targets`` (stored oracle targets)."""
    opts, run, tg = record["options"], record["run"], record["targets"]
    before, after = record["before"], record["after"]
    meta = tg["meta"]

    def chain(m: dict) -> str:
        return "-" if m["gen_greedy_chain_tokens"] is None else f"{m['gen_greedy_chain_tokens']:.3f}"

    head = f"{opts['head_vocab']}-token frequency-ranked head" if opts["head_vocab"] else "full-vocabulary head"
    budget = f"{opts['minutes']} minutes" if opts.get("minutes") else f"{opts['steps']} steps"
    lines = [
        "# Draft trained on stored oracle targets",
        "",
        f"The oracle's first {opts['layers']} layer(s), embedding and final norm, tied {head} "
        f"({record['n_params']:,} parameters, {record['head_params']:,} of them in the head's rows), "
        f"trained by `stagedx distill --targets` on the stored top-k targets of `{opts['oracle']}` "
        f"in `{opts['targets']}`. The oracle's greedy token is inside the head at "
        f"{100 * tg['oracle_top1_in_head']:.1f}% of the validation positions.",
        "",
        "```",
        record["command"] or "(called from Python)",
        "```",
        "",
        "## Training",
        "",
        f"- Data: {tg['shards']} shards, {tg['train_positions']:,} training positions in "
        f"{tg['train_sequences']} sequences (corpus windows and the oracle's own answers to chat "
        f"prompts); {tg['valid_shards']} held-out shard(s) ({tg['valid_positions']:,} positions) "
        "are the validation set. "
        f"The targets' corpus: {meta.get('corpus_train_tokens', 0):,} tokens from "
        f"{meta.get('corpus_train_files', 0)} files, {meta.get('prompts', 0)} prompts.",
        f"- Loss `{opts['loss']}`, windows of {opts['seq_len']} tokens, batch {opts['batch']}, AdamW lr "
        f"{opts['lr']:g} (warm-up, cosine to 10%), seed {opts['seed']}; budget {budget}: {run['steps']} steps "
        f"in {run['seconds'] / 60:.1f} min on {run['device']}.",
        "",
        "## Agreement with the oracle (validation shards, no oracle run)",
        "",
        "| metric | before | after |",
        "|---|---|---|",
        f"| KL(top-k + tail), nats/position | {before['kl_topk_tail']:.4f} | {after['kl_topk_tail']:.4f} |",
        f"| top-1 agreement | {before['top1']:.3f} | {after['top1']:.3f} |",
        f"| greedy 4-chain tokens per oracle call, generated text | {chain(before)} | {chain(after)} |",
        "",
        "KL(top-k + tail): the oracle's top-k ids that the head can score plus one bucket for "
        "the rest. The chain figure is exact on the oracle's own greedy answers: an accepted "
        "draft token continues the stored text itself. See `distill.json` for every figure.",
        "",
    ]
    return "\n".join(lines)
