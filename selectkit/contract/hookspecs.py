"""The whole plugin contract. Each hook hands the plugin a `register` callable;
call it once per component class. Built-ins in `plugins/` use exactly these hooks."""

import pluggy

hookspec = pluggy.HookspecMarker("selectkit")
hookimpl = pluggy.HookimplMarker("selectkit")


@hookspec
def register_scorers(register):
    """Register Scorer subclasses: data (+ model, + targets) -> a score per pool example."""


@hookspec
def register_normalizers(register):
    """Register Normalizer subclasses: a score -> a score of the same shape."""


@hookspec
def register_selectors(register):
    """Register Selector subclasses: scores + candidates -> the kept subset (and weights)."""


@hookspec
def register_passes(register):
    """Register PassProvider subclasses: the model work (forward features, gradients, training)
    behind the request kinds scorers declare. Only providers load models."""


@hookspec
def register_verifiers(register):
    """Register Verifier subclasses: a generated completion + a reference answer -> pass or fail
    (the checks behind sampled-completion scorers such as pass_rate)."""


@hookspec
def register_readers(register):
    """Register Reader subclasses: a file or folder format -> a table of examples."""


@hookspec
def register_executors(register):
    """Register Executor subclasses: run a compiled Plan (local process, a cluster...)."""
