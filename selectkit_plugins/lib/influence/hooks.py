"""Per-example gradients of single layers from forward hooks: one forward and one backward of
the summed per-example losses give each tracked layer's inputs a and output gradients g, regrouped
by example to (B, T, d) whatever shape the layer saw (OPT's MLP sees (B*T, d)); the per-example
weight gradient is then a batched product (`weight_grad`) or is never formed (ghost norms, LoGra).
Layer types: Linear, transformers' Conv1D (weight stored (d_in, d_out)) and Embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from selectkit_plugins.lib.influence.layers import GradientSupportError, layer_dims, layer_kind, model_type

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from selectkit_plugins.lib.influence.grads import Batch, LossFn


def gradient_layers(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Layers to track by hooks: the given names (Linear, Conv1D or Embedding layers), or every
    such layer whose weight is trainable (for a peft model: exactly the lora_A/lora_B leaves)."""
    return _layers(model, names, ("linear", "conv1d", "embedding"))


def linear_modules(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Linear and Conv1D layers to track (EK-FAC's): the given names, or every one whose weight is
    trainable (for a peft model that is exactly the lora_A/lora_B leaves)."""
    return _layers(model, names, ("linear", "conv1d"))


def _layers(model: nn.Module, names: Sequence[str] | None, kinds: tuple[str, ...]) -> dict[str, nn.Module]:
    if names is None:
        return {n: m for n, m in model.named_modules() if layer_kind(m) in kinds and m.weight.requires_grad}
    every = dict(model.named_modules())
    missing = [n for n in names if n not in every]
    if missing:
        raise GradientSupportError(f"{model_type(model)}: no layers named {missing[:3]}")
    for n in names:
        if layer_kind(every[n]) not in kinds:
            raise GradientSupportError(f"{model_type(model)}: layer {n} is a {type(every[n]).__name__}; this "
                                       f"supports {', '.join(kinds)} layers")
    return {n: every[n] for n in names}


def capture(model: nn.Module, modules: dict[str, nn.Module], loss_fn: LossFn, batch: Batch,
            ) -> tuple[torch.Tensor, dict[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """One forward + backward; returns per-example losses (B,) and, per tracked layer, a list
    (one item per call) of (inputs, output gradients) grouped by example: activations (B, T, d_in)
    (token ids (B, T) for an Embedding) and output gradients (B, T, d_out). Layers that see the
    batch flattened (OPT's MLP: (B*T, d)) are regrouped by `group_rows`."""
    import torch

    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in modules}

    def hook(name):
        def fn(_module, args, kwargs, out):
            x = args[0] if args else next(iter(kwargs.values()))  # a layer called as layer(input=x)
            inputs[name].append(x.detach())
            outputs[name].append(out)
        return fn

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in modules.items()]
    try:
        losses = loss_fn(model, batch)
    finally:
        for h in handles:
            h.remove()
    flat = [(n, i, o) for n in modules for i, o in enumerate(outputs[n]) if o.requires_grad]
    grads = torch.autograd.grad(losses.sum(), [o for _, _, o in flat], allow_unused=True) if flat else []
    got = {(n, i): g for (n, i, _), g in zip(flat, grads)}
    n_ex = losses.shape[0]
    ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    tokens = ids.shape[1] if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None
    mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
    records: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for n, module in modules.items():
        embedding = layer_kind(module) == "embedding"
        pairs = []
        for i, (a, o) in enumerate(zip(inputs[n], outputs[n])):
            g = got.get((n, i))
            g = torch.zeros_like(o) if g is None else g.detach()
            try:
                a, g = group_rows(a, n_ex, tokens, mask, 0 if embedding else 1), group_rows(g, n_ex, tokens, mask)
            except ValueError as exc:
                raise GradientSupportError(f"{model_type(model)}: layer {n} ({type(module).__name__}) {exc}",
                                           hint="use method: vmap") from None
            if embedding and module.padding_idx is not None:
                g = g * (a != module.padding_idx).unsqueeze(-1).to(g.dtype)  # no gradient reaches that row
            pairs.append((a, g))
        records[n] = pairs
    return losses.detach(), records


def group_rows(x: torch.Tensor, n: int, tokens: int | None = None, mask: torch.Tensor | None = None,
               feature_dims: int = 1) -> torch.Tensor:
    """Regroup a layer's input or output (leading dims, then `feature_dims` feature dims) by
    example: (n, ...) -> (n, T, ...); flattened rows (n*tokens, ...) -> (n, tokens, ...);
    unpadded rows (mask.sum(), ...) (the non-padding tokens in row-major order, as unpadded
    attention kernels take them) -> (n, tokens, ...) with zeros at padding; (n*k, ...) -> (n, k, ...).
    transformers' OPT flattens (B, T, d) with padding kept, the n*tokens case."""
    lead, feat = x.shape[:x.dim() - feature_dims], x.shape[x.dim() - feature_dims:]
    if len(lead) >= 1 and lead[0] == n:
        return x.reshape(n, -1, *feat)
    if len(lead) == 1:
        rows = lead[0]
        if tokens and rows == n * tokens:
            return x.reshape(n, tokens, *feat)
        if mask is not None and mask.shape[0] == n and rows == int(mask.sum()):
            out = x.new_zeros((mask.numel(), *feat))
            out[mask.reshape(-1).bool()] = x
            return out.reshape(n, mask.shape[1], *feat)
        if rows % n == 0:
            return x.reshape(n, rows // n, *feat)
    raise ValueError(f"sees a tensor of shape {tuple(x.shape)} for a batch of {n} examples"
                     + (f" of {tokens} tokens" if tokens else "") + ": cannot tell which rows belong to which example")


def joined(pairs: list[tuple[torch.Tensor, torch.Tensor]], module: nn.Module, n: int,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's calls in one forward joined along tokens (their gradients add up); a layer the
    forward never called gets one all-zero token."""
    import torch

    if pairs:
        return torch.cat([a for a, _ in pairs], dim=1), torch.cat([g for _, g in pairs], dim=1)
    w = module.weight
    d_in, d_out = layer_dims(module)
    a = (torch.zeros(n, 1, dtype=torch.long, device=w.device) if layer_kind(module) == "embedding"
         else w.new_zeros(n, 1, d_in))
    return a, w.new_zeros(n, 1, d_out)


def with_bias_column(a: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)


def linear_grad(a: torch.Tensor, g: torch.Tensor, bias: bool) -> torch.Tensor:
    """Per-example gradient of a Linear layer, flattened as [W.view(-1), b]: (B, d_out*d_in [+ d_out])."""
    import torch

    flat = weight_grad("linear", a, g)
    return torch.cat([flat, g.sum(1)], dim=1) if bias else flat


def weight_grad(kind: str, a: torch.Tensor, g: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """Per-example weight gradient, flattened in the weight's storage order (B, numel):
    Linear (d_out, d_in): sum_t g_t a_t^T; Conv1D (d_in, d_out): sum_t a_t g_t^T (the transpose);
    Embedding (rows, d) from token ids a (B, T): the output gradients scatter-added by token id.
    Float32 whatever the activations' dtype."""
    import torch

    g = g.float()  # half-precision activations (autocast): the sum over tokens accumulates in float32
    if kind == "linear":
        return torch.bmm(g.transpose(1, 2), a.float()).flatten(1)
    if kind == "conv1d":
        return torch.bmm(a.float().transpose(1, 2), g).flatten(1)
    if kind == "embedding":
        out = g.new_zeros(g.shape[0], rows, g.shape[-1])
        return out.scatter_add_(1, a.unsqueeze(-1).expand(-1, -1, g.shape[-1]), g).flatten(1)
    raise ValueError(f"no per-example weight gradient for layer kind {kind!r}")


def ghost_sq_norm(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """||sum_t g_t a_t^T||_F^2 = sum_{t,t'} (a_t.a_t')(g_t.g_t') without forming the gradient
    (Goodfellow 2015 / "ghost norm"); O(B T^2 (d_in + d_out)). Integer `a` are token ids
    (one-hot rows: a_t.a_t' = [a_t == a_t'])."""
    import torch

    if a.dtype.is_floating_point:
        gram = torch.bmm(a, a.transpose(1, 2))
    else:
        gram = (a.unsqueeze(2) == a.unsqueeze(1)).to(g.dtype)
    return (gram * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))


def layer_of(model: nn.Module, name: str, module: nn.Module) -> tuple[str, str]:
    """The layer holding a parameter, above containers (peft keeps LoRA-on-embedding weights in a
    ParameterDict), and its class name, qualified when it is not torch's own."""
    from torch import nn

    every = dict(model.named_modules())
    containers = (nn.ModuleDict, nn.ParameterDict, nn.ModuleList, nn.ParameterList)
    while name and isinstance(module, containers):
        name = name.rsplit(".", 1)[0] if "." in name else ""
        module = every[name]
    cls = type(module)
    return name, cls.__name__ if cls.__module__.startswith("torch.nn") else f"{cls.__module__}.{cls.__qualname__}"
