"""The GenJAX half of ``bench/genjax_compare.py``: its programs, the scan-bug demonstration, and the worker that
runs in ``.venv-genjax`` and answers the main process over a pipe (see that script's docstring)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from genjax_compare_shared import (
    BUG_KEYS,
    LATENT,
    MIX_STRATEGIES,
    ROOT,
    TAG,
    THETA,
    baked_keys,
    decode,
    elbo_stats,
    encode,
    floor_system,
    grad_stats,
    import_common,
    per_point,
    size_stats,
    unflatten_params,
)

# ---------------------------------------------------------------------------------------------- GenJAX side (worker)


def genjax_systems(w, arrays):
    """``{row: (grad_fn, args, estimate_fn or None)}`` for one workload, in GenJAX 1.0.14's idioms."""
    import genjax
    from genjax import Const, categorical, const, expectation, flip, gen, normal, seed
    from genjax.adev import reinforce
    from genjax.core import distribution
    from tensorflow_probability.substrates import jax as tfp

    tfd = tfp.distributions
    key = jax.random.key(1)
    if w["kind"] == "floor":
        return floor_system(w, arrays)

    if w["kind"] == "vae":
        # event-shaped densities through genjax's own TFP wrapper (ppl's `.to_event(2)`)
        normal2 = genjax.tfp_distribution(lambda loc, scale: tfd.Independent(tfd.Normal(loc, scale), 2), name="N2")
        bernoulli2 = genjax.tfp_distribution(lambda lg: tfd.Independent(tfd.Bernoulli(logits=lg), 2), name="B2")

        @gen
        def model(dec, n: Const[int]):
            z = normal2(jnp.zeros((n.value, LATENT)), 1.0) @ "z"
            bernoulli2(decode(dec, z)) @ "x"

        @gen
        def guide(enc, x):
            loc, scale = encode(enc, x)
            genjax.multivariate_normal_diag_reparam(loc, scale) @ "z"

        @expectation
        def elbo(dec, enc, x):  # genjax.inference.elbo_factory's body, with the model's parameters as an argument
            tr = guide.simulate(enc, x)
            merged, _ = model.merge({"x": x}, tr.get_choices())
            lp, _ = model.assess(merged, dec, const(x.shape[0]))
            return lp + tr.get_score()

        def grad(key, dec, enc, x):
            gd, ge, _ = seed(elbo.grad_estimate)(key, dec, enc, x)
            return gd, ge

        def estimate(*args):
            # not `elbo.estimate`: it pairs every argument with a Python-scalar zero tangent (tree_map(lambda _: 0.0)),
            # and the interpreter then fails on the first matmul ("dot_general requires lhs dimension numbers...")
            zeros = jax.tree_util.tree_map(jnp.zeros_like, args)
            return elbo.jvp_estimate(*genjax.Dual.dual_tree(args, zeros)).primal

        dec, enc = unflatten_params("dec", arrays), unflatten_params("enc", arrays)
        x = jnp.asarray(arrays["vae_x"][: w["batch"]])
        est = jax.jit(lambda k: seed(estimate)(k, dec, enc, x))
        return {"reparam": (grad, (key, dec, enc, x), est)}

    K, N = w["K"], w["N"]
    x, mu, logits = (jnp.asarray(arrays[f"mix{K}_{N}_{k}"]) for k in ("x", "mu", "logits"))

    if K == 3:

        @gen
        def model(mu):
            c = categorical(jnp.zeros(K)) @ "c"
            normal(mu[c], 1.0) @ "x"

        def keyed_categorical(key, logits, sample_shape=()):
            return tfd.Categorical(logits=logits).sample(seed=key, sample_shape=sample_shape)

        prims = {
            "reinforce": distribution(reinforce(categorical.sample, categorical.logpdf, keyed_categorical),
                                      categorical.logpdf),
            "enum": distribution(genjax.categorical_enum_parallel, categorical.logpdf),
        }
        guide_param = lambda lg: lg
    else:

        @gen
        def model(mu):
            c = flip(0.5) @ "c"
            normal(mu[c.astype(jnp.int32)], 1.0) @ "x"

        prims = {
            "reinforce": genjax.flip_reinforce,
            "enum": distribution(genjax.flip_enum, flip.logpdf),
            "enum (parallel)": distribution(genjax.flip_enum_parallel, flip.logpdf),
            "mvd": distribution(genjax.flip_mvd, flip.logpdf),
        }
        guide_param = jax.nn.sigmoid

    def make(d):
        @gen
        def guide(logits):
            d(guide_param(logits)) @ "c"

        @expectation
        def elbo(mu, logits, x):
            tr = guide.simulate(logits)
            merged, _ = model.merge({"x": x}, tr.get_choices())
            lp, _ = model.assess(merged, mu)
            return lp + tr.get_score()

        def one(key, mu, logits, x):
            gm, gl, _ = seed(elbo.grad_estimate)(key, mu, logits, x)
            return gm, gl

        return per_point(one)

    return {row: (make(prims[row]), (key, mu, logits, x), None) for row, _, _ in MIX_STRATEGIES[K]}


def genjax_scan_bug() -> dict[str, Any]:
    """The same estimate for every key when a random choice sits inside a scan in an ADEV expectation."""
    from genjax import Scan, const, expectation, flip_reinforce, gen, normal, normal_reparam, seed
    from genjax.inference import elbo_factory

    keys = [jax.random.key(i) for i in range(BUG_KEYS)]
    many = jax.random.split(jax.random.key(7), 1000)
    out = {}

    def walk_body(theta):
        def body(c, _):
            z = normal_reparam(theta, 1.0)
            return c + z, z

        return jax.lax.scan(body, 0.0, None, length=3)

    @expectation
    def walk(theta):
        return walk_body(theta)[0]

    @expectation
    def step_diff(theta):
        _, zs = walk_body(theta)
        return zs[0] - zs[1]

    est = jax.jit(lambda k, t: seed(walk.estimate)(k, t))
    out["walk"] = {"values": [float(est(k, THETA)) for k in keys],
                   "baked": baked_keys(str(jax.make_jaxpr(lambda k, t: seed(walk.estimate)(k, t))(keys[0], THETA)))}
    est = jax.jit(lambda k, t: seed(step_diff.estimate)(k, t))
    out["step_diff"] = {"values": [float(est(k, THETA)) for k in keys]}

    @gen
    def q_step(carry, theta):
        return carry, normal_reparam(theta, 1.0) @ "z"

    @gen
    def guide(constraint, theta):
        return Scan(q_step, length=const(3))(0.0, jnp.full(3, theta)) @ "s"

    @gen
    def p_step(carry, _):
        return carry, normal(0.0, 1.0) @ "z"

    @gen
    def model():
        return Scan(p_step, length=const(3))(0.0, None) @ "s"

    elbo = elbo_factory(model, guide, {})
    est = jax.jit(lambda k, t: seed(elbo.estimate)(k, t))
    grad = jax.jit(lambda k, t: seed(elbo.grad_estimate)(k, t))
    grads = jax.jit(jax.vmap(lambda k, t: seed(elbo.grad_estimate)(k, t), in_axes=(0, None)))(many, THETA)
    out["elbo"] = {"values": [float(est(k, THETA)) for k in keys], "grads": [float(grad(k, THETA)) for k in keys],
                   "grad_mean": float(grads.mean()), "grad_se": float(grads.std() / np.sqrt(len(many)))}

    @expectation
    def flips(p):
        def body(c, _):
            return c + jnp.where(flip_reinforce(p), 1.0, 0.0), None

        return jax.lax.scan(body, 0.0, None, length=3)[0]

    g = jax.jit(jax.vmap(lambda k, t: seed(flips.grad_estimate)(k, t), in_axes=(0, None)))(many, 0.3)
    out["flip"] = {"values": [float(v) for v in g[:BUG_KEYS]], "grad_mean": float(g.mean()),
                   "grad_se": float(g.std() / np.sqrt(len(many)))}

    @gen
    def step(carry, _):
        n = normal(0.0, 1.0) @ "n"
        return carry + n, n

    sim = jax.jit(lambda k: seed(Scan(step, length=const(3)).simulate)(k, 0.0, None).get_retval()[0])
    out["simulate"] = {"values": [float(sim(k)) for k in keys]}
    return out


def genjax_environment(common) -> dict[str, str]:
    from importlib.metadata import version

    import jaxlib

    return {
        "python": sys.version.split()[0], "genjax": version("genjax"), "jax": jax.__version__,
        "jaxlib": jaxlib.__version__, "tfp-nightly": version("tfp-nightly"),
        "backend": f"{jax.default_backend()} ({jax.devices()[0].device_kind})", "cpu": common.cpu_model(),
    }


def build_genjax(common, plan, arrays):
    """Compile and check every GenJAX program: ``({workload: [Compiled]}, report)``."""
    compiled, report = {}, {"env": genjax_environment(common), "systems": {}}
    for w in plan["workloads"]:
        compiled[w["name"]] = []
        try:
            systems = genjax_systems(w, arrays)
        except Exception as e:  # noqa: BLE001 - reported in the failures table
            report["systems"][w["name"]] = {"*": {"error": _error(e)}}
            continue
        rows = report["systems"].setdefault(w["name"], {})
        for row, (fn, fargs, est) in systems.items():
            try:
                c = common.compile_timed(row, fn, *fargs)
                jax.block_until_ready(c())
            except Exception as e:  # noqa: BLE001 - what a GenJAX user would hit, reported as such
                rows[row] = {"error": _error(e)}
                continue
            compiled[w["name"]].append(c)
            info = {"trace_lower_s": c.trace_lower_s, "compile_s": c.compile_s, "size": size_stats(common, c)}
            if w["kind"] == "vae" and est is not None and w.get("check"):
                info["elbo"] = elbo_stats(est, plan["vae_keys"])
            if w["kind"] == "mix":
                info["grad"] = grad_stats(fn, *fargs[1:], plan["mix_keys"])
            rows[row] = info
    return compiled, report


def run_genjax_scan_bug() -> dict[str, Any]:
    try:
        return genjax_scan_bug()
    except Exception as e:  # noqa: BLE001 - reported in the table
        return {"error": _error(e)}


def worker(args) -> None:
    """The GenJAX half: compile every program, report, then answer ``time`` / ``scan_bug`` / ``quit`` requests."""
    common = import_common(without_ppl=True)
    inputs = Path(args.inputs)
    plan = json.loads((inputs / "plan.json").read_text())
    arrays = dict(np.load(inputs / "inputs.npz"))

    def send(msg):
        sys.stdout.write(TAG + json.dumps(msg) + "\n")
        sys.stdout.flush()

    compiled, report = build_genjax(common, plan, arrays)
    send({"event": "ready", **report})

    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "time":
            t = common.interleaved(compiled[msg["workload"]], msg["reps"])
            send({"times": {k: v.times for k, v in t.items()}})
        elif msg["cmd"] == "scan_bug":
            send({"scan_bug": run_genjax_scan_bug()})
        else:
            break


def _error(e: BaseException) -> str:
    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines() or ["(no message)"]
    text = msg[0] if len(msg[0]) > 20 or len(msg) == 1 else f"{msg[0]} {msg[1]}"
    return f"{type(e).__name__}: {text[:220]}{'…' if len(text) > 220 else ''}"


SCRIPT = Path(__file__).with_name("genjax_compare.py").resolve()  # the worker runs as `genjax_compare.py --side genjax`


class GenjaxSide:
    """The worker process, driven over its stdin/stdout."""

    def __init__(self, python: Path, inputs: Path, log: Path):
        self.log = log
        self.proc = subprocess.Popen(
            [str(python), str(SCRIPT), "--side", "genjax", "--inputs", str(inputs)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
        )

    def read(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        self.proc.wait()
        tail = "\n".join(self.log.read_text().splitlines()[-30:])
        raise RuntimeError(f"the GenJAX worker exited ({self.proc.returncode}) without answering:\n{tail}")

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


