"""A draft for a GGUF (or checkpoint-folder) oracle in seconds: its first N layers, untrained.

    python tools/truncated_draft.py ORACLE N OUT

ORACLE is a GGUF file (read as ``stagedx export`` reads it) or a Hugging Face checkpoint
folder of a decoder family (``model.layers.{i}.*`` tensors); OUT receives a checkpoint folder
with the same config, tokenizer and chat template but ``num_hidden_layers = N``: the embedding,
the first N blocks and the final norm. Such a copy shares the oracle's tokenizer, which is all
``stagedx export`` needs of a draft; its predictions are poor (a measured top-1 agreement of
~0.03 with SmolLM2 for N = 2): a trained draft (``stagedx distill``) replaces it.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

LAYER = re.compile(r"^(model\.)?layers\.(\d+)\.")


def truncate(folder: Path, n: int, out: Path) -> None:
    from safetensors.torch import load_file, save_file

    cfg = json.loads((folder / "config.json").read_text())
    if not 1 <= n < int(cfg["num_hidden_layers"]):
        raise SystemExit(f"N must be in 1..{int(cfg['num_hidden_layers']) - 1}, got {n}")
    tensors = load_file(str(folder / "model.safetensors"))
    keep = {k: v for k, v in tensors.items() if (m := LAYER.match(k)) is None or int(m.group(2)) < n}
    out.mkdir(parents=True, exist_ok=True)
    cfg["num_hidden_layers"] = n
    for key in ("layer_types", "sliding_window_pattern"):  # per-layer lists follow the depth
        if isinstance(cfg.get(key), list):
            cfg[key] = cfg[key][:n]
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    save_file(keep, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    oracle, n, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    if oracle.is_dir():
        truncate(oracle, n, out)
        return
    from stagedx.export.gguf import materialize

    with tempfile.TemporaryDirectory(prefix="stagedx-draft-") as tmp:
        materialize(oracle, Path(tmp))
        truncate(Path(tmp), n, out)


if __name__ == "__main__":
    main()
