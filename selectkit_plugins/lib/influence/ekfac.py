"""EK-FAC influence on Linear and Conv1D layers (George et al. 2018; Grosse et al. 2023), with
kronfluence's conventions (`module/tracker/factor.py`, `factor/eigen.py`):

    A = sum_tokens a a^T / #tokens,  S = sum_tokens g g^T / #tokens        (per token)
    Q_A, Q_S = eigenvectors of A, S                                         (float64)
    Lambda = sum_n (Q_S^T G_n Q_A)^2 / #examples,  G_n = sum_t g_t a_t^T     (per example)
    P(G) = Q_S [ (Q_S^T G Q_A) / (Lambda + damping) ] Q_A^T,  damping default 0.1 * mean(Lambda)
    score(z_train, z_query) = sum_layers <P(G_query), G_train>

`kfac=True` uses Lambda = outer(eig(S), eig(A)) instead (K-FAC). The implied Hessian of a
summed loss is n (Lambda + damping) in the eigenbasis, so damping is on the per-example scale
(an L2 term lambda/2 ||W||^2 of a sum-form objective is damping = lambda / n). Gradients are
empirical (true labels) unless the loss samples labels from the model (`sampled_lm_loss`).
Positive = helpful.

Cost. Products run in the inputs' precision (float32 for a model, as kronfluence's defaults) and
are summed in float64; the eigendecompositions are float64. Lambda rotates each example's
gradient matrix G_n, never its tokens. The fit keeps the fit rows' G_n while they fit in
`KEEP_BYTES`, so one pass gives A, S and Lambda (two passes otherwise); scoring those same rows
then needs no pass at all (`kept_scores`). Queries are preconditioned once, back in the original
basis, so a train example is scored by one product with its G_n for every target at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from selectkit.plugin import lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from selectkit_plugins.lib.influence.grads import Batch, LossFn


KEEP_BYTES = 512 * 2**20  # per-example gradients the fit keeps in memory to save its second pass


class EKFACLayer:
    """Streaming factors of one Linear (or Conv1D) layer; inputs a (B, T, d_in) (bias column already added),
    output gradients g (B, T, d_out), optional token mask (B, T) and example weights (B,). The factors
    live on the device of the inputs they are fed (the CPU until the first batch); sums are float64."""

    def __init__(self, d_in: int, d_out: int):
        import torch

        self.d_in, self.d_out = d_in, d_out
        self.a_sum = torch.zeros(d_in, d_in, dtype=torch.float64)
        self.s_sum = torch.zeros(d_out, d_out, dtype=torch.float64)
        self.tokens = 0.0
        self.lam_sum = torch.zeros(d_out, d_in, dtype=torch.float64)
        self.examples = 0.0
        self.q_a = self.q_s = self.eig_a = self.eig_s = None
        self.kept: torch.Tensor | None = None  # the fit rows' G_n (N, d_out, d_in), when fit_ekfac kept them
        self._bases: dict = {}

    def _to(self, device: torch.device) -> None:
        """Move the factors to `device` (a no-op when they are there)."""
        if self.a_sum.device == device:
            return
        for name in ("a_sum", "s_sum", "lam_sum", "q_a", "q_s", "eig_a", "eig_s"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        self._bases = {}

    def _basis(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q_S, Q_A) in `dtype`, cast once."""
        if dtype not in self._bases:
            self._bases[dtype] = (self.q_s.to(dtype), self.q_a.to(dtype))
        return self._bases[dtype]

    def add_covariance(self, a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None,
                       weight: torch.Tensor | None = None) -> None:
        """Add tokens to A and S: the mask's tokens alone (padding costs nothing), or all weighted."""
        self._to(a.device)
        a, g = a.flatten(0, 1), g.flatten(0, 1)
        if weight is not None:
            w = weight.to(a.dtype).repeat_interleave(a.shape[0] // weight.shape[0])
            if mask is not None:
                w = w * mask.flatten().to(a.dtype)
            aw, gw, self.tokens = a * w[:, None], g * w[:, None].to(g.dtype), self.tokens + float(w.double().sum())
        else:
            if mask is not None:
                keep = mask.flatten().bool()
                a, g = a[keep], g[keep]
            aw, gw, self.tokens = a, g, self.tokens + float(a.shape[0])
        self.a_sum += (aw.T @ a).double()
        self.s_sum += (gw.T @ g).double()

    def eigendecompose(self) -> None:
        import torch

        a = self.a_sum / self.tokens
        s = self.s_sum / self.tokens
        self.eig_a, self.q_a = torch.linalg.eigh((a + a.T) / 2)
        self.eig_s, self.q_s = torch.linalg.eigh((s + s.T) / 2)
        self._bases = {}

    @staticmethod
    def example_gradients(a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example weight gradients G_n = sum_t g_t a_t^T: (B, d_out, d_in), in the inputs' precision."""
        if mask is not None:
            a = a * mask.to(a.dtype)[..., None]
        return g.transpose(1, 2) @ a.to(g.dtype)

    def rotate(self, grads: torch.Tensor) -> torch.Tensor:
        """Q_S^T G Q_A for gradient matrices G (B, d_out, d_in), in their precision."""
        self._to(grads.device)
        q_s, q_a = self._basis(grads.dtype)
        return _left(q_s.T, grads) @ q_a

    def add_lambda_of(self, grads: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Add examples' gradient matrices G_n (B, d_out, d_in) to Lambda (after eigendecompose)."""
        import torch

        if self.q_a is None:
            raise RuntimeError("call eigendecompose() before adding to Lambda")
        rot = self.rotate(grads)
        squares = rot * rot
        if weight is None:
            self.lam_sum += squares.sum(0).double()
            self.examples += float(grads.shape[0])
        else:
            self.lam_sum += torch.einsum("b,boi->oi", weight.to(squares), squares).double()
            self.examples += float(weight.double().sum())

    def add_lambda(self, a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None,
                   weight: torch.Tensor | None = None) -> None:
        self.add_lambda_of(self.example_gradients(a, g, mask), weight)

    def eigenvalues(self, kfac: bool = False) -> torch.Tensor:
        """Lambda (d_out, d_in): EK-FAC's corrected eigenvalues, or K-FAC's outer product."""
        if kfac:
            return self.eig_s[:, None] * self.eig_a[None, :]
        return self.lam_sum / self.examples

    def precondition(self, rotated: torch.Tensor, damping: float | None = None, kfac: bool = False) -> torch.Tensor:
        """P(G) for gradients already rotated by `rotate`, returned in the eigenbasis too:
        <P(G_q), G_n> = <rot(G_q) / (Lambda + damping), rot(G_n)> as the rotation is orthogonal."""
        self._to(rotated.device)
        lam = self.eigenvalues(kfac)
        delta = 0.1 * float(lam.mean()) if damping is None else damping
        return rotated / (lam + delta).to(rotated.dtype)

    def precondition_matrix(self, g: torch.Tensor, damping: float | None = None, kfac: bool = False) -> torch.Tensor:
        """P(G) for plain gradient matrices G (M, d_out, d_in), in the original basis and G's precision."""
        rot = self.rotate(g)
        q_s, q_a = self._basis(g.dtype)
        return _left(q_s, self.precondition(rot, damping, kfac)) @ q_a.T


def _left(m: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """m @ X for each X in `batch` (B, r, c), as one (B*c, r) @ m^T product: a plain `m @ batch`
    would broadcast m to B copies."""
    return (batch.transpose(1, 2) @ m.T).transpose(1, 2)


# ---------------------------------------------------------------- whole models


def _layer_inputs(records, modules) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    import torch

    from selectkit_plugins.lib.influence.hooks import with_bias_column

    out = {}
    for name, module in modules.items():
        a = torch.cat([x for x, _ in records[name]], dim=1)
        g = torch.cat([y for _, y in records[name]], dim=1)
        out[name] = (with_bias_column(a) if module.bias is not None else a, g)
    return out


def _token_mask(batch: Batch, a: torch.Tensor) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2 or mask.shape[1] != a.shape[1]:
        return None
    return mask


def _check_layers(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    from selectkit_plugins.lib.influence.layers import GradientSupportError, layer_kind, model_type

    for name, m in modules.items():
        if layer_kind(m) not in ("linear", "conv1d"):
            raise GradientSupportError(f"{model_type(model)}: EK-FAC factors cover Linear and Conv1D layers; {name} is "
                                       f"a {type(m).__name__}", hint="freeze it or leave it out of the tracked layers")


def _passes(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], modules: dict[str, nn.Module],
            ) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]]:
    """Per batch, each layer's (inputs a, output gradients g, token mask) from one forward + backward."""
    from selectkit_plugins.lib.influence.hooks import capture

    for batch in batches:
        _, records = capture(model, modules, loss_fn, batch)
        yield {name: (a, g, _token_mask(batch, a)) for name, (a, g) in _layer_inputs(records, modules).items()}


def fit_ekfac(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], modules: dict[str, nn.Module],
              *, keep_bytes: int | None = None) -> dict[str, EKFACLayer]:
    """Fit A, S, their eigenbases and Lambda for each tracked Linear or Conv1D layer. One pass over
    `batches` while the examples' gradient matrices fit in `keep_bytes` (they stay on the layers as
    `kept`; default `KEEP_BYTES`), two otherwise. A Conv1D (weight stored (d_in, d_out)) is handled as
    the linear map it is."""
    import torch

    from selectkit_plugins.lib.influence.layers import layer_dims

    _check_layers(model, modules)
    batches = list(batches)
    layers = {}
    for n, m in modules.items():
        d_in, d_out = layer_dims(m)
        layers[n] = EKFACLayer(d_in + int(m.bias is not None), d_out)
    kept: dict[str, list[torch.Tensor]] | None = {n: [] for n in modules}
    size, keep_bytes = 0, KEEP_BYTES if keep_bytes is None else keep_bytes
    for inputs in _passes(model, loss_fn, batches, modules):
        for name, (a, g, mask) in inputs.items():
            layers[name].add_covariance(a, g, mask)
            if kept is not None:
                kept[name].append(layers[name].example_gradients(a, g, mask))
                size += kept[name][-1].numel() * kept[name][-1].element_size()
        if kept is not None and size > keep_bytes:
            kept = None  # too many to keep: Lambda takes a second pass
    for layer in layers.values():
        layer.eigendecompose()
    if kept is None:
        for inputs in _passes(model, loss_fn, batches, modules):
            for name, (a, g, mask) in inputs.items():
                layers[name].add_lambda(a, g, mask)
        return layers
    for name, layer in layers.items():
        for grads in kept[name]:
            layer.add_lambda_of(grads)
        layer.kept = torch.cat(kept[name])
    return layers


def gradient_matrices(model: nn.Module, loss_fn: LossFn, modules: dict[str, nn.Module], batches: Iterable[Batch],
                      ) -> Iterator[dict[str, torch.Tensor]]:
    """Per batch, each tracked layer's per-example gradient matrices G_n (B, d_out, d_in), from one
    forward + backward."""
    for inputs in _passes(model, loss_fn, batches, modules):
        yield {name: EKFACLayer.example_gradients(a, g, mask) for name, (a, g, mask) in inputs.items()}


def precondition_queries(model: nn.Module, loss_fn: LossFn, layers: dict[str, EKFACLayer],
                         modules: dict[str, nn.Module], targets: Iterable[Batch], *, damping: float | None = None,
                         kfac: bool = False) -> dict[str, torch.Tensor]:
    """P(G_query) per layer (M, d_out, d_in), in the original basis: computed once, then every
    train example is scored against every query by one product with its own G_n."""
    import torch

    _check_layers(model, modules)
    grads = list(gradient_matrices(model, loss_fn, modules, targets))
    return {n: layers[n].precondition_matrix(torch.cat([g[n] for g in grads]), damping, kfac) for n in modules}


def _score_blocks(blocks: Iterable[dict[str, torch.Tensor]], queries: dict[str, torch.Tensor]) -> np.ndarray:
    """(N, M) sum over layers of <G_n, P(G_q)>, one block of train gradients at a time."""
    import torch

    rows = []
    for grads in blocks:
        block = 0
        for name, q in queries.items():
            block = block + (grads[name].flatten(1) @ q.flatten(1).T).double()
        rows.append(block.cpu())
    return torch.cat(rows).numpy()


def train_scores(model: nn.Module, loss_fn: LossFn, modules: dict[str, nn.Module], train: Iterable[Batch],
                 queries: dict[str, torch.Tensor]) -> np.ndarray:
    """(N_train, M) EK-FAC influence of `train` on the preconditioned queries; one pass over `train`."""
    return _score_blocks(gradient_matrices(model, loss_fn, modules, train), queries)


def kept_scores(layers: dict[str, EKFACLayer], queries: dict[str, torch.Tensor]) -> np.ndarray:
    """(N_fit, M) EK-FAC influence of the fit's own rows, from the gradients the fit kept (no pass):
    equal to `train_scores` over the fit batches when the fit's loss is the scoring loss."""
    if any(layer.kept is None for layer in layers.values()):
        raise RuntimeError("the fit did not keep its gradients (over keep_bytes): score with train_scores")
    return _score_blocks([{name: layer.kept for name, layer in layers.items()}], queries)


def fit_rows_scores(model: nn.Module, loss_fn: LossFn, layers: dict[str, EKFACLayer], modules: dict[str, nn.Module],
                    fit: Iterable[Batch], queries: dict[str, torch.Tensor]) -> np.ndarray:
    """(N_fit, M) EK-FAC influence of the rows the factors were fit on, with the fit's loss: from the
    gradients the fit kept, or one pass over `fit` when it could not keep them."""
    if all(layer.kept is not None for layer in layers.values()):
        return kept_scores(layers, queries)
    return train_scores(model, loss_fn, modules, fit, queries)


def ekfac_scores(model: nn.Module, loss_fn: LossFn, layers: dict[str, EKFACLayer], modules: dict[str, nn.Module],
                 train: Iterable[Batch], targets: Iterable[Batch], *, damping: float | None = None,
                 kfac: bool = False, query_loss_fn: LossFn | None = None) -> np.ndarray:
    """(N_train, M_target) EK-FAC influence; positive = helpful. Target gradients are
    preconditioned once and kept (M x sum_l d_out d_in floats)."""
    queries = precondition_queries(model, query_loss_fn or loss_fn, layers, modules, targets,
                                   damping=damping, kfac=kfac)
    return train_scores(model, loss_fn, modules, train, queries)


def sampled_lm_loss(seed: int = 0) -> LossFn:
    """Causal-LM loss with labels drawn from the model's own predictions at label positions
    (the true Fisher, kronfluence's default). The draw is a function of the seed and the batch's
    tokens, so every pass over a batch (covariances, then Lambda) sees the same labels."""
    import zlib

    import torch

    def loss(forward, batch):
        logits = forward(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
        logits = logits[:, :-1].float()
        valid = batch["labels"][:, 1:] != -100
        probs = torch.softmax(logits.detach(), -1).flatten(0, 1)
        tokens = zlib.crc32(batch["input_ids"].cpu().numpy().tobytes())
        gen = torch.Generator().manual_seed(((seed % 2**32) << 32) | tokens)
        # drawn on the CPU from a CPU generator: the same labels on every device
        sampled = torch.multinomial(probs.cpu(), 1, generator=gen).view(valid.shape).to(logits.device)
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), sampled, reduction="none") * valid
        return ce.sum(1) / valid.sum(1).clamp(min=1)

    return loss
