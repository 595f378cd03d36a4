"""selectkit: declarative data selection. Load a YAML recipe, validate it, compile it to a plan, run it."""

__version__ = "0.1.0"
