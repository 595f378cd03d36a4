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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from selectkit.plugin import lazy_import

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from selectkit_plugins.lib.influence.grads import Batch, LossFn


class EKFACLayer:
    """Streaming factors of one Linear (or Conv1D) layer; inputs a (B, T, d_in) (bias column already added),
    output gradients g (B, T, d_out), optional token mask (B, T) and example weights (B,). The factors
    live on the device of the inputs they are fed (the CPU until the first batch)."""

    def __init__(self, d_in: int, d_out: int):
        import torch

        self.d_in, self.d_out = d_in, d_out
        self.a_sum = torch.zeros(d_in, d_in, dtype=torch.float64)
        self.s_sum = torch.zeros(d_out, d_out, dtype=torch.float64)
        self.tokens = 0.0
        self.lam_sum = torch.zeros(d_out, d_in, dtype=torch.float64)
        self.examples = 0.0
        self.q_a = self.q_s = self.eig_a = self.eig_s = None

    def _to(self, device: torch.device) -> None:
        """Move the factors to `device` (a no-op when they are there)."""
        if self.a_sum.device == device:
            return
        for name in ("a_sum", "s_sum", "lam_sum", "q_a", "q_s", "eig_a", "eig_s"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))

    @staticmethod
    def _weights(a: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor | None) -> torch.Tensor:
        import torch

        w = torch.ones(a.shape[:2], dtype=torch.float64, device=a.device) if mask is None else mask.to(torch.float64)
        if weight is not None:
            w = w * weight.to(torch.float64)[:, None]
        return w

    def add_covariance(self, a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None,
                       weight: torch.Tensor | None = None) -> None:
        self._to(a.device)
        w = self._weights(a, mask, weight)
        a64, g64 = a.double(), g.double()
        self.a_sum += (a64 * w[..., None]).flatten(0, 1).T @ a64.flatten(0, 1)
        self.s_sum += (g64 * w[..., None]).flatten(0, 1).T @ g64.flatten(0, 1)
        self.tokens += float(w.sum())

    def eigendecompose(self) -> None:
        import torch

        a = self.a_sum / self.tokens
        s = self.s_sum / self.tokens
        self.eig_a, self.q_a = torch.linalg.eigh((a + a.T) / 2)
        self.eig_s, self.q_s = torch.linalg.eigh((s + s.T) / 2)

    def rotate(self, a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example gradients in the eigenbasis, Q_S^T G_n Q_A: (B, d_out, d_in)."""
        import torch

        self._to(a.device)
        a64, g64 = a.double(), g.double()
        if mask is not None:
            a64 = a64 * mask.to(torch.float64)[..., None]
        return torch.einsum("bto,bti->boi", g64 @ self.q_s, a64 @ self.q_a)

    def add_lambda(self, a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None,
                   weight: torch.Tensor | None = None) -> None:
        import torch

        if self.q_a is None:
            raise RuntimeError("call eigendecompose() before add_lambda()")
        rot = self.rotate(a, g, mask)
        w = (torch.ones(rot.shape[0], dtype=torch.float64, device=rot.device) if weight is None
             else weight.to(rot.device, torch.float64))
        self.lam_sum += torch.einsum("b,boi->oi", w, rot * rot)
        self.examples += float(w.sum())

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
        return rotated / (lam + delta)

    def precondition_matrix(self, g: torch.Tensor, damping: float | None = None, kfac: bool = False) -> torch.Tensor:
        """P(G) for plain gradient matrices G (M, d_out, d_in), in the original basis."""
        self._to(g.device)
        rot = self.q_s.T @ g.double() @ self.q_a
        return self.q_s @ self.precondition(rot, damping, kfac) @ self.q_a.T


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


def fit_ekfac(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], modules: dict[str, nn.Module],
              ) -> dict[str, EKFACLayer]:
    """Fit A, S, their eigenbases and Lambda for each tracked Linear or Conv1D layer (two passes
    over `batches`). A Conv1D (weight stored (d_in, d_out)) is handled as the linear map it is."""
    from selectkit_plugins.lib.influence.hooks import capture
    from selectkit_plugins.lib.influence.layers import layer_dims

    _check_layers(model, modules)
    batches = list(batches)
    layers = {}
    for n, m in modules.items():
        d_in, d_out = layer_dims(m)
        layers[n] = EKFACLayer(d_in + int(m.bias is not None), d_out)
    for batch in batches:
        _, records = capture(model, modules, loss_fn, batch)
        for name, (a, g) in _layer_inputs(records, modules).items():
            layers[name].add_covariance(a, g, _token_mask(batch, a))
    for layer in layers.values():
        layer.eigendecompose()
    for batch in batches:
        _, records = capture(model, modules, loss_fn, batch)
        for name, (a, g) in _layer_inputs(records, modules).items():
            layers[name].add_lambda(a, g, _token_mask(batch, a))
    return layers


def ekfac_scores(model: nn.Module, loss_fn: LossFn, layers: dict[str, EKFACLayer], modules: dict[str, nn.Module],
                 train: Iterable[Batch], targets: Iterable[Batch], *, damping: float | None = None,
                 kfac: bool = False, query_loss_fn: LossFn | None = None) -> np.ndarray:
    """(N_train, M_target) EK-FAC influence; positive = helpful. Target gradients are
    preconditioned once and kept (M x sum_l d_out d_in floats)."""
    import torch

    from selectkit_plugins.lib.influence.hooks import capture

    _check_layers(model, modules)
    pre: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    for batch in targets:
        _, records = capture(model, modules, query_loss_fn or loss_fn, batch)
        for name, (a, g) in _layer_inputs(records, modules).items():
            rot = layers[name].rotate(a, g, _token_mask(batch, a))
            pre[name].append(layers[name].precondition(rot, damping, kfac))
    queries = {n: torch.cat(v) for n, v in pre.items()}
    rows = []
    for batch in train:
        _, records = capture(model, modules, loss_fn, batch)
        block = 0
        for name, (a, g) in _layer_inputs(records, modules).items():
            rot = layers[name].rotate(a, g, _token_mask(batch, a))
            block = block + torch.einsum("noi,moi->nm", rot, queries[name])
        rows.append(block.cpu())
    return torch.cat(rows).numpy()


def sampled_lm_loss(seed: int = 0) -> LossFn:
    """Causal-LM loss with labels drawn from the model's own predictions at label positions
    (the true Fisher, kronfluence's default); deterministic for a seed and batch order."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def loss(forward, batch):
        logits = forward(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
        logits = logits[:, :-1].float()
        valid = batch["labels"][:, 1:] != -100
        probs = torch.softmax(logits.detach(), -1).flatten(0, 1)
        # drawn on the CPU from a CPU generator: the same labels on every device
        sampled = torch.multinomial(probs.cpu(), 1, generator=gen).view(valid.shape).to(logits.device)
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), sampled, reduction="none") * valid
        return ce.sum(1) / valid.sum(1).clamp(min=1)

    return loss
