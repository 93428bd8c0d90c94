"""Write chat prompts for self-generated distillation text (``stagedx distill-targets --prompts``).

Instructions are built from this interpreter's standard library (the first line of public
function docstrings, module names) and a fixed list of everyday topics, then split by a
seeded shuffle into a training file and a held-out file:

    python tools/draft_prompts.py OUT_DIR [--seed 0] [--heldout 100]
"""

from __future__ import annotations

import argparse
import ast
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stagedx.export.corpus import resolve_corpus  # noqa: E402

TOPICS = (
    "the water cycle",
    "how vaccines work",
    "the history of the printing press",
    "photosynthesis",
    "why the sky is blue",
    "how to learn a new language",
    "the benefits of regular exercise",
    "how a bicycle works",
    "the causes of inflation",
    "how to write a good email",
    "black holes",
    "the French Revolution",
    "how computers store numbers",
    "time management",
    "climate change",
    "the rules of chess",
    "how bread rises",
    "the solar system",
    "volcanoes",
    "how to cook rice",
    "the internet",
    "democracy",
    "how plants grow",
    "the human heart",
    "renewable energy",
    "recycling",
    "the Roman Empire",
    "how airplanes fly",
    "sleep",
    "healthy eating",
)
CHAT = (
    "Explain {t} in simple terms.",
    "Write a short paragraph about {t}.",
    "Give me three facts about {t}.",
    "What should a beginner know about {t}?",
    "Summarize {t} in two sentences.",
)


def _doc_lines(path: Path) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            line = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
            if 20 <= len(line) <= 120 and line.endswith("."):
                out.append((node.name, line))
    return out


def prompts() -> list[str]:
    result = [c.format(t=t) for t in TOPICS for c in CHAT]
    for f in resolve_corpus(["stdlib"]):
        mod = f.stem
        for name, line in _doc_lines(f):
            what = line[0].lower() + line[1:-1]
            result += [
                f"Write a Python function `{name}` that does the following: {what}.",
                f"In Python's {mod} module, what does {name}() do?",
            ]
    return sorted(set(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout", type=int, default=100)
    args = ap.parse_args()
    items = prompts()
    random.Random(args.seed).shuffle(items)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "heldout.txt").write_text("\n".join(items[: args.heldout]) + "\n")
    (args.out / "train.txt").write_text("\n".join(items[args.heldout :]) + "\n")
    print(f"{len(items) - args.heldout} training prompts, {args.heldout} held out -> {args.out}")


if __name__ == "__main__":
    main()
