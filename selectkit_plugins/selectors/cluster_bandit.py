"""Quad: quality and diversity through a UCB bandit over clusters (Zhang et al., ICLR 2025).

Cluster the features (k-means); each round pick the `arms_per_round` clusters with the highest
cluster score `CS = mean shared reward + α·sqrt(2·ln(total pulls) / (pulls + 1))`, read the expensive
`reward` score on a few fresh probe examples of each, and when the probe mean beats `reward_baseline`
take the cluster's next `take_per_pull` examples. A pull's reward is shared with the clusters whose
centroid lies within `neighbour_radius` (weight 1 - d/τ), Quad's second diversity mechanism.
Reference: `iTheresaApocalypse/Quad` (`Quad-data_selection.py`). Deviations: round 0 takes clusters in a
seeded random order (the code uses ids 0..49); the probes and takes walk one seeded shuffle of each cluster
(the code's probes are not the docs it selects); rewards are used as given, so z-score them
(`normalize: [zscore]`) and keep α ≈ 0.5 (Quad's α = 1e-4 was tuned to raw influence values, §4).
"""

from __future__ import annotations

from pydantic import Field

from selectkit.plugin import (
    KMeansParams,
    RecipeError,
    SelectContext,
    Selection,
    Selector,
    SelectorParams,
    Shape,
    cluster_members,
    features_of,
    hookimpl,
    kmeans,
    lazy_import,
)

np = lazy_import("numpy")  # imported on first use: loading plugins stays cheap


class ClusterBanditParams(SelectorParams):
    reward: str = Field(description="vector score read only at probed examples (the expensive oracle); with "
                        "`lazy: true` on that score it is computed only there, one batch per round")
    k: int = Field(1024, ge=1, description="k-means clusters (arms); Quad used ~10,000")
    arms_per_round: int = Field(50, ge=1, description="clusters pulled per round")
    probe_per_arm: int = Field(10, ge=1, description="examples whose reward is read per pull")
    take_per_pull: int = Field(100, ge=1, description="examples taken when a pull's reward beats the baseline")
    ucb_alpha: float = Field(0.5, ge=0, description="exploration weight α (on z-scored rewards)")
    reward_baseline: float = Field(0.0, description="a pull takes data when its probe mean exceeds this")
    neighbour_radius: float = Field(0.0, ge=0, description="share rewards with clusters whose centroids lie "
                                                           "within this distance; 0 disables sharing")
    max_rounds: int = Field(200, ge=1, description="stop after this many rounds")
    fill: bool = Field(True, description="if the rounds end short of the budget, fill from clusters in order "
                                         "of estimated reward (no further reward reads)")
    l2_normalize: bool = Field(True, description="cluster unit-length features")
    kmeans: KMeansParams = Field(default_factory=KMeansParams)


class ClusterBandit(Selector):
    """UCB over k-means clusters (Quad): probe a few examples per pull, read the expensive reward only there,
    take more from clusters that pay. Reward reads ≤ rounds·arms·probe, one batch per round (a lazy
    reward computes only those rows). Memory O(N + k·D + neighbour pairs):
    neighbours come from a radius search over the centroids, never a dense k×k matrix."""

    name = "cluster_bandit"
    extras = ("cluster",)
    version = "2"
    Params = ClusterBanditParams
    accepts = frozenset({Shape.FEATURES})
    score_params = {"reward": frozenset({Shape.VECTOR})}
    lazy_scores = ("reward",)

    def oracle_rows(self, param: str, candidates: int) -> int:
        """Reward reads: at most rounds x arms x probe, and never more than the candidates."""
        p = self.params
        return min(candidates, p.max_rounds * min(p.arms_per_round, p.k) * p.probe_per_arm)

    def run(self, ctx: SelectContext) -> Selection:
        p = self.params
        x = features_of(ctx, p.l2_normalize, self.name)
        labels, centers = kmeans(x, p.k, ctx.rng("kmeans"), p.kmeans)
        n_arms = len(centers)
        members = [m[ctx.rng("cluster", str(c)).permutation(len(m))]
                   for c, m in enumerate(cluster_members(labels, n_arms))]
        sizes = np.array([len(m) for m in members])
        neighbours = centroid_neighbours(centers, p.neighbour_radius)
        if p.reward not in ctx.scores and p.reward not in ctx.oracles:
            raise RecipeError(f"{self.name}: reward score {p.reward!r} is not computed")

        budget = p.budget.max_count(len(ctx.candidates)) if p.budget is not None else len(ctx.candidates)
        score, chose = np.zeros(n_arms), np.zeros(n_arms)
        total = 0
        pulls, positive = np.zeros(n_arms, dtype=np.int64), np.zeros(n_arms, dtype=np.int64)
        probe_at, take_at = np.zeros(n_arms, dtype=np.int64), np.zeros(n_arms, dtype=np.int64)
        priority = ctx.rng("arms").permutation(n_arms)  # tie-break among equal scores (round 0: all)
        taken: list[np.ndarray] = []
        n_taken = probed = rounds = 0
        while rounds < p.max_rounds:
            open_ = (probe_at < sizes) & (take_at < sizes)
            if n_taken >= budget or not open_.any():
                break
            rounds += 1
            cs = ucb(score, chose, total, p.ucb_alpha)
            cs[~open_] = -np.inf
            arms = np.lexsort((priority, -cs))[:min(p.arms_per_round, int(open_.sum()))]
            probes = [members[c][probe_at[c]:probe_at[c] + p.probe_per_arm] for c in arms]
            # the round's probes are fixed before any of its rewards is seen: one read (one oracle batch)
            read = ctx.values_at(p.reward, ctx.candidates[np.concatenate(probes)])
            bounds = np.cumsum([0, *map(len, probes)])
            for c, lo, hi in zip(arms, bounds[:-1], bounds[1:]):
                probe_at[c] += hi - lo
                probed += hi - lo
                values = read[lo:hi]
                r = float(np.nanmean(values)) - p.reward_baseline if np.isfinite(values).any() else 0.0
                pulls[c] += 1
                if r > 0 and n_taken < budget:
                    positive[c] += 1
                    got = members[c][take_at[c]:take_at[c] + min(p.take_per_pull, budget - n_taken)]
                    take_at[c] += len(got)
                    n_taken += len(got)
                    taken.append(got)
                near, weight = neighbours[c]
                score[near] += r * weight
                chose[near] += 1
                total += len(near)
        estimate = np.where(chose > 0, score / np.maximum(chose, 1), 0.0)
        picked = np.concatenate(taken) if taken else np.empty(0, dtype=np.int64)
        picked = picked[np.argsort(-estimate[labels[picked]], kind="stable")]
        filled = np.empty(0, dtype=np.int64)
        if p.fill and n_taken < budget:
            rest = [members[c][take_at[c]:] for c in np.lexsort((priority, -estimate))]
            filled = np.concatenate(rest)[:budget - n_taken]
        order = ctx.candidates[np.concatenate([picked, filled])]
        diagnostics = {"probed": int(probed), "rounds": int(rounds), "clusters": int(n_arms),
                       "clusters_pulled": int((pulls > 0).sum()), "clusters_taken": int((positive > 0).sum()),
                       "filled": int(len(filled))}
        if n_arms <= 1024:  # per-cluster detail only while it stays readable in the manifest
            diagnostics.update(pulls=pulls.tolist(), positive_pulls=positive.tolist(),
                               mean_reward=np.round(estimate, 6).tolist())
        return Selection(indices=ctx.take(order, p.budget), diagnostics=diagnostics)


def ucb(score: np.ndarray, chose: np.ndarray, total: int, alpha: float) -> np.ndarray:
    """Quad's cluster score: mean shared reward (0 when never updated) + α·sqrt(2 ln(total) / (chose + 1))."""
    mean = np.where(chose > 0, score / np.maximum(chose, 1), 0.0)
    return mean + alpha * np.sqrt(2 * np.log(max(total, 1)) / (chose + 1))


def centroid_neighbours(centers: np.ndarray, radius: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per cluster: the clusters within `radius` (itself included) and their sharing weights 1 - d/radius."""
    if radius <= 0:
        return [(np.array([c]), np.ones(1)) for c in range(len(centers))]
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(radius=radius).fit(centers).radius_neighbors(centers, sort_results=True)
    out = []
    for c, (d, i) in enumerate(zip(dist, idx)):
        keep = d < radius
        d, i = np.asarray(d[keep], dtype=np.float64), np.asarray(i[keep], dtype=np.int64)
        if c not in i:  # itself, even with duplicate centroids listed first
            i, d = np.append(i, c), np.append(d, 0.0)
        out.append((i, 1.0 - d / radius))
    return out


@hookimpl
def register_selectors(register):
    register(ClusterBandit)
