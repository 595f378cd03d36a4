"""From a loaded recipe to a Plan: type-check it against the installed components (check), then
compile it into typed steps with cache keys and cost estimates (compile), guarding the outputs."""
