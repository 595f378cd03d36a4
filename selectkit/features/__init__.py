"""Model passes: per-example features computed once per (model, data, settings).

The executor's side (one call per model, all its scorers' requests together)::

    requests = [r for s in scorers_of_model for r in s.feature_requests(s_targets)]
    store = compute_features(model_spec, recipe_dir, datasets, requests, workdir,
                             progress=say, trust_remote_code=flag)
    ctx = ScoreContext(..., model=model_spec, features=store)

    compute_features(model_spec: ModelSpec, base_dir: str | Path,
                     datasets: Mapping[str, Dataset],        # "pool" and target names
                     requests: Sequence[FeatureRequest], workdir: str | Path, *,
                     batch_tokens: int | None = None,        # padded tokens per batch (default: by device)
                     batch_size: int | None = None,          # max rows per batch (default 256)
                     shard_size: int = 1024,                 # rows per resumable shard
                     progress: Callable[[str], None] | None = None,
                     trust_remote_code: bool = False,        # the command-line flag
                     device: str | None = None,              # overrides model_spec.device
                     model: LoadedModel | None = None,       # an already loaded model (tests, benchmarks)
                     name: str | None = None) -> FeatureStore

The scorer's side::

    def feature_requests(self, targets):
        return [feature_request("loss", "pool", response=self.params.response)]
    def run(self, ctx):
        nll = ctx.features.get("loss", "pool", response=self.params.response)

Kinds (settings, defaults in KINDS): `token_logprobs` (ragged float32 per example),
`loss` (N,) mean token NLL, `el2n` (N,) mean ||p - onehot||_2 — these three need a
causal LM and take `response`: a column or `{template}` whose rendered text ends each
example's text; only tokens after that point count (default: every token). `embedding`
(N, D) with `pooling` auto|mean|cls|last (auto: the folder's sentence-transformers pooling,
else last for causal LMs, mean otherwise) and `normalize` (L2, default true).

All kinds over one data source come from ONE forward pass per batch (`store.stats.forward_passes`
counts them). Shards are written atomically under `workdir`; a killed pass resumes from the
last complete shard with identical results. Importing this package does not import torch.
"""

from selectkit.features.passes import compute_features, plan_batches
from selectkit.features.store import KINDS, FeatureStore, PassStats, canonical, describe, feature_request

__all__ = ["KINDS", "FeatureStore", "PassStats", "canonical", "compute_features", "describe", "feature_request",
           "plan_batches"]
