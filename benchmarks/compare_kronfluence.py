"""Side-by-side check: our EK-FAC / K-FAC against kronfluence 1.0.1 (spec §9 T6, tier 0).

Digits logistic regression as one nn.Linear(65 -> 10, bias=False) (the bias is the appended 1),
trained with our float64 Newton; empirical Fisher, every dtype float64, the same damping. Our
factors use kronfluence's conventions (per-token A and S, per-example Lambda, damping added to
Lambda), so pairwise scores should agree to rounding.

kronfluence installs top-level `tests`/`examples` packages, so it lives in its own folder, never
in the project venv:

    .venv/bin/pip install --target benchmarks/.work/kf --no-deps kronfluence==1.0.1 einconv einops opt-einsum
    .venv/bin/python benchmarks/compare_kronfluence.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "benchmarks" / ".work" / "kf"))  # appended: our own packages win

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402


def main() -> None:
    import influence_reference as ref
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    from selectkit_plugins.lib.influence.ekfac import EKFACLayer

    torch.set_num_threads(2)
    x, y, xt, yt = ref.load_split("digits", 1000)
    lr = ref.fit(x, y, 1.0)
    q = np.random.default_rng(0).choice(len(xt), 20, replace=False)
    xq, yq = xt[q], yt[q]

    class LRTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, labels = batch
            logits = model(inputs)
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits, -1), 1).flatten()
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            inputs, labels = batch
            return F.cross_entropy(model(inputs), labels, reduction="sum")

    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], lr.classes, bias=False)).double()
    model[0].weight.data = torch.tensor(lr.w)  # a container: kronfluence wraps Linear leaves
    model = prepare_model(model, LRTask())
    train_ds = torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y))
    query_ds = torch.utils.data.TensorDataset(torch.tensor(xq), torch.tensor(yq))
    f64 = torch.float64
    rows = []
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer("lr", model, LRTask(), cpu=True, output_dir=out, disable_tqdm=True,
                            disable_model_save=True)
        for strategy in ("ekfac", "kfac"):
            for damping in (1e-3, 1e-1):
                fargs = FactorArguments(strategy=strategy, use_empirical_fisher=True,
                                        activation_covariance_dtype=f64, gradient_covariance_dtype=f64,
                                        eigendecomposition_dtype=f64, lambda_dtype=f64)
                sargs = ScoreArguments(damping_factor=damping, score_dtype=f64, per_sample_gradient_dtype=f64,
                                       precondition_dtype=f64)
                start = time.perf_counter()
                analyzer.fit_all_factors(f"f-{strategy}", dataset=train_ds, per_device_batch_size=250,
                                         factor_args=fargs, overwrite_output_dir=True)
                analyzer.compute_pairwise_scores(f"s-{strategy}-{damping}", f"f-{strategy}", query_dataset=query_ds,
                                                 train_dataset=train_ds, per_device_query_batch_size=20,
                                                 per_device_train_batch_size=250, score_args=sargs,
                                                 overwrite_output_dir=True)
                theirs = analyzer.load_pairwise_scores(f"s-{strategy}-{damping}")["all_modules"].numpy().T
                t_kf = time.perf_counter() - start

                start = time.perf_counter()
                g = lr.grads(x, y).reshape(len(x), lr.classes, -1)
                out_grad = lr.probs(x)
                out_grad[np.arange(len(y)), y] -= 1
                layer = EKFACLayer(x.shape[1], lr.classes)
                a, s = torch.tensor(x)[:, None], torch.tensor(out_grad)[:, None]
                layer.add_covariance(a, s)
                layer.eigendecompose()
                layer.add_lambda(a, s)
                gq = torch.tensor(lr.grads(xq, yq)).view(len(q), lr.classes, -1)
                pre = layer.precondition_matrix(gq, damping, kfac=strategy == "kfac")
                ours = torch.einsum("noi,moi->nm", torch.tensor(g), pre).numpy()
                t_ours = time.perf_counter() - start
                rel = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
                rho = float(np.mean([spearmanr(ours[:, j], theirs[:, j])[0] for j in range(len(q))]))
                rows.append((strategy, damping, rel, rho, t_kf, t_ours))
    rows += lora_lm()
    print("our EK-FAC/K-FAC vs kronfluence 1.0.1 (empirical Fisher, float64, same damping)")
    print(f"{'setup':28s} {'strategy':8s} {'damping':>8s} {'max rel diff':>12s} {'Spearman':>9s} {'kf s':>7s} "
          f"{'ours s':>7s}")
    for r in rows:
        setup = r[6] if len(r) > 6 else "digits LR (1000 x 20)"
        print(f"{setup:28s} {r[0]:8s} {r[1]:8.0e} {r[2]:12.2e} {r[3]:9.6f} {r[4]:7.2f} {r[5]:7.2f}")


def lora_lm() -> list[tuple]:
    """Tiny byte-level Llama + LoRA (r=2, q/v), tracked modules = the lora_A/lora_B leaves,
    kronfluence's loss = the sum over examples of our per-example label-token mean."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence_task import lm_task
    from peft import LoraConfig, get_peft_model
    from transformers import ByT5Tokenizer

    sys.path.insert(0, str(ROOT / "tests"))
    from influence_fixtures import pretrained_lm
    from influence_fixtures import rows as task_rows
    from transformers import AutoModelForCausalLM

    from selectkit_plugins.lib.influence.ekfac import ekfac_scores, fit_ekfac
    from selectkit_plugins.lib.influence.grads import linear_modules, lm_batch, lm_loss

    work = Path(tempfile.mkdtemp(prefix="kf-lm-"))
    folder = pretrained_lm(work / "lm", steps=30)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    model.eval()
    tok = ByT5Tokenizer()
    train = task_rows(8, 1)
    query = task_rows(2, 2)
    width = 40
    def padded(data):
        b = lm_batch(tok, [r["text"] for r in data], [r["prompt"] for r in data], width)
        pad = width - b["input_ids"].shape[1]
        return {k: torch.nn.functional.pad(v, (0, pad), value=-100 if k == "labels" else 0) for k, v in b.items()}
    tb, qb = padded(train), padded(query)
    modules = linear_modules(model)
    names = list(modules)

    LMTask, Rows = lm_task(names, lm_loss)

    # ours first: kronfluence's prepare_model wraps the tracked leaves in place
    f64 = torch.float64
    results = []
    layers = fit_ekfac(model, lm_loss, [tb], modules)
    ours = {}
    for strategy in ("ekfac", "kfac"):
        start = time.perf_counter()
        ours[strategy] = (ekfac_scores(model, lm_loss, layers, modules, [tb], [qb], damping=1e-6,
                                       kfac=strategy == "kfac"), time.perf_counter() - start)
    kf_model = prepare_model(model, LMTask())
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer("lm", kf_model, LMTask(), cpu=True, output_dir=out, disable_tqdm=True,
                            disable_model_save=True)
        for strategy in ("ekfac", "kfac"):
            fargs = FactorArguments(strategy=strategy, use_empirical_fisher=True, activation_covariance_dtype=f64,
                                    gradient_covariance_dtype=f64, eigendecomposition_dtype=f64, lambda_dtype=f64)
            sargs = ScoreArguments(damping_factor=1e-6, score_dtype=f64, per_sample_gradient_dtype=f64,
                                   precondition_dtype=f64)
            start = time.perf_counter()
            analyzer.fit_all_factors(f"f{strategy}", dataset=Rows(tb), per_device_batch_size=24, factor_args=fargs,
                                     overwrite_output_dir=True)
            analyzer.compute_pairwise_scores(f"s{strategy}", f"f{strategy}", query_dataset=Rows(qb),
                                             train_dataset=Rows(tb), per_device_query_batch_size=6,
                                             per_device_train_batch_size=24, score_args=sargs,
                                             overwrite_output_dir=True)
            theirs = analyzer.load_pairwise_scores(f"s{strategy}")["all_modules"].numpy().T
            mine, t_ours = ours[strategy]
            rel = float(np.abs(mine - theirs).max() / np.abs(theirs).max())
            rho = float(np.mean([spearmanr(mine[:, j], theirs[:, j])[0] for j in range(theirs.shape[1])]))
            results.append((strategy, 1e-6, rel, rho, time.perf_counter() - start, t_ours, "tiny LM + LoRA (24 x 6)"))
    return results


if __name__ == "__main__":
    main()
