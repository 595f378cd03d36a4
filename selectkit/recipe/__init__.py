"""The recipe format: pydantic models (spec), safe YAML with positions (yamlsource), JSON Schema."""
