"""stagedx.export."""
