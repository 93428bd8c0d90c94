"""A draft for SmolLM2-135M with the same tokenizer: its first N decoder layers (default 2),
embedding, final norm and tied head kept as they are. Usage:
    python make_trunc_draft.py /work/cache/smollm2-135m-instruct OUT_DIR [N]"""

import json
import shutil
import sys
from pathlib import Path

from safetensors.numpy import load_file, save_file

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 2
dst.mkdir(parents=True, exist_ok=True)
cfg = json.loads((src / "config.json").read_text())
cfg["num_hidden_layers"] = n
(dst / "config.json").write_text(json.dumps(cfg, indent=2))
tensors = load_file(str(src / "model.safetensors"))
keep = {k: v for k, v in tensors.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < n}
save_file(keep, str(dst / "model.safetensors"), metadata={"format": "pt"})
for f in src.iterdir():
    if f.suffix in (".json", ".jinja") and f.name != "config.json":
        shutil.copyfile(f, dst / f.name)
