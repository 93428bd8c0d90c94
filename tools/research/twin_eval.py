"""Acceptance of every method on the bench prompts, run on a small twin, priced at a big
bundle's cost (acceptance statistics gathered on the small model, priced with the large
one's measured cost curve). Not a benchmark: the tokens/s claim still comes from
``stagedx bench`` on the big bundle itself.

usage: python tools/research/twin_eval.py BIG TWIN [LIMIT] [NEW_TOKENS] [--untuned]

BIG's manifest supplies the tuned trees and the latency curves stored by ``stagedx tune``
(for ``cpu|onnxruntime|2``); TWIN (same functions, e.g. the pair BIG was scaled from) runs the
generations. ``--untuned`` keeps TWIN's own default trees.
"""

import sys

from stagedx.bench.bench import STAGEDX_METHODS
from stagedx.bench.costs import interp
from stagedx.bench.prompts import load_prompts
from stagedx.manifest import load_manifest
from stagedx.runtime import Generator, SamplingConfig
from stagedx.runtime.shapes import TreeChoice, sampling_mode

KEY = "cpu|onnxruntime|2"


def main(argv: list) -> None:
    args = [a for a in argv if not a.startswith("--")]
    if len(args) < 2:
        sys.exit(__doc__.split("usage: ")[1].split("\n")[0])
    big, twin = args[0], args[1]
    limit, ntok = (int(args[2]) if len(args) > 2 else 5), (int(args[3]) if len(args) > 3 else 64)
    mb = load_manifest(big, check_files=False)
    entry = mb.tuning.get(KEY)
    if entry is None or entry.oracle_latency_s is None:
        sys.exit(f"{big}: no curves stored under {KEY!r}: run stagedx tune first")
    curves = {
        m: {int(k): v for k, v in stored.items()}
        for m, stored in (("oracle", entry.oracle_latency_s), ("draft", entry.draft_latency_s))
    }
    ob, db = mb.oracle.weight_bytes, mb.draft.weight_bytes
    with Generator(twin, device="cpu", threads=1) as gen:
        # BIG's tuned trees, passed to every call (with --untuned: TWIN's own tuned / default ones)
        tuned = gen.tuned if "--untuned" in argv else entry.modes()
        trees = TreeChoice(tuned=tuned, has_draft2=gen.draft2.kind != "none")
        prompts = load_prompts("humaneval", limit)
        for s in ("greedy", "topk:50"):
            mode = sampling_mode(SamplingConfig.parse(s))
            for name in STAGEDX_METHODS:
                strategy, tree = ("staged", trees.three_stage(mode)) if name == "staged3" else (name, trees.tree(mode))
                tok = calls = dcalls = 0
                cost = 0.0
                for i, p in enumerate(prompts):
                    r = gen.generate(
                        p.text,
                        max_new_tokens=ntok,
                        sampling=s,
                        seed=i,
                        strategy=strategy,
                        tree=tree,
                        ignore_eos=True,
                        truncate=True,
                    )
                    st = r.stats
                    tok, calls, dcalls = tok + st.new_tokens, calls + st.oracle_calls, dcalls + st.draft_calls
                    cost += sum(n * interp(curves[m], t) for m in curves for t, n in st.call_sizes[m].items())
                print(
                    f"{s:8s} {name:12s} tokens/call {tok / calls:5.2f}  "
                    f"rel.traffic {(calls * ob + dcalls * db) / (tok * ob):.3f}  "
                    f"priced speedup {tok * curves['oracle'][1] / cost:.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main(sys.argv[1:])
