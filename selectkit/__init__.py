"""selectkit: declarative data selection. Load a YAML recipe, validate it, compile it to a plan, run it.

    import selectkit
    selectkit.validate("recipes/quickstart.yaml")
    out = selectkit.run("recipes/quickstart.yaml")   # or a dict, YAML text; pool=/targets= in memory
    out.selection, out.subset(), out.explain("some-id")
    train = selectkit.load_selection(out.run_dir)     # a datasets.Dataset with weight/count/rank/score.*
    sampler = selectkit.as_sampler(train, seed=0)     # a seeded torch WeightedRandomSampler

See docs/python.md.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # The API is imported on first use so `import selectkit` stays cheap.
    if name in {"load", "validate", "plan", "run", "run_plan"}:
        from selectkit import api

        return getattr(api, name)
    if name in {"load_selection", "load_selection_polars", "as_sampler"}:
        from selectkit.results import loading

        return getattr(loading, name)
    raise AttributeError(name)
