"""stagedx.runtime."""
