"""Side-by-side with peer libraries: time per phase, peak memory and agreement with the reference.

The same tiny byte-level Llama (hidden 32, 2 layers, briefly pretrained) + LoRA (r=1 on q,v; 256
parameters), the same 128 train and 16 query texts (label tokens = the response), run through
selectkit and through kronfluence (EK-FAC), dattri (TracIn, DataInf) and traker (TRAK), each
(library, method) in a fresh subprocess of its own venv. Reported: wall seconds per phase
(median of --repeats runs), peak RSS (VmHWM of the subprocess) and the mean per-query Spearman
of the scores with selectkit's inverse-Hessian reference (explicit Gauss-Newton of the mean
loss over the 128 train texts + damping 0.01 I, float64, as bench_influence.py).

Peer libraries never go into the project venv (kronfluence ships top-level `tests` packages):

    .venv/bin/pip install --target benchmarks/.work/kf --no-deps kronfluence==1.0.1 einconv einops opt-einsum
    python3 -m venv benchmarks/.work/dattri && benchmarks/.work/dattri/bin/pip install torch==2.13.0 \\
        transformers==5.24.0 peft==0.21.2 scipy dattri==0.3.0
    python3 -m venv benchmarks/.work/trak && benchmarks/.work/trak/bin/pip install torch==2.13.0 \\
        transformers==5.24.0 peft==0.21.2 scipy traker==0.3.2
    .venv/bin/python benchmarks/compare_peers.py            # ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/compare_peers.py --repeats 1

A library whose venv is missing is skipped with a note. Workers import only torch, transformers
and peft (plus their library); the model, data and reference are cached in benchmarks/.work/peers
(--fresh rebuilds them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
DAMPING = 0.01  # InverseHessian's default, on the mean-loss curvature
DATAINF_DAMPING = 0.01
# EK-FAC's damping: DAMPING for every library (the tables), or with PEERS_EKFAC_DAMPING=default each
# library's own heuristic, 0.1 x mean(Lambda) per layer (selectkit's `damping: null`, kronfluence's
# damping_factor=None): what a user of each gets without tuning
EKFAC_DAMPING = None if os.environ.get("PEERS_EKFAC_DAMPING") == "default" else DAMPING
PROJ_DIM = 128
# worker threads; PEERS_THREADS=1 on a loaded machine: 2-thread OpenMP barriers stall there (measured: a
# selectkit gradient pass 8.7 s with 2 threads, 0.10 s with 1, at load average ~3.6 on 2 cores)
THREADS = int(os.environ.get("PEERS_THREADS", "2"))
BATCH = 32
LORA = {"r": 1, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}



@dataclass(frozen=True)
class Size:
    """A model and data size: the pretrained byte-level Llama (hidden, layers, full-parameter pretraining
    steps on the synthetic task mixture, tests/influence_fixtures.pretrained_lm), the numbers of train and
    query texts (prefixes of the same keyed generator, so a larger size holds the smaller's texts) and
    whether the explicit inverse-GGN reference (p x p Gauss-Newton, p LoRA parameters) is computed."""

    name: str
    hidden: int
    layers: int
    steps: int
    train: int
    query: int
    reference: bool = True

    def folder(self) -> Path:
        """Its own work folder: a size's cached model, data, reference and ground truth are never another's."""
        return WORK / ("peers" if self.name == "reduced" else f"peers-{self.name}")


# reduced: the tiny model of the tables in benchmarks/README.md (45,216 parameters, LoRA 256).
# issue: issue 22 item 5's size, 12,097,920 parameters (hidden 384, 8 layers, MLP 768; LoRA r=1 on q,v:
# 12,288), chosen by measurement in compare_peers_lds.py's docstring; its reference is skipped (see there).
SIZES = {"reduced": Size("reduced", 32, 2, 30, 128, 16), "issue": Size("issue", 384, 8, 60, 320, 32, reference=False)}

# (library, method, python, extra sys.path)
JOBS = [
    ("selectkit", "EK-FAC", ROOT / ".venv/bin/python", None),
    ("kronfluence", "EK-FAC", ROOT / ".venv/bin/python", WORK / "kf"),
    ("selectkit", "DataInf", ROOT / ".venv/bin/python", None),
    ("dattri", "DataInf", WORK / "dattri/bin/python", None),
    ("selectkit", "TracIn", ROOT / ".venv/bin/python", None),
    ("dattri", "TracIn", WORK / "dattri/bin/python", None),
    ("selectkit", f"TRAK k={PROJ_DIM}", ROOT / ".venv/bin/python", None),
    ("traker", f"TRAK k={PROJ_DIM}", WORK / "trak/bin/python", None),
]


# ---------------------------------------------------------------- shared by the workers (torch/transformers/peft)


def lm_loss(forward, batch):
    """A copy of selectkit_plugins.lib.influence.grads.lm_loss: per-example mean CE over label tokens."""
    import torch

    logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    valid = labels != -100
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none") * valid
    return ce.sum(1) / valid.sum(1).clamp(min=1)


def load(folder: Path, dtype=None, device: str = "cpu"):
    """The LoRA model on `device` (eval mode) and the train and query tensors (on the CPU: each library
    moves its batches itself; `on_device` does it for selectkit's)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder / "lm", dtype=dtype or torch.float32,
                                                 attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(**LORA))
    state = torch.load(folder / "lora.pt")
    named = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            named[k].copy_(v)
    data = torch.load(folder / "data.pt")
    return model.to(device).eval(), data["train"], data["query"]


def on_device(parts: list[dict], device: str) -> list[dict]:
    return [{k: v.to(device) for k, v in b.items()} for b in parts]


def batches(data: dict, size: int) -> list[dict]:
    n = len(data["input_ids"])
    return [{k: v[s:s + size] for k, v in data.items()} for s in range(0, n, size)]


def lora_names(model) -> list[str]:
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Timer:
    def __init__(self):
        self.phases: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.phases[name] = timer.phases.get(name, 0.0) + time.perf_counter() - self.start

        return _Ctx()


# ---------------------------------------------------------------- workers


def run_selectkit(method: str, folder: Path, t: Timer, device: str = "cpu"):
    import numpy as np
    import torch

    from selectkit_plugins.lib.influence.ekfac import fit_ekfac, fit_rows_scores, precondition_queries
    from selectkit_plugins.lib.influence.grads import GradientFeaturizer, linear_modules
    from selectkit_plugins.lib.influence.grads import lm_loss as sk_loss
    from selectkit_plugins.lib.influence.scores import datainf, trak

    model, train, query = load(folder, device=device)
    tb, qb = on_device(batches(train, BATCH), device), on_device(batches(query, BATCH), device)
    if method == "EK-FAC":
        modules = linear_modules(model)
        with t("fit"):
            layers = fit_ekfac(model, sk_loss, tb, modules)
        with t("score"):  # as a recipe whose pool is within factor_examples: the fit kept the train gradients
            queries = precondition_queries(model, sk_loss, layers, modules, qb, damping=EKFAC_DAMPING)
            return fit_rows_scores(model, sk_loss, layers, modules, tb, queries)
    proj = PROJ_DIM if method.startswith("TRAK") else None
    feat = GradientFeaturizer(model, sk_loss, proj_dim=proj, layout="per_block" if method == "DataInf" else "joint")
    with t("grads"):
        g = torch.cat([feat(b).features for b in tb]).double().cpu().numpy()
        q = torch.cat([feat(b).features for b in qb]).double().cpu().numpy()
    with t("score"):
        if method == "DataInf":
            return datainf(g, q, [(a, b) for _, a, b in feat.slices], damping=DATAINF_DAMPING)
        if method.startswith("TRAK"):  # traker's lambda_reg = DAMPING * n is on features R^T g / sqrt(D) (R's
            # entries N(0, 1)); ours are R^T g / sqrt(k), so our X^T X is D / k times its: the same is DAMPING n D / k
            return trak([g], [q], damping=DAMPING * len(g) * feat.raw_dim / PROJ_DIM, absolute=True)
        return np.asarray(g @ q.T)


def run_kronfluence(method: str, folder: Path, t: Timer, device: str = "cpu"):
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence_task import lm_task

    model, train, query = load(folder, device=device)
    names = lora_names(model)

    LMTask, Rows = lm_task(names, lm_loss)

    with tempfile.TemporaryDirectory() as out:
        with t("fit"):
            kf_model = prepare_model(model, LMTask())
            analyzer = Analyzer("lm", kf_model, LMTask(), cpu=device == "cpu", output_dir=out, disable_tqdm=True,
                                disable_model_save=True)
            analyzer.fit_all_factors("f", dataset=Rows(train), per_device_batch_size=BATCH,
                                     factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=True),
                                     overwrite_output_dir=True)
        with t("score"):
            analyzer.compute_pairwise_scores("s", "f", query_dataset=Rows(query), train_dataset=Rows(train),
                                             per_device_query_batch_size=len(query["input_ids"]),
                                             per_device_train_batch_size=BATCH,
                                             score_args=ScoreArguments(damping_factor=EKFAC_DAMPING),
                                             overwrite_output_dir=True)
            return analyzer.load_pairwise_scores("s")["all_modules"].cpu().numpy().T


def run_dattri(method: str, folder: Path, t: Timer, device: str = "cpu"):
    import torch
    from dattri.algorithm.influence_function import IFAttributorDataInf
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    model, train, query = load(folder, device=device)
    params = [f"{n}.weight" for n in lora_names(model)]
    keys = ("input_ids", "attention_mask", "labels")

    def loss(p, data):  # one example; dattri hands (T,) (TracIn) or (1, T) (DataInf) tensors
        batch = {k: v.reshape(1, -1) for k, v in zip(keys, data)}
        return lm_loss(lambda **kw: torch.func.functional_call(model, p, (), kw), batch).sum()

    def loader(data):
        ds = torch.utils.data.TensorDataset(*(data[k] for k in keys))
        return torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=False)

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    task = AttributionTask(loss_func=loss, model=model, checkpoints=state)
    if method == "TracIn":
        attr = TracInAttributor(task, weight_list=torch.tensor([1.0]), normalized_grad=False, layer_name=params,
                                device=device)
        attr.projector_kwargs = None  # exact gradients (the default projects to 512 dims)
        with t("score"):
            return attr.attribute(loader(train), loader(query)).detach().double().cpu().numpy()
    attr = IFAttributorDataInf(task, layer_name=params, device=device, regularization=DATAINF_DAMPING)
    with t("grads"):
        attr.cache(loader(train))
    with t("score"):
        return attr.attribute(loader(train), loader(query)).detach().double().cpu().numpy()


def run_traker(method: str, folder: Path, t: Timer):
    import torch
    from trak import TRAKer
    from trak.modelout_functions import AbstractModelOutput
    from trak.projectors import BasicProjector, ProjectionType

    model, train, query = load(folder)
    params = [f"{n}.weight" for n in lora_names(model)]
    keys = ("input_ids", "attention_mask", "labels")

    class NegLoss(AbstractModelOutput):
        """f = -loss (mean label-token log-prob); d loss / d f = -1, a constant, so Q = 1."""

        def __init__(self):
            super().__init__()

        @staticmethod
        def get_output(model, weights, buffers, ids, mask, labels):
            batch = {"input_ids": ids.unsqueeze(0), "attention_mask": mask.unsqueeze(0), "labels": labels.unsqueeze(0)}
            return -lm_loss(lambda **kw: torch.func.functional_call(model, (weights, buffers), (), kw), batch).sum()

        def get_out_to_loss_grad(self, model, weights, buffers, batch):
            return torch.ones(len(batch[0]), 1)

    n, m = len(train["input_ids"]), len(query["input_ids"])
    dim = sum(dict(model.named_parameters())[p].numel() for p in params)
    with tempfile.TemporaryDirectory() as out:
        with t("featurize"):
            proj = BasicProjector(grad_dim=dim, proj_dim=PROJ_DIM, seed=0, proj_type=ProjectionType.normal,
                                  device="cpu")
            traker = TRAKer(model=model, task=NegLoss(), train_set_size=n, save_dir=out, device="cpu",
                            projector=proj, proj_dim=PROJ_DIM, use_half_precision=False, grad_wrt=params,
                            lambda_reg=DAMPING * n)  # TRAK's Gram matrix is a sum over examples
            traker.load_checkpoint(model.state_dict(), model_id=0)
            for b in batches(train, BATCH):
                traker.featurize(batch=[b[k] for k in keys], num_samples=len(b["input_ids"]))
            traker.finalize_features()
        with t("score"):
            traker.start_scoring_checkpoint("q", model.state_dict(), model_id=0, num_targets=m)
            for b in batches(query, BATCH):
                traker.score(batch=[b[k] for k in keys], num_samples=len(b["input_ids"]))
            return torch.as_tensor(traker.finalize_scores("q")).double().numpy()


WORKERS = {"selectkit": run_selectkit, "kronfluence": run_kronfluence, "dattri": run_dattri, "traker": run_traker}


def worker(lib: str, method: str, folder: Path, out: Path) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    t = Timer()
    scores = WORKERS[lib](method, folder, t)
    np.save(out.with_suffix(".npy"), np.asarray(scores, dtype=np.float64))
    out.write_text(json.dumps({"phases": t.phases, "peak_mb": peak_mb()}))


# ---------------------------------------------------------------- parent: model, data, reference, table


def ggn_columns(model, train: list[dict], names: list[str], vs):
    """G V for a block of vectors V (K, p): selectkit_plugins.lib.influence.hessian.lm_ggn_vp (Gauss-Newton of the
    mean label-token loss by the double-vjp trick), batched over V with is_grads_batched."""
    import torch

    named = dict(model.named_parameters())
    tensors = [named[p] for p in names]
    total = sum(len(b["input_ids"]) for b in train)
    out = torch.zeros_like(vs)
    for batch in train:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        valid = (batch["labels"][:, 1:] != -100).to(logits.dtype)
        weight = valid / valid.sum(1, keepdim=True).clamp(min=1) / total
        u = torch.zeros_like(logits, requires_grad=True)
        flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(logits, tensors, grad_outputs=u,
                                                                      create_graph=True)])
        jv = torch.autograd.grad(flat, u, grad_outputs=vs, is_grads_batched=True, retain_graph=True)[0]
        p = torch.softmax(logits.detach(), -1)
        h = (p * jv - p * (p * jv).sum(-1, keepdim=True)) * weight[..., None]
        back = torch.autograd.grad(logits, tensors, grad_outputs=h, is_grads_batched=True)
        out += torch.cat([b.reshape(len(vs), -1) for b in back], 1)
    return out


def texts(size: Size = SIZES["reduced"]) -> tuple[list[dict], list[dict]]:
    """The train and query rows (text, prompt, response, task) that data.pt tokenises (128 and 16 at the
    reduced size): prefixes of one keyed generator each, so every size's texts extend the reduced ones."""
    sys.path.insert(0, str(ROOT / "tests"))
    from influence_fixtures import TASKS, rows

    per = len(TASKS)
    return rows(-(-size.train // per), seed=1)[:size.train], rows(-(-size.query // per), seed=7)[:size.query]


def setup(folder: Path, size: Size = SIZES["reduced"]) -> None:
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, ByT5Tokenizer

    sys.path.insert(0, str(ROOT / "tests"))
    from influence_fixtures import pretrained_lm

    from selectkit_plugins.lib.influence.grads import lm_batch

    torch.set_num_threads(THREADS)
    pretrained_lm(folder / "lm", steps=size.steps, hidden=size.hidden, layers=size.layers)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder / "lm"), LoraConfig(**LORA))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    torch.save({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, folder / "lora.pt")
    tok = ByT5Tokenizer()
    train, query = texts(size)
    width = 40

    def padded(data):
        b = lm_batch(tok, [r["text"] for r in data], [r["prompt"] for r in data], width)
        pad = width - b["input_ids"].shape[1]
        return {k: torch.nn.functional.pad(v, (0, pad), value=-100 if k == "labels" else 0) for k, v in b.items()}

    data = {"train": padded(train), "query": padded(query)}
    torch.save(data, folder / "data.pt")
    if size.reference:
        np.save(folder / "reference.npy", reference(folder))
    (folder / "size.json").write_text(json.dumps(size.__dict__, sort_keys=True))


def reference(folder: Path):
    """The explicit inverse-GGN scores (train x query, float64) of the LoRA in `folder`."""
    import torch

    from selectkit_plugins.lib.influence.grads import GradientFeaturizer
    from selectkit_plugins.lib.influence.hessian import inverse_hessian_scores

    model, tr, qu = load(folder, torch.float64)
    feat = GradientFeaturizer(model, lm_loss)
    names = feat.param_names
    tb = batches(tr, BATCH)
    g = torch.cat([feat.raw(b)[0] for b in tb]).double()
    q = torch.cat([feat.raw(b)[0] for b in batches(qu, BATCH)]).double()
    eye = torch.eye(g.shape[1], dtype=torch.float64)
    ggn = torch.cat([ggn_columns(model, tb, names, eye[s:s + 128]) for s in range(0, len(eye), 128)])
    return inverse_hessian_scores(g.numpy(), q.numpy(), ((ggn + ggn.T) / 2).numpy(), DAMPING)


def run_job(lib: str, method: str, python: Path, extra: Path | None, folder: Path, repeats: int):
    """Run one (library, method) `repeats` times, each in a fresh worker subprocess of its venv, on the
    model and data in `folder`. Returns (per-run {"phases", "peak_mb"}, the last run's scores, error or None)."""
    import numpy as np

    runs, scores = [], None
    for i in range(repeats):
        out = folder / f"{lib}-{method.split()[0]}-{i}.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": str(ROOT)}
        if extra is not None:
            env["PEER_PATH"] = str(extra)
        proc = subprocess.run([str(python), __file__, "--worker", lib, method, str(folder), str(out)],
                              env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:  # the last stderr line that is not a progress bar, and how it ended
            lines = [x for x in proc.stderr.replace("\r", "\n").splitlines() if x.strip() and "it/s" not in x
                     and "s/it" not in x and "\x1b" not in x]
            how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            return runs, scores, f"{how}: {(lines or ['?'])[-1][:120]}"
        runs.append(json.loads(out.read_text()))
        scores = np.load(out.with_suffix(".npy"))
    return runs, scores, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", help="comma-separated libraries to run (default: all available)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--fresh", action="store_true", help="rebuild the cached model, data and reference")
    ap.add_argument("--worker", nargs=4, metavar=("LIB", "METHOD", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        lib, method, folder, out = args.worker
        extra = os.environ.get("PEER_PATH")
        if extra:
            sys.path.append(extra)  # appended: never shadows the venv's own packages
        worker(lib, method, Path(folder), Path(out))
        return

    import numpy as np
    from scipy.stats import spearmanr

    folder = WORK / "peers"
    if args.fresh or not (folder / "reference.npy").exists():
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        setup(folder)
        print(f"setup + reference (explicit GGN): {time.perf_counter() - start:.1f}s", flush=True)
    ref = np.load(folder / "reference.npy")
    only = set(args.only.split(",")) if args.only else None
    results, skipped, ours_scores = [], [], {}
    for lib, method, python, extra in JOBS:
        if only and lib not in only:
            continue
        if not python.exists() or (extra is not None and not extra.exists()):
            skipped.append(f"{lib} {method}: no venv at {extra or python.parent.parent}")
            continue
        runs, scores, err = run_job(lib, method, python, extra, folder, args.repeats)
        if err:
            skipped.append(f"{lib} {method}: {err}")
            print(f"  {lib} {method} failed: {err}", flush=True)
            continue
        phases = {k: float(np.median([r["phases"][k] for r in runs])) for k in runs[0]["phases"]}
        def rho(a, b):
            return float(np.mean([spearmanr(a[:, j], b[:, j])[0] for j in range(b.shape[1])]))

        if lib == "selectkit":
            ours_scores[method] = scores
        row = {"library": lib, "method": method, "phases": phases, "total_s": sum(phases.values()),
               "peak_mb": float(np.median([r["peak_mb"] for r in runs])), "spearman": rho(scores, ref),
               "spearman_vs_selectkit": rho(scores, ours_scores[method]) if method in ours_scores else None,
               "repeats": len(runs)}
        results.append(row)
        print(f"  {lib} {method}: {row['total_s']:.2f}s", flush=True)

    ours = {r["method"]: r["total_s"] for r in results if r["library"] == "selectkit"}
    print(f"\n128 train x 16 query, tiny Llama + LoRA r=1 q,v (256 params), {THREADS} thread(s), "
          f"median of {args.repeats}; Spearman = mean per-query vs inverse-GGN (damping {DAMPING}); "
          f"x sk = total / selectkit's; vs sk = Spearman with selectkit's scores for the method")
    print(f"{'library':12s} {'method':16s} {'phases (s)':34s} {'total s':>8s} {'x sk':>6s} {'peak MB':>8s} "
          f"{'Spearman':>8s} {'vs sk':>6s}")
    for r in results:
        ph = ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items())
        ratio = r["total_s"] / ours[r["method"]] if r["method"] in ours else float("nan")
        r["ratio"] = ratio
        print(f"{r['library']:12s} {r['method']:16s} {ph:34s} {r['total_s']:8.2f} {ratio:6.2f} {r['peak_mb']:8.0f} "
              f"{r['spearman']:8.3f} {r['spearman_vs_selectkit'] or float('nan'):6.3f}")
    for s in skipped:
        print(f"skipped: {s}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "skipped": skipped}, indent=1))


if __name__ == "__main__":
    main()
