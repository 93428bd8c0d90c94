"""llama.cpp as a ``--peers`` method: what a CPU user would run on the same model.

Through the ``llama-cpp-python`` binding, on the GGUF file the oracle came from (``--gguf``,
else the GGUF path the manifest records as the oracle's source), with the same prompts as
token ids from the bundle's own tokenizer (no BOS added, nothing re-tokenized), the same
thread count and exactly ``max_new_tokens`` new tokens (llama.cpp's ``generate`` does not stop
at EOS by itself). Two methods:

- ``llama.cpp``: plain decode, one ``llama_decode`` per token;
- ``llama.cpp-lookup``: the binding's speculative mode, ``LlamaPromptLookupDecoding`` as its
  draft model (n-gram lookup in the prompt and output so far; every draft is verified in one
  batched ``llama_decode``), the binding's only draft mode.

Both run greedy (``temp=0``: llama.cpp's greedy sampler) and sampled modes (``top_k``, ``top_p``
and ``temp`` from the mode, every other filter neutral: min-p 0, typical 1, no repeat
penalty), seeded per run. Timing
is stagedx's: the run's wall clock, its prefill (every prompt token but the last, as stagedx's
prefill) recorded apart so that decode tokens/s excludes it; the first decode call evaluates
the last prompt token and yields the first new token; ``oracle_calls`` counts decode calls.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import StagedxError
from ..files import sha256_file
from .prompts import Prompt

LLAMACPP_METHODS = ("llama.cpp", "llama.cpp-lookup")
LOOKUP_NGRAM = 2  # the binding's defaults
LOOKUP_TOKENS = 10


def gguf_source(manifest, bundle: Path, override: str | None) -> Path | None:
    """The GGUF file to run: ``override``, else the file the oracle was exported from when that
    was a GGUF file (its ``checkpoint`` path ending in ``.gguf``, or the file name in
    ``source["gguf"]``), looked for as given, from the working directory, in the bundle and
    beside it."""
    if override:
        path = Path(override)
        if not path.is_file():
            raise StagedxError(f"--gguf {override}: no such file")
        return path
    source = dict(manifest.models["oracle"].source or {})
    recorded = [v for v in (source.get("checkpoint"),) if isinstance(v, str) and v.lower().endswith(".gguf")]
    gguf = source.get("gguf")
    recorded += [gguf] if isinstance(gguf, str) else [gguf["file"]] if isinstance(gguf, dict) and "file" in gguf else []
    for name in recorded:
        p = Path(name)
        for cand in [p] if p.is_absolute() else [Path.cwd() / p, Path(bundle) / p, Path(bundle).parent / p]:
            if cand.is_file():
                return cand
    return None


def unavailable_reason(manifest, bundle: Path, gguf: str | None) -> str | None:
    """Why the llama.cpp peers cannot run here (None when they can)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return (
            "llama.cpp peers skipped: the llama-cpp-python package is not installed "
            "(pip install llama-cpp-python; it compiles llama.cpp, see docs/bench.md)"
        )
    if gguf_source(manifest, bundle, gguf) is None:
        return "llama.cpp peers skipped: the bundle records no GGUF source for its oracle; pass --gguf FILE"
    return None


class LlamaCppModel:
    """One ``llama_cpp.Llama`` on the GGUF file; with ``lookup``, prompt-lookup decoding as its
    draft model (the binding then keeps every position's logits, which verification needs: a
    plain instance cannot be switched to it, hence one instance per method)."""

    def __init__(self, path: Path, threads: int, n_ctx: int, vocab_size: int, lookup: bool = False):
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.path, self.module = Path(path), llama_cpp
        draft = None
        if lookup:
            draft = LlamaPromptLookupDecoding(max_ngram_size=LOOKUP_NGRAM, num_pred_tokens=LOOKUP_TOKENS)
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=int(n_ctx),
                n_batch=512,
                n_threads=int(threads),
                n_threads_batch=int(threads),
                draft_model=draft,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise StagedxError(f"llama.cpp cannot load {path}: {exc}") from None
        if self.llm.n_vocab() != vocab_size:
            raise StagedxError(
                f"--gguf {path}: its vocabulary has {self.llm.n_vocab()} tokens, the bundle's {vocab_size}: "
                "not the same model"
            )
        self.threads = int(threads)

    def info(self) -> dict:
        return {
            "gguf": str(self.path),
            "gguf_sha256": sha256_file(self.path),
            "llama_cpp_python": getattr(self.module, "__version__", None),
            "system_info": self.module.llama_print_system_info().decode(errors="replace").strip(),
            "n_ctx": self.llm.n_ctx(),
            "threads": self.threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # see docs/bench.md: it matters on a busy CPU
        }


def sampler_kwargs(sampling: str) -> dict:
    from ..runtime import SamplingConfig

    cfg = SamplingConfig.parse(sampling)
    neutral = dict(min_p=0.0, typical_p=1.0, repeat_penalty=1.0)
    if cfg.greedy:
        return dict(neutral, top_k=1, top_p=1.0, temp=0.0)
    # llama.cpp's top-k sampler keeps everything for k <= 0, like stagedx's top_k=0
    return dict(neutral, top_k=int(cfg.top_k), top_p=float(cfg.top_p), temp=float(cfg.temperature))


class LlamaCppMethod:
    family = "llama.cpp"

    def __init__(self, model: LlamaCppModel, tokenizer, max_new_tokens: int):
        self.name = LLAMACPP_METHODS[1] if model.llm.draft_model is not None else LLAMACPP_METHODS[0]
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens

    def supports(self, sampling: str) -> bool:
        return True  # greedy, top-k, top-p and temperature all map onto llama.cpp's sampler chain

    def run(self, prompt: Prompt, sampling: str, seed: int) -> dict:
        llm = self.model.llm
        ids = [int(t) for t in self.tokenizer.encode(prompt.text)]
        if len(ids) + self.max_new_tokens + LOOKUP_TOKENS + 1 > llm.n_ctx():
            raise StagedxError(f"llama.cpp peer: prompt {prompt.id} does not fit its context of {llm.n_ctx()}")
        llm.reset()  # no KV-cache reuse from the previous run: every run evaluates its prompt
        llm.set_seed(int(seed))
        calls, out = [0], []
        evaluate = llm.eval

        def counted(tokens):
            calls[0] += 1
            return evaluate(tokens)

        try:
            # Prefill as stagedx's: every prompt token but the last. generate() then finds that
            # prefix in the cache and its first decode call evaluates the last prompt token.
            t0 = time.perf_counter()
            evaluate(ids[:-1])
            prefill = time.perf_counter() - t0
            llm.eval = counted  # generate() calls self.eval once per llama_decode round
            stream = llm.generate(ids, reset=True, **sampler_kwargs(sampling))
            for token in stream:
                out.append(int(token))
                if len(out) >= self.max_new_tokens:
                    break
            wall = time.perf_counter() - t0
            stream.close()
        finally:
            llm.__dict__.pop("eval", None)
        return {
            "new_tokens": len(out),
            "oracle_calls": calls[0],
            "wall_s": wall,
            "time_s": {"prefill": prefill},
            "prompt_tokens": len(ids),
            "tokens": out,
        }


def make_llamacpp_peers(gen, gguf: Path, threads: int, max_new_tokens: int, prompts) -> list[LlamaCppMethod]:
    longest = max(len(gen.tokenizer.encode(p.text)) for p in prompts)
    n_ctx = 256 * -(-(longest + max_new_tokens + LOOKUP_TOKENS + 1) // 256)
    vocab = int(gen.manifest.tokenizer.vocab_size)
    models = [LlamaCppModel(gguf, threads, n_ctx, vocab, lookup) for lookup in (False, True)]
    return [LlamaCppMethod(model, gen.tokenizer, max_new_tokens) for model in models]
