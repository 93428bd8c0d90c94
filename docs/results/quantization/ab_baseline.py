# Interleaved baseline A/B (min of 3 runs of 64 tokens, one prompt),
# fp32 vs int8 vs int4 small-pair bundles.
# Run: STAGEDX_ORT_GLOBAL_POOL=0 PYTHONPATH=. flock /tmp/stagedx-timing.lock \
#      python docs/results/quantization/ab_baseline.py
import time

from stagedx.runtime import Generator

P = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
for threads in (1, 2):
    gens = {
        k: Generator(f"/work/bundles/{b}", device="cpu", threads=threads)
        for k, b in (("fp32", "stdlib-code-pair"), ("int8", "quant-small-int8"), ("int4", "quant-small-int4"))
    }
    best = dict.fromkeys(gens, 1000000000.0)
    for _rep in range(3):
        for k, g in gens.items():
            t0 = time.perf_counter()
            g.generate(P, max_new_tokens=64, strategy="baseline", ignore_eos=True)
            best[k] = min(best[k], time.perf_counter() - t0)
    print(f"threads {threads}: " + ", ".join(f"{k} {64 / v:.1f} tok/s" for k, v in best.items()), flush=True)
