"""Seeded random projections (Johnson-Lindenstrauss) for gradient features.

The D x k matrix is never held whole unless it is small: it is cut into row blocks of
`block_rows` rows, and block b is drawn from a CPU `torch.Generator` seeded by
sha256(seed, label, kind, b). So a projection depends only on (seed, label, kind, dims,
block_rows), is the same on every process, shard and device, and a shard can be
recomputed alone. Products accumulate in float64 and are rounded to float32 once, so a
row's projection does not depend on which batch it was computed in (float32 GEMM results
change with the batch size).

Deviations from TRAK's `BasicProjector` (whose block seeds are seed + 1e3 b + 1e5 model_id,
blocks over output columns): entries are scaled by 1/sqrt(k) so inner products are
preserved in expectation (TRAK leaves them unscaled; cosine scores are unaffected), and
the RNG stream is always the CPU one (TRAK's CPU and CUDA projections differ).

It lives in the core (it began in the built-in plugins' influence library) because the core uses it
too: the neighbours index that `selectkit explain --influence` searches (selectkit.results.neighbours)
sketches gradient rows with `SparseProjector`. The gradient featurizer reaches it through
`selectkit.plugin`. It imports nothing of selectkit; torch is imported when a projection runs.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch

Kind = Literal["rademacher", "gaussian", "sjlt"]
DENSE_KINDS = ("rademacher", "gaussian")
WIDE = 4096  # `auto` projections this wide or wider are sparse (sjlt), narrower ones dense (rademacher)
DEFAULT_BLOCK_ROWS = 1024
DEFAULT_CACHE_BYTES = 1 << 30  # float64 blocks kept while the matrix fits (8192 x 16384)


def resolve_kind(kind: str, dim_out: int | None) -> str:
    """`auto`: a sparse JL transform for wide projections (it costs O(D) per example where a dense
    one costs O(D k)), the dense Rademacher one below WIDE (as before, so narrow features are unchanged)."""
    if kind != "auto":
        return kind
    return "sjlt" if dim_out is not None and dim_out >= WIDE else "rademacher"


def make_projector(dim_in: int, dim_out: int, *, seed: int = 0, kind: str = "rademacher", label: str = ""
                   ) -> Projector | SparseProjector:
    """The projector of `kind` (rademacher, gaussian, sjlt, or auto: see `resolve_kind`)."""
    kind = resolve_kind(kind, dim_out)
    if kind == "sjlt":
        return SparseProjector(dim_in, dim_out, seed=seed, label=label)
    return Projector(dim_in, dim_out, seed=seed, kind=kind, label=label)


def block_seed(seed: int, label: str, kind: str, block: int) -> int:
    """A 63-bit seed for one block, stable across Python processes (no `hash()`)."""
    digest = hashlib.sha256(f"{seed}\x1f{label}\x1f{kind}\x1f{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Projector:
    """x (B, D) -> x R / sqrt(k), R (D, k) with i.i.d. +-1 (rademacher) or N(0,1) entries.

    `label` makes independent projections from one seed (a layer name, a checkpoint...).
    Blocks are cached while the whole matrix fits in `cache_bytes` (float64), otherwise
    regenerated on every call, as TRAK's BasicProjector does.
    """

    def __init__(self, dim_in: int, dim_out: int, *, seed: int = 0, kind: Kind = "rademacher", label: str = "",
                 block_rows: int = DEFAULT_BLOCK_ROWS, cache_bytes: int = DEFAULT_CACHE_BYTES):
        if dim_in < 1 or dim_out < 1:
            raise ValueError(f"projection dims must be positive, got {dim_in} -> {dim_out}")
        if kind not in DENSE_KINDS:
            raise ValueError(f"unknown dense projection kind {kind!r} (rademacher or gaussian; sjlt: SparseProjector)")
        self.dim_in, self.dim_out, self.seed, self.kind, self.label = dim_in, dim_out, seed, kind, label
        self.block_rows = block_rows
        self._cache: dict[int, torch.Tensor] | None = {} if dim_in * dim_out * 8 <= cache_bytes else None

    @property
    def key(self) -> str:
        """Identity of the matrix (enters cache keys of stored features)."""
        return f"{self.kind}:{self.seed}:{self.label}:{self.dim_in}x{self.dim_out}:b{self.block_rows}"

    def block(self, b: int) -> torch.Tensor:
        """Rows [b*block_rows, ...) of R, unscaled, float64 on CPU."""
        import torch

        if self._cache is not None and b in self._cache:
            return self._cache[b]
        rows = min(self.block_rows, self.dim_in - b * self.block_rows)
        gen = torch.Generator(device="cpu").manual_seed(block_seed(self.seed, self.label, self.kind, b))
        if self.kind == "rademacher":
            out = torch.randint(0, 2, (rows, self.dim_out), generator=gen, dtype=torch.int8).to(torch.float64)
            out.mul_(2).sub_(1)
        else:
            out = torch.randn((rows, self.dim_out), generator=gen, dtype=torch.float32).to(torch.float64)
        if self._cache is not None:
            self._cache[b] = out
        return out

    def matrix(self) -> torch.Tensor:
        """The whole scaled matrix (D, k); for tests and small dims only."""
        import torch

        blocks = [self.block(b) for b in range(math.ceil(self.dim_in / self.block_rows))]
        return torch.cat(blocks) / math.sqrt(self.dim_out)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` (integers, any shape) of the scaled matrix: the projection of one-hot
        vectors e_idx without forming them (an Embedding's inputs); float32 on idx's device."""
        import torch

        flat = idx.reshape(-1).cpu()
        out = torch.zeros(flat.shape[0], self.dim_out, dtype=torch.float64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.dim_in):
            raise ValueError(f"projector rows are 0..{self.dim_in - 1}, got indices up to {int(flat.max())}")
        for b in torch.unique(flat // self.block_rows).tolist():
            sel = (flat // self.block_rows) == b
            out[sel] = self.block(b)[flat[sel] - b * self.block_rows]
        out.div_(math.sqrt(self.dim_out))
        return out.to(torch.float32).reshape(*idx.shape, self.dim_out).to(idx.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Project the last dim of `x` (any leading dims); returns float32 on x's device."""
        import torch

        if x.shape[-1] != self.dim_in:
            raise ValueError(f"projector expects last dim {self.dim_in}, got {tuple(x.shape)}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.dim_in)
        out = torch.zeros(flat.shape[0], self.dim_out, dtype=torch.float64, device=x.device)
        for b in range(math.ceil(self.dim_in / self.block_rows)):
            lo = b * self.block_rows
            rows = flat[:, lo:lo + self.block_rows].to(torch.float64)
            out.addmm_(rows, self.block(b).to(x.device))
        out.div_(math.sqrt(self.dim_out))
        return out.to(torch.float32).reshape(*lead, self.dim_out)


class SparseProjector:
    """A sparse Johnson-Lindenstrauss transform (a count sketch with balanced buckets; GraSS,
    Hu et al. 2025, uses sparse projections for the same reason): every input coordinate j goes to
    exactly one of the k outputs with a random sign, and each output is the signed sum of its
    ceil(D/k) coordinates. E[<Sx, Sy>] = <x, y>, like the dense projection, at O(D) work per example
    instead of O(D k): at k = 8192 on a LoRA of a million parameters the dense product is 9e9
    multiply-adds per example, this one a gather and 1e6 additions.

    A seeded permutation places the coordinates in a (k, ceil(D/k)) grid (the empty slots hold 0):
    output i sums row i of the grid in float64, in slot order, then rounds to float32 once, so a
    row's projection does not depend on the batch, shard or device it was computed in. The
    permutation and signs depend only on (seed, label, dims), drawn from a CPU generator.
    """

    kind = "sjlt"

    def __init__(self, dim_in: int, dim_out: int, *, seed: int = 0, label: str = ""):
        if dim_in < 1 or dim_out < 1:
            raise ValueError(f"projection dims must be positive, got {dim_in} -> {dim_out}")
        self.dim_in, self.dim_out, self.seed, self.label = dim_in, dim_out, seed, label
        self.slots = math.ceil(dim_in / dim_out)  # coordinates per output
        self._plan: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # device -> (source index, sign) per slot

    @property
    def key(self) -> str:
        return f"sjlt:{self.seed}:{self.label}:{self.dim_in}x{self.dim_out}"

    def plan(self, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """For every slot of the flattened (k, slots) grid: the input coordinate it holds, and its
        sign (0 for an empty slot, whose coordinate index 0 is then multiplied away)."""
        import torch

        key = str(device)
        if key not in self._plan:
            gen = torch.Generator(device="cpu").manual_seed(block_seed(self.seed, self.label, "sjlt", 0))
            size = self.slots * self.dim_out
            positions = torch.randperm(size, generator=gen)[: self.dim_in]
            signs = torch.randint(0, 2, (self.dim_in,), generator=gen, dtype=torch.int8).to(torch.float32) * 2 - 1
            source = torch.zeros(size, dtype=torch.long)
            source[positions] = torch.arange(self.dim_in)
            sign = torch.zeros(size, dtype=torch.float32)
            sign[positions] = signs
            self._plan[key] = (source.to(device), sign.to(device))
        return self._plan[key]

    def matrix(self) -> torch.Tensor:
        """The (D, k) matrix (for tests and small dims only)."""
        import torch

        source, sign = self.plan()
        out = torch.zeros(self.dim_in, self.dim_out, dtype=torch.float64)
        used = sign != 0
        buckets = torch.arange(source.numel()) // self.slots
        out[source[used], buckets[used]] = sign[used].to(torch.float64)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Project the last dim of `x` (any leading dims); returns float32 on x's device."""
        import torch

        if x.shape[-1] != self.dim_in:
            raise ValueError(f"projector expects last dim {self.dim_in}, got {tuple(x.shape)}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.dim_in)
        source, sign = self.plan(flat.device)
        grid = flat.index_select(1, source)
        grid = grid.to(torch.float64) if grid.dtype == torch.float64 else grid.to(torch.float32)
        grid.mul_(sign.to(grid.dtype))
        out = grid.view(flat.shape[0], self.dim_out, self.slots).sum(-1, dtype=torch.float64)
        return out.to(torch.float32).reshape(*lead, self.dim_out)


class KroneckerProjector:
    """LoGra-style factorised projection of a Linear layer's gradient G = sum_t g_t a_t^T
    (Choe et al. 2024, "What is Your Data Worth to GPT?"): project activations (d_in -> k_in)
    and output gradients (d_out -> k_out) separately; P_out^T G P_in = sum_t (P_out^T g_t)(P_in^T a_t)^T
    is the projection of vec(G) by P_out (x) P_in, computed without ever forming G. G is always
    the linear map's (d_out, d_in) gradient: for a Conv1D the transpose of its stored weight, for
    an Embedding (d, num_embeddings) with one-hot inputs, so P_in^T a_t is a row of P_in.
    """

    def __init__(self, d_in: int, d_out: int, k_in: int, k_out: int, *, seed: int = 0, kind: Kind = "rademacher",
                 label: str = ""):
        self.p_in = Projector(d_in, k_in, seed=seed, kind=kind, label=f"{label}:in")
        self.p_out = Projector(d_out, k_out, seed=seed, kind=kind, label=f"{label}:out")

    @property
    def dim_out(self) -> int:
        return self.p_in.dim_out * self.p_out.dim_out

    @property
    def key(self) -> str:
        return f"kron({self.p_out.key},{self.p_in.key})"

    def __call__(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """a (B, T, d_in), g (B, T, d_out) -> (B, k_out * k_in) float32, row-major (out, in).
        Integer `a` (B, T) are an Embedding's token ids, i.e. one-hot inputs of width d_in."""
        import torch

        pa = (self.p_in(a) if a.dtype.is_floating_point else self.p_in.take(a)).to(torch.float64)
        pg = self.p_out(g).to(torch.float64)
        return torch.einsum("bto,bti->boi", pg, pa).reshape(a.shape[0], -1).to(torch.float32)
