"""stagedx.bench."""
