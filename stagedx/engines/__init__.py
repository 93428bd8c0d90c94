"""stagedx.engines."""
