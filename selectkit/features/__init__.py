"""Model passes: per-example features computed once per (model, data, settings)."""
