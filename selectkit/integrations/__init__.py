"""Integrations with training libraries, each a module of its own that imports its library (so
`import selectkit` imports none of them): `selectkit.integrations.transformers`."""
