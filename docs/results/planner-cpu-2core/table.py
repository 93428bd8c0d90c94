"""The headline table of this folder from its bench.json files (speedups: mean over prompts,
end to end, as bench.txt's speedup column; 'auto / best' = auto over the better of baseline and
speculative)."""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
rows = [
    "| bundle | sampling | baseline tok/s | speculative | staged | **auto** | auto / best | load before/after |",
    "|---|---|---|---|---|---|---|---|",
]
for name in sys.argv[1:]:
    d = json.loads((HERE / name / "bench.json").read_text())
    load = d["environment"].get("load_average", {})
    for sampling, cells in d["summary"].items():
        sp = {m: c.get("speedup_mean", 1.0) for m, c in cells.items()}
        best = max(1.0, sp.get("speculative", 0.0))
        rows.append(
            f"| {name} | {sampling} | {cells['baseline']['tokens_per_s']:.1f} | {sp['speculative']:.2f}x | "
            f"{sp['staged']:.2f}x | **{sp['auto']:.2f}x** | {sp['auto'] / best:.2f} | "
            f"{load.get('before', '-')}/{load.get('after', '-')} |"
        )
print("\n".join(rows))
