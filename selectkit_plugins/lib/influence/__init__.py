"""Gradient-based influence: per-example gradient features and the scoring math (TracIn, LESS,
DataInf, inverse-Hessian, EK-FAC, self-influence, GraNd). What the core uses too comes through
`selectkit.plugin`: the random projections, the gradient store and a checkpoint's AdamW state.

Modules are small and import torch only inside functions or on import of the module
itself (never from `selectkit_plugins.lib.influence` or from plugin modules), so recipe validation
stays torch-free. Sign convention everywhere: a positive score means the training example
is helpful for the target (its gradient step lowers the target loss), the opposite of
some reference codes (DataInf's returns the negation).
"""
