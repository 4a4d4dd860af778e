"""Data-parallel ``fit(..., devices=...)``: same estimates as one device for the same keys, no full-batch gathers.

The multi-device checks run in a subprocess started with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(the flag must be set before jax is imported; this pytest process already imported it with one CPU device). The
subprocess is this file run as a module (``python -m tests.test_sharding --worker``): it prints one JSON object and
the tests below check it. The multi-host path is checked the same way: two processes with two CPU devices each,
joined by ``jax.distributed.initialize`` on localhost (``--multihost``).

Tolerances. Particle ``j`` of step ``i`` has the key ``split(fold_in(key, i), K)[j]`` and the minibatch has the same
rows whatever the devices, so every per-particle, per-row term is computed from the same inputs. What changes is the
order of float additions of a reduction over a sharded axis (the mean over particles; a sum over the minibatch in the
objective): a per-device partial sum, then an all-reduce. That is ~1 ulp per reduction (float32 eps ≈ 1.2e-7), which
the optimizer carries along; over 40 Adam steps the parameters stay within ~1e-6. So: values to rtol 1e-5, parameters
to rtol 1e-5 / atol 1e-5. A different key or a different minibatch row would change the parameters by ~0.2 (the
runs move them by ~1).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from jax.sharding import PartitionSpec as P

import ppl
from ppl.workflow import sharding
from ppl.workflow.fit import fit, lower_fit

ROOT = Path(__file__).resolve().parents[1]
N, D, B = 256, 3, 32  # rows in the data set, regression weights, minibatch rows (all distinct from K <= 8)
NUM_DEVICES = 4
TRUE_W = np.array([1.0, -2.0, 0.5], dtype=np.float32)


def make_data() -> dict[str, np.ndarray]:
    x = np.asarray(jax.random.normal(jax.random.key(1), (N, D)))
    y = x @ TRUE_W + np.asarray(jax.random.normal(jax.random.key(2), (N,)))
    return {"x": x, "y": y.astype(np.float32)}


@ppl.gen
def guide(p):
    ppl.sample("w", dist.Normal(p["mu"], jax.nn.softplus(p["rho"])).to_event(1))


@ppl.expectation
def elbo(guide_params, batch):
    """Minibatch ELBO of a Bayesian linear regression: the likelihood of ``b`` rows is scaled by ``N / b``."""
    z, log_q = ppl.sim(guide, guide_params)
    w = z["w"]
    prior = dist.Normal(0.0, 1.0).log_prob(w).sum()
    lik = dist.Normal(batch["x"] @ w, 1.0).log_prob(batch["y"]).sum() * (N / batch["y"].shape[0])
    return prior + lik - log_q


@ppl.gen
def mean_model():
    z = ppl.sample("z", dist.Normal(jnp.zeros(D), 1.0).to_event(1))
    ppl.sample("obs", dist.Normal(z, 1.0).expand((B, D)).to_event(2))


@ppl.gen
def mean_guide(p):
    ppl.sample("z", dist.Normal(p["mu"], jax.nn.softplus(p["rho"])).to_event(1))


def init_params():
    return {"mu": jnp.zeros(D), "rho": jnp.zeros(D)}


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def leaves_equal(a, b) -> bool:
    la, lb = leaves(a), leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


# ---------------------------------------------------------------------------------------------- the 4-device worker


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b), strict=True))


def _gathers_of(text: str, dims: set[int]) -> list[str]:
    """Collectives that move data *onto* devices (gathers, all-to-all, permutes) with a result dimension in dims."""
    moving = {"all-gather", "all-to-all", "collective-permute", "collective-broadcast", "ragged-all-to-all"}
    return [c.line for c in sharding.collectives(text) if c.kind in moving and any(set(s) & dims for s in c.shapes)]


def _case(name, objective, args, *, num_particles, batch_size, devices, steps=40, chunk_size=20):
    data = {elbo: make_data(), mean_objective: None}.get(objective, {"obs": make_data()["x"]})
    kw = dict(optimizer=optax.adam(0.05), key=jax.random.key(0), num_particles=num_particles, data=data)
    kw["batch_size"] = batch_size
    t = time.perf_counter()
    one = fit(objective, args, num_steps=steps, progress=False, chunk_size=chunk_size, **kw)
    t_one = time.perf_counter() - t
    t = time.perf_counter()
    many = fit(objective, args, num_steps=steps, progress=False, chunk_size=chunk_size, devices=devices, **kw)
    t_many = time.perf_counter() - t
    lowered = lower_fit(objective, args, devices=devices, chunk_size=chunk_size, **kw)  # the chunk fit compiled
    text = lowered.compile().as_text()
    layout = sharding.make_layout(devices, num_particles, batch_size or (N if data is not None else None))
    return name, {
        "layout": str(layout),
        "layout_shape": layout.shape,
        "param_diff": _max_diff(one.args, many.args),
        "params_close": all(
            np.allclose(x, y, rtol=1e-5, atol=1e-5) for x, y in zip(leaves(one.args), leaves(many.args), strict=True)
        ),
        "values_close": bool(np.allclose(one.values, many.values, rtol=1e-5)),
        "first_estimates": [float(one.values[0]), float(many.values[0])],  # both at the initial parameters
        "param_change": _max_diff(one.args, args),
        "full_batch_gathers": _gathers_of(text, {B, N}),
        "collectives": [(c.kind, c.shapes) for c in sharding.collectives(text)],
        "seconds_one_device": t_one,
        "seconds_sharded": t_many,
    }


def checkpointed_run_kwargs() -> dict:
    return dict(optimizer=optax.adam(0.05), key=0, num_particles=2, data=make_data(), batch_size=B, chunk_size=10)


def _checkpoint_case(tmp: str) -> dict:
    kw = checkpointed_run_kwargs()
    full = fit(elbo, init_params(), num_steps=30, progress=False, devices="all", **kw)
    fit(elbo, init_params(), num_steps=20, progress=False, devices="all", checkpoint=tmp, **kw)
    resumed = fit(elbo, init_params(), num_steps=30, progress=False, devices="all", checkpoint=tmp, **kw)
    os.remove(os.path.join(tmp, "fit_checkpoint.npz"))
    fit(elbo, init_params(), num_steps=20, progress=False, devices="all", checkpoint=tmp, **kw)
    on_one = fit(elbo, init_params(), num_steps=30, progress=False, checkpoint=tmp, **kw)
    return {
        "resumed_from": resumed.resumed_from,
        "bit_identical": leaves_equal(full.args, resumed.args)
        and leaves_equal(full.opt_state, resumed.opt_state)
        and bool(np.array_equal(full.values, resumed.values)),
        "on_one_device_resumed_from": on_one.resumed_from,
        "on_one_device_diff": _max_diff(full.args, on_one.args),
        "params": [x.tolist() for x in leaves(full.args)],
        "values": full.values.tolist(),
    }


def _detector_case() -> dict:
    """The HLO check must see a gather when there is one: replicate a minibatch that arrives sharded."""
    layout = sharding.make_layout("all", 1, B)
    x = layout.put(np.ones((B, D), np.float32), layout.data)
    text = jax.jit(lambda a: a * 2.0, out_shardings=layout.replicated).lower(x).compile().as_text()
    return {"gathers": _gathers_of(text, {B})}


def _errors_case() -> dict:
    out = {}
    for name, kw in {
        "indivisible": dict(num_particles=3),
        "batch_indivisible": dict(num_particles=1, data=make_data(), batch_size=6),
        "mesh_names": dict(num_particles=4, devices=jax.sharding.Mesh(jax.devices(), ("batch",))),
    }.items():
        kw = {"devices": "all", **kw}
        try:
            fit(elbo if "data" in kw else mean_objective, init_params(), optimizer=optax.adam(0.1), num_steps=1, key=0,
                progress=False, **kw)  # fmt: skip
            out[name] = "no error"
        except ValueError as e:
            out[name] = str(e)
    return out


@ppl.expectation
def mean_objective(p):
    z, log_q = ppl.sim(mean_guide, p)
    return -jnp.sum((z["z"] - 1.0) ** 2) - log_q


def worker() -> None:
    import tempfile

    # XLA's persistent cache, for this process only: lower_fit(...).compile() then finds the program fit compiled
    cache = tempfile.TemporaryDirectory()
    jax.config.update("jax_compilation_cache_dir", cache.name)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    assert len(jax.devices()) == NUM_DEVICES, jax.devices()
    mesh_1d = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    iwae = ppl.iwae(mean_model, mean_guide, {"obs": None}, 3)  # the data given at construction is replaced by obs
    iwae_args = ((), (init_params(),))
    cases = dict(
        [
            _case("K4_minibatch", elbo, init_params(), num_particles=4, batch_size=B, devices="all"),
            _case("K8_minibatch", elbo, init_params(), num_particles=8, batch_size=B, devices="all"),
            _case("K2_minibatch", elbo, init_params(), num_particles=2, batch_size=B, devices="all"),
            _case("K1_minibatch", elbo, init_params(), num_particles=1, batch_size=B, devices=NUM_DEVICES),
            _case("K1_full_data", elbo, init_params(), num_particles=1, batch_size=None, devices=jax.devices()),
            _case("K4_mesh_data_axis", elbo, init_params(), num_particles=4, batch_size=B, devices=mesh_1d),
            _case("K4_no_data", mean_objective, init_params(), num_particles=4, batch_size=None, devices="all"),
            _case("iwae_K2_minibatch", iwae, iwae_args, num_particles=2, batch_size=B, devices="all"),
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _checkpoint_case(tmp)
    out = {"cases": cases, "checkpoint": checkpoint, "detector": _detector_case(), "errors": _errors_case()}
    print("RESULT " + json.dumps(out))
    cache.cleanup()


def multihost_worker(process_id: int, port: int, checkpoint: str) -> None:
    """One of two processes (2 CPU devices each) of a multi-host run: the checkpointed run above, interrupted at 20."""
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    kw = checkpointed_run_kwargs()
    fit(elbo, init_params(), num_steps=20, progress=False, devices="all", checkpoint=checkpoint, **kw)
    res = fit(elbo, init_params(), num_steps=30, progress=False, devices="all", checkpoint=checkpoint, **kw)
    # per-host data loading: each process holds only its half of the rows of a global array sharded over "data"
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(1, NUM_DEVICES), ("particles", "data"))
    rows, sharded = slice(process_id * N // 2, (process_id + 1) * N // 2), jax.sharding.NamedSharding(mesh, P("data"))
    local = {k: jax.make_array_from_process_local_data(sharded, v[rows], v.shape) for k, v in make_data().items()}
    kw = dict(optimizer=optax.adam(0.05), num_steps=10, key=0, progress=False, devices=mesh)
    from_local = fit(elbo, init_params(), data=local, **kw)
    from_full = fit(elbo, init_params(), data=make_data(), **kw)
    out = {
        "devices": len(jax.devices()),
        "local_devices": len(jax.local_devices()),
        "resumed_from": res.resumed_from,
        "params": [x.tolist() for x in leaves(res.args)],
        "values": res.values.tolist(),
        "local_data_params_equal": leaves_equal(from_local.args, from_full.args),
    }
    print("RESULT " + json.dumps(out))
    jax.distributed.shutdown()


def _env(num_devices: int) -> dict[str, str]:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={num_devices}"
    return {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu", "CI": "1"}


def _result(proc: subprocess.CompletedProcess | subprocess.Popen, stdout: str, stderr: str) -> dict:
    assert proc.returncode == 0, f"worker exited {proc.returncode}\n{stdout}\n{stderr}"
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="module")
def four_devices() -> dict:
    cmd = [sys.executable, "-m", "tests.test_sharding", "--worker"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(NUM_DEVICES), capture_output=True, text=True, timeout=300)
    return _result(proc, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory) -> list[dict]:
    """Two processes on this machine joined by ``jax.distributed.initialize`` (gloo collectives on CPU)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ckpt = str(tmp_path_factory.mktemp("multihost"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.test_sharding", "--multihost", str(i), str(port), ckpt],
            cwd=ROOT,
            env=_env(NUM_DEVICES // 2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=180)
            outs.append(_result(proc, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return outs


EXPECTED_LAYOUTS = {
    "K4_minibatch": {"particles": 4, "data": 1},
    "K8_minibatch": {"particles": 4, "data": 1},
    "K2_minibatch": {"particles": 2, "data": 2},
    "K1_minibatch": {"particles": 1, "data": 4},
    "K1_full_data": {"particles": 1, "data": 4},
    "K4_mesh_data_axis": {"particles": 1, "data": 4},
    "K4_no_data": {"particles": 4, "data": 1},
    "iwae_K2_minibatch": {"particles": 2, "data": 2},
}


@pytest.mark.parametrize("case", sorted(EXPECTED_LAYOUTS))
def test_sharded_matches_one_device(four_devices, case):
    r = four_devices["cases"][case]
    assert r["layout_shape"] == EXPECTED_LAYOUTS[case], r["layout"]
    first_one, first_many = r["first_estimates"]
    assert first_one == pytest.approx(first_many, rel=1e-6), f"{case}: the first estimates differ"
    assert r["values_close"], f"{case}: the estimates differ: {r}"
    assert r["params_close"], f"{case}: final parameters differ by {r['param_diff']}"
    assert r["param_change"] > 1e4 * r["param_diff"], r  # the agreement is not that of runs that did nothing


@pytest.mark.parametrize("case", sorted(EXPECTED_LAYOUTS))
def test_no_full_batch_gathers(four_devices, case):
    r = four_devices["cases"][case]
    assert r["full_batch_gathers"] == [], f"{case} ({r['layout']}) gathers the batch:\n" + "\n".join(
        r["full_batch_gathers"]
    )
    kinds = {kind for kind, _ in r["collectives"]}
    assert "all-reduce" in kinds, f"{case}: no all-reduce, so nothing was reduced across devices: {r['collectives']}"


def test_the_gather_check_sees_a_gather(four_devices):
    assert four_devices["detector"]["gathers"], "a replicated copy of a sharded minibatch must show an all-gather"


def test_sharded_checkpoint_resume(four_devices):
    c = four_devices["checkpoint"]
    assert c["resumed_from"] == 20 and c["bit_identical"]
    assert c["on_one_device_resumed_from"] == 20 and c["on_one_device_diff"] < 1e-5


def test_two_processes_match_one_process(two_hosts, four_devices):
    """The multi-host code path: 2 processes x 2 devices (a 2 x 2 mesh across the processes), checkpointed at step
    20 by process 0 and resumed by both, give the result of one process with 4 devices. Full-data steps on rows
    loaded per host (a global array made with make_array_from_process_local_data) equal those on data given whole."""
    one_process = four_devices["checkpoint"]
    for r in two_hosts:
        assert r["devices"] == 4 and r["local_devices"] == 2 and r["resumed_from"] == 20
        assert r["local_data_params_equal"], "data loaded per host (a global array) differs from data given in full"
        assert r["params"] == two_hosts[0]["params"] and r["values"] == two_hosts[0]["values"]
        np.testing.assert_allclose(r["values"], one_process["values"], rtol=1e-6)
        for a, b in zip(r["params"], one_process["params"], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_uneven_layouts_are_errors(four_devices):
    e = four_devices["errors"]
    assert "cannot split the work evenly over 4 devices" in e["indivisible"] and "multiple of 4" in e["indivisible"]
    assert "batch_size that is a multiple of 4" in e["batch_indivisible"], e["batch_indivisible"]
    assert "'particles'" in e["mesh_names"] and "'data'" in e["mesh_names"], e["mesh_names"]


# ---------------------------------------------------------------------------------------------- one device, in process


def test_minibatch_keys_and_rows():
    """At a learning rate of 0, values[i] is the mean over split(fold_in(key, i), K) of the estimate on the rows
    randint(fold_in(fold_in(key, i), 2**32 - 1), (B,), 0, N) — the documented derivation."""
    data, key, K, bs = make_data(), jax.random.key(5), 3, 8
    estimate = jax.jit(elbo.estimate)
    res = fit(elbo, init_params(), optimizer=optax.sgd(0.0), num_steps=4, key=key, num_particles=K, data=data,
              batch_size=bs, progress=False, chunk_size=3)  # fmt: skip
    for i in range(4):
        k = jax.random.fold_in(key, i)
        idx = jax.random.randint(jax.random.fold_in(k, np.uint32(2**32 - 1)), (bs,), 0, N)
        batch = {name: jnp.asarray(a)[idx] for name, a in data.items()}
        expect = np.mean([float(estimate(kk, init_params(), batch)) for kk in jax.random.split(k, K)])
        np.testing.assert_allclose(res.values[i], expect, rtol=1e-5)
    full = fit(elbo, init_params(), optimizer=optax.sgd(0.0), num_steps=2, key=key, data=data, progress=False)
    rows = {name: jnp.asarray(a) for name, a in data.items()}
    expect = float(estimate(jax.random.fold_in(key, 1), init_params(), rows))
    np.testing.assert_allclose(full.values[1], expect, rtol=1e-5)  # no batch_size: all rows every step


def test_one_device_mesh_is_bit_identical_to_unsharded():
    kw = dict(optimizer=optax.adam(0.05), num_steps=20, key=0, num_particles=2, data=make_data(), batch_size=B,
              progress=False, chunk_size=10)  # fmt: skip
    plain = fit(elbo, init_params(), **kw)
    for devices in ("all", jax.devices()[:1]):
        assert leaves_equal(plain.args, fit(elbo, init_params(), devices=devices, **kw).args), devices


def test_minibatch_checkpoint_signature(tmp_path):
    kw = dict(optimizer=optax.adam(0.05), key=0, data=make_data(), progress=False, checkpoint=tmp_path)
    fit(elbo, init_params(), num_steps=2, batch_size=B, **kw)
    with pytest.raises(ValueError, match="batch_size differ"):
        fit(elbo, init_params(), num_steps=4, batch_size=16, **kw)


def test_bad_data_and_devices_arguments():
    p, opt = init_params(), optax.adam(0.1)
    run = lambda **kw: fit(elbo, p, optimizer=opt, num_steps=1, key=0, progress=False, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="batch_size= needs data="):
        run(batch_size=4)
    with pytest.raises(ValueError, match=r"data\['n'\].*leading data-set axis"):
        run(data={"x": np.ones((4, 3)), "n": 3.0})
    with pytest.raises(ValueError, match="different leading lengths"):
        run(data={"x": np.ones((4, 3)), "y": np.ones(5)})
    with pytest.raises(ValueError, match=r"batch_size must be an int in 1\.\.4"):
        run(data={"x": np.ones((4, 3)), "y": np.ones(4)}, batch_size=5)
    with pytest.raises(ValueError, match="devices='gpu'"):
        run(devices="gpu")
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count=64"):
        run(devices=64)
    with pytest.raises(TypeError, match="list of jax.Device"):
        run(devices=[0, 1])


def test_collectives_parser():
    text = """
  %all-gather = f32[8,3]{1,0} all-gather(%fusion), channel_id=1, dimensions={0}
  %all-reduce.7 = (f32[], f32[8,3]{1,0}) all-reduce(%a, %b), channel_id=3, to_apply=%region
  %ars = f32[4]{0} all-reduce-start(%c), channel_id=4
  %add = f32[8,3]{1,0} add(%all-gather, %x)
"""
    got = [(c.kind, c.shapes) for c in sharding.collectives(text)]
    assert got == [("all-gather", ((8, 3),)), ("all-reduce", ((), (8, 3))), ("all-reduce", ((4,),))]


def test_lower_fit_on_one_device_has_no_collectives():
    lowered = lower_fit(elbo, init_params(), optimizer=optax.adam(0.1), key=0, data=make_data(), batch_size=B)
    assert sharding.collectives(lowered.compile().as_text()) == []


if __name__ == "__main__" and "--worker" in sys.argv:
    worker()
elif __name__ == "__main__" and "--multihost" in sys.argv:
    i = sys.argv.index("--multihost")
    multihost_worker(int(sys.argv[i + 1]), int(sys.argv[i + 2]), sys.argv[i + 3])
