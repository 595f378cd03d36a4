"""selectkit's built-in components. Each module registers through the `selectkit`
entry-point group (see pyproject.toml), exactly as a third-party plugin does."""
