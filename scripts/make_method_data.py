"""Build the small task files some method recipes need (recipes/data/), from the committed demo
data only: deterministic, no network. Run once; the output is committed.

    .venv/bin/python scripts/make_method_data.py

- arithmetic.jsonl (grpo_hard): 300 sums with 1, 2 and 3 digit operands and their answers.
- membership.jsonl + unseen_politics.jsonl (mink_pp_contamination): the 100 statements the demo LM
  was trained on (recipes/data/target_politics.jsonl, `member: true`) mixed with 200 pool politics
  statements it never saw (`member: false`), and 100 further unseen pool statements for calibration.
- mcq.jsonl (smart): 300 "which word comes next" items over pool politics statements: `question` (the
  statement's opening words), `choices` (the true next word and 3 words from other statements, in a
  seeded order), `answer` (0-based index); 20 of them repeated with their choices reordered
  (near-duplicates for `dedup`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "recipes" / "data"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def write(name: str, items: list[dict]) -> None:
    with open(DATA / name, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"{name}: {len(items)} rows")


def arithmetic(rng: np.random.Generator) -> list[dict]:
    items = []
    for digits in (1, 2, 3):
        lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10 ** digits
        for _ in range(100):
            a, b = (int(x) for x in rng.integers(lo, hi, size=2))
            items.append({"question": f"{a} + {b} =", "answer": str(a + b), "digits": digits})
    order = rng.permutation(len(items))
    return [{"id": f"sum-{i:03d}", **items[j]} for i, j in enumerate(order)]


def membership(rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    seen = [r["text"] for r in rows("target_politics.jsonl")]
    unseen = [r["text"] for r in rows("pool.jsonl") if r["domain"] == "politics"]
    unseen = [unseen[i] for i in rng.permutation(len(unseen))]
    mixed = [{"text": t, "member": True} for t in seen] + [{"text": t, "member": False} for t in unseen[:200]]
    order = rng.permutation(len(mixed))
    candidates = [{"id": f"mem-{i:03d}", **mixed[j]} for i, j in enumerate(order)]
    calibration = [{"id": f"unseen-{i:03d}", "text": t} for i, t in enumerate(unseen[200:300])]
    return candidates, calibration


def mcq(rng: np.random.Generator) -> list[dict]:
    statements = [r["text"] for r in rows("pool.jsonl") if r["domain"] == "politics"]
    words = [re.findall(r"[A-Za-z']+", s) for s in statements]
    vocabulary = sorted({w for ws in words for w in ws})
    items = []
    for i in rng.permutation(len(statements)):
        ws = statements[i].split()
        if len(ws) < 6:
            continue
        cut = int(rng.integers(3, min(len(ws) - 1, 12)))
        truth = re.sub(r"[^A-Za-z']", "", ws[cut])
        if not truth:
            continue
        distractors = []
        while len(distractors) < 3:
            w = vocabulary[int(rng.integers(len(vocabulary)))]
            if w.lower() != truth.lower() and w not in distractors:
                distractors.append(w)
        choices = [truth, *distractors]
        order = rng.permutation(4)
        items.append({"question": " ".join(ws[:cut]), "choices": [choices[k] for k in order],
                      "answer": int(np.flatnonzero(order == 0)[0])})
        if len(items) == 280:
            break
    for k in rng.choice(len(items), size=20, replace=False):
        item = items[int(k)]
        order = rng.permutation(4)
        items.append({"question": item["question"], "choices": [item["choices"][j] for j in order],
                      "answer": int(np.flatnonzero(order == item["answer"])[0])})
    order = rng.permutation(len(items))
    return [{"id": f"mcq-{i:03d}", **items[j]} for i, j in enumerate(order)]


def main() -> None:
    write("arithmetic.jsonl", arithmetic(np.random.default_rng(1)))
    candidates, calibration = membership(np.random.default_rng(2))
    write("membership.jsonl", candidates)
    write("unseen_politics.jsonl", calibration)
    write("mcq.jsonl", mcq(np.random.default_rng(3)))


if __name__ == "__main__":
    main()
