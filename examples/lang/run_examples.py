"""Run every ``examples/lang/*.ppl`` program quickly: compile it, simulate and assess each model and guide, and train
each objective for a few steps with the data of the ``.json`` file beside it (as ``python -m ppl fit`` does).

    python examples/lang/run_examples.py [--steps 50]

Exits non-zero if a program fails to compile or an objective's values are not finite.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import ppl.lang  # noqa: E402
from ppl.__main__ import train  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def run_one(path: str, steps: int) -> bool:
    data_path = os.path.splitext(path)[0] + ".json"
    data = {}
    if os.path.exists(data_path):
        with open(data_path) as f:
            data = json.load(f)
    prog = ppl.lang.load(path, data)
    name = os.path.basename(path)
    ok = True
    key = jax.random.key(0)
    for fn_name, info in prog.infos.items():
        if info.kind == "objective":
            continue
        tr = prog[fn_name].simulate(key)
        score, _ = prog[fn_name].assess(tr.choices)
        same = bool(np.allclose(score, tr.score, rtol=1e-5, atol=1e-5))
        ok &= same
        shapes = {a: tuple(np.shape(v)) for a, v in tr.choices.items()}
        print(f"{name}: {info.kind} {fn_name}: choices {shapes}, score {float(tr.score):.4f}"
              f"{'' if same else '  (assess MISMATCH)'}")
    for obj in prog.objectives:
        values = train(prog[obj], prog.init_args(obj), steps=steps, key=key, lr=0.05).values
        finite = bool(np.all(np.isfinite(values)))
        ok &= finite
        k = max(1, len(values) // 5)
        print(f"{name}: objective {obj}: {steps} steps, value {np.mean(values[:k]):.4f} -> {np.mean(values[-k:]):.4f}"
              f"{'' if finite else '  (NON-FINITE)'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=50)
    ns = p.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(HERE, "*.ppl")))
    failed = [p for p in paths if not run_one(p, ns.steps)]
    print(f"{len(paths) - len(failed)}/{len(paths)} examples ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
