"""Data layer: sources -> media -> features -> records -> samples (imports only ever point back up this chain)."""
