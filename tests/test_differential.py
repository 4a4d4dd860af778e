"""Differential test: hypothesis generates small programs, ``ppl`` runs them, an exact oracle checks them.

A program description is a tree of statements over a running value ``prev`` (the last choice in scope, 0. at the
start): ``Site`` (``z ~ Bernoulli(logits = a + b·θ + c·prev + d·lane)``, ``prev := z``), ``Gauss`` (``x ~ Normal(m0 +
m1·θ + m2·prev, 1)``; in expectations, reparameterized, with cost ``k·x²``), ``Weight`` (a Gaussian observation
factor in models, a cost ``(w0 + w1·θ)·prev + w2`` in expectations), ``Cond`` (``lax.cond`` on ``prev``, or
``lax.switch`` on ``prev + (lane > 0.5)``; the branches sometimes reuse one address), ``Scan`` (``lax.scan``, carry
``prev``) and ``Map`` (``jax.vmap`` or ``ppl.vmap``; with or without a mapped lane index reaching the sites; ``prev :=
max`` over lanes), nested at most two deep. At most 8 Bernoulli choices run per
execution, so the oracle enumerates at most 256 paths, in plain Python/numpy (float64, derivatives by hand); it
never calls ``ppl``. It interprets the contract: every lane is its own execution, a cond runs only its taken branch
per lane, factors and costs count once per lane, choices carry the scan/lane axes outermost first, and choices of a
branch not taken are zeros.

Checks: ``simulate``/``assess``/``generate`` against the oracle's log densities, and expectation value and gradient
estimates (random strategy per Bernoulli site: reinforce, enum, mvd, leave_one_out(2)) are unbiased.

``PPL_SLOW=1 pytest tests/test_differential.py`` runs 500 examples per test instead of CI's 20 (tens of minutes: each
example compiles its programs).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from hypothesis import HealthCheck, Phase, example, given, settings
from jax import lax

import ppl
from tests.stats import assert_unbiased, keys

# Fixed seed, no example database; CI does not shrink a failure (each try compiles a program: minutes), PPL_SLOW does.
_COMMON = dict(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
settings.register_profile("ppl-ci", max_examples=20, phases=[Phase.explicit, Phase.generate], **_COMMON)
settings.register_profile("ppl-slow", max_examples=500, **_COMMON)
PROFILE = "ppl-slow" if os.environ.get("PPL_SLOW") else "ppl-ci"
MAX_CHOICES = 8  # Bernoulli choices per execution: at most 256 paths
MAX_STMTS, MAX_SITES = 10, 6  # statements and Bernoulli sites in the program text
N = 20_000  # estimates per expectation check (compile time dominates; the runs are cheap)
THETA = 0.3

# ------------------------------------------------------------------------- descriptions


@dataclass(frozen=True)
class Site:
    addr: str
    a: float
    b: float
    c: float
    d: float
    strat: str = "reinforce"


@dataclass(frozen=True)
class Gauss:
    addr: str
    m0: float
    m1: float
    m2: float
    k: float


@dataclass(frozen=True)
class Weight:
    w0: float
    w1: float
    w2: float


@dataclass(frozen=True)
class Cond:
    branches: tuple  # 2: lax.cond on prev; 3: lax.switch on prev + (lane > 0.5)


@dataclass(frozen=True)
class Scan:
    length: int
    body: tuple


@dataclass(frozen=True)
class Map:
    size: int
    body: tuple
    via: str  # "jax" | "ppl"
    use_idx: bool  # the lane index is mapped in (else: axis_size, nothing mapped)


@dataclass(frozen=True)
class Program:
    body: tuple
    r: float  # expectation value: r·prev_final + costs
    constrain: int  # bit mask over addresses for `generate`


COEF = st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0])
NONZERO = st.sampled_from([-1.0, -0.5, 0.5, 1.0])
STRATS = {"reinforce": ppl.reinforce, "enum": ppl.enum, "mvd": ppl.mvd, "loo": ppl.leave_one_out(2)}


@st.composite
def programs(draw):
    n_addr, left = [0], [MAX_STMTS, MAX_SITES]  # statements and Bernoulli sites left (compile time)

    def fresh(p):
        n_addr[0] += 1
        return f"{p}{n_addr[0]}"

    def site(b=COEF):
        return Site(fresh("z"), draw(COEF), draw(b), draw(COEF), draw(COEF), draw(st.sampled_from(sorted(STRATS))))

    def block(depth, budget):
        stmts, used = [], 0
        for _ in range(draw(st.integers(1, 3))):
            if left[0] <= 0:
                break
            left[0] -= 1
            rem = budget - used
            kinds = ["site", "site", "weight", "gauss"]
            kinds += ["cond", "scan", "map", "map", "map"] if depth < 2 and rem >= 1 else []
            kind = draw(st.sampled_from(kinds))
            if kind == "site" and rem >= 1 and left[1] > 0:
                left[1] -= 1
                stmts.append(site())
                used += 1
            elif kind == "gauss":
                stmts.append(Gauss(fresh("x"), draw(COEF), draw(COEF), draw(COEF), draw(st.sampled_from([0.5, 1.0]))))
            elif kind == "weight" or kind == "site":
                stmts.append(Weight(draw(COEF), draw(COEF), draw(COEF)))
            elif kind == "cond":
                brs, us = zip(*[block(depth + 1, rem) for _ in range(draw(st.sampled_from([2, 3])))], strict=True)
                if all(b and isinstance(b[0], Site) for b in brs) and draw(st.booleans()):  # one address, n sites
                    brs = [brs[0]] + [(dataclasses.replace(b[0], addr=brs[0][0].addr),) + b[1:] for b in brs[1:]]
                stmts.append(Cond(tuple(brs)))
                used += max(us)
            else:
                n = draw(st.sampled_from([n for n in (2, 3, 1) if n <= rem]))
                body, u = block(depth + 1, rem // n)
                if kind == "scan":
                    stmts.append(Scan(n, body))
                else:
                    stmts.append(Map(n, body, draw(st.sampled_from(["jax", "ppl"])), draw(st.booleans())))
                used += n * u
        return tuple(stmts), used

    first = site(b=NONZERO)  # θ reaches the program: gradients are not trivially zero
    body, _ = block(0, MAX_CHOICES - 1)
    return Program((first,) + body, draw(NONZERO), draw(st.integers(0, 2**12 - 1)))


# Always run (CI's 20 drawn examples depend on this file's text): a scan inside jax.vmap lanes (choices (2, 3)), a
# cond whose branches reuse an address; a switch on the lane index inside ppl.vmap lanes, a map inside a scan.
_Z = Site  # Site(addr, a, b, c, d, strategy)
_EX1 = (
    _Z("z1", 0.5, 1.0, 0.0, 0.0, "enum"),
    Map(
        2,
        (Weight(0.5, -1.0, 0.0), Scan(3, (_Z("z3", -0.5, 0.5, 1.0, 0.0, "mvd"), Gauss("x2", 0.0, 1.0, 1.0, 1.0)))),
        "jax",
        False,
    ),
    Cond(
        (
            (_Z("z4", 0.5, -1.0, 0.0, 0.0, "enum"), Gauss("x5", 0.5, 1.0, -1.0, 0.5)),
            (_Z("z4", 0.0, 1.0, 0.0, 0.0, "reinforce"), Weight(-0.5, 1.0, 1.0)),
        )
    ),
)
_SWITCH = Cond(
    ((_Z("z2", 0.0, 1.0, 0.5, 0.5, "loo"),), (Weight(1.0, 0.0, -0.5),), (_Z("z3", 0.5, -0.5, 0.0, -0.5, "enum"),))
)
_EX2 = (
    _Z("z1", -0.5, 1.0, 0.0, 0.0, "mvd"),
    Map(3, (Weight(0.5, 1.0, 0.0), _SWITCH), "ppl", True),
    Scan(2, (Map(2, (_Z("z4", 0.0, 0.5, -1.0, 0.0, "reinforce"), Weight(0.0, -1.0, 0.5)), "jax", True),)),
)
EXAMPLES = [Program(_EX1, 1.0, 0b10010), Program(_EX2, -1.0, 0b0101)]

# ------------------------------------------------------------------------- the ppl program


def run(block, theta, prev, lane, expect):
    for s in block:
        if isinstance(s, Site):
            logits = s.a + s.b * theta + s.c * prev + s.d * lane
            strat = STRATS[s.strat] if expect else None
            prev = ppl.sample(s.addr, dist.Bernoulli(logits=logits), strategy=strat).astype(jnp.float32)
        elif isinstance(s, Gauss):
            mu = s.m0 + s.m1 * theta + s.m2 * prev
            x = ppl.sample(s.addr, dist.Normal(mu, 1.0), strategy=ppl.reparam if expect else None)
            if expect:
                ppl.add_cost(s.k * x * x)
        elif isinstance(s, Weight):
            if expect:
                ppl.add_cost((s.w0 + s.w1 * theta) * prev + s.w2)
            else:
                ppl.factor(dist.Normal(s.w0 + s.w1 * prev, 1.0).log_prob(s.w2))
        elif isinstance(s, Cond):
            br = [lambda p, b=b: run(b, theta, p, lane, expect) for b in s.branches]
            if len(br) == 2:
                prev = lax.cond(prev > 0.5, br[1], br[0], prev)
            else:
                prev = lax.switch(jnp.where(prev > 0.5, 1, 0) + jnp.where(lane > 0.5, 1, 0), br, prev)
        elif isinstance(s, Scan):
            prev, _ = lax.scan(lambda c, _, s=s: (run(s.body, theta, c, lane, expect), None), prev, None, s.length)
        else:
            vmap = jax.vmap if s.via == "jax" else ppl.vmap
            if s.use_idx:
                f = vmap(lambda p, i, s=s: run(s.body, theta, p, i, expect), in_axes=(None, 0))
                outs = f(prev, jnp.arange(s.size, dtype=jnp.float32))
            else:
                outs = vmap(lambda p, s=s: run(s.body, theta, p, lane, expect), in_axes=(None,), axis_size=s.size)(prev)
            prev = jnp.max(outs)
    return prev


def model_of(prog):
    return ppl.gen(lambda theta: run(prog.body, theta, jnp.float32(0.0), 0.0, False))


def expectation_of(prog):
    return ppl.expectation(lambda theta: prog.r * run(prog.body, theta, jnp.float32(0.0), 0.0, True))


# ------------------------------------------------------------------------- the oracle (plain Python, float64)


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _normal_logpdf(x, mu):
    return -0.5 * (x - mu) ** 2 - 0.5 * math.log(2 * math.pi)


class Walk:
    """One execution. ``choose(addr, idx, logits)`` gives each Bernoulli choice; ``read(addr, idx)`` each Gaussian
    one (models). Model mode accumulates log densities per address and factors; expectation mode (``read`` None)
    accumulates log p, d/dθ log p, costs (Gaussian costs in closed form: E[k·x²] = k(μ² + 1)) and their θ-derivative."""

    def __init__(self, theta, choose, read=None):
        self.theta, self.choose, self.read = theta, choose, read
        self.logp = self.dlogp = self.cost = self.dcost = self.factor = 0.0
        self.by_addr = {}

    def block(self, block, prev, lane, idx):
        th = self.theta
        for s in block:
            if isinstance(s, Site):
                lg = s.a + s.b * th + s.c * prev + s.d * lane
                z = int(self.choose(s.addr, idx, lg))
                lp = _log_sigmoid(lg if z else -lg)
                self.logp += lp
                self.by_addr[s.addr] = self.by_addr.get(s.addr, 0.0) + lp
                self.dlogp += (z - 1.0 / (1.0 + math.exp(-lg))) * s.b
                prev = float(z)
            elif isinstance(s, Gauss):
                mu = s.m0 + s.m1 * th + s.m2 * prev
                if self.read is None:
                    self.cost += s.k * (mu * mu + 1.0)
                    self.dcost += 2.0 * s.k * mu * s.m1
                else:
                    lp = _normal_logpdf(self.read(s.addr, idx), mu)
                    self.by_addr[s.addr] = self.by_addr.get(s.addr, 0.0) + lp
            elif isinstance(s, Weight):
                self.factor += _normal_logpdf(s.w2, s.w0 + s.w1 * prev)
                self.cost += (s.w0 + s.w1 * th) * prev + s.w2
                self.dcost += s.w1 * prev
            elif isinstance(s, Cond):
                k = int(prev > 0.5) + (int(lane > 0.5) if len(s.branches) == 3 else 0)
                prev = self.block(s.branches[k], prev, lane, idx)
            elif isinstance(s, Scan):
                for t in range(s.length):
                    prev = self.block(s.body, prev, lane, idx + (t,))
            else:
                prev = max(self.block(s.body, prev, i if s.use_idx else lane, idx + (i,)) for i in range(s.size))
        return prev


def shapes(block, dims=()):
    """Address -> shape of its recorded choices (every address, taken or not)."""
    out = {}
    for s in block:
        if isinstance(s, Site | Gauss):
            out[s.addr] = dims
        elif isinstance(s, Cond):
            for b in s.branches:
                out.update(shapes(b, dims))
        elif isinstance(s, Scan):
            out.update(shapes(s.body, dims + (s.length,)))
        elif isinstance(s, Map):
            out.update(shapes(s.body, dims + (s.size,)))
    return out


def exact_expectation(prog, theta):
    """(E, dE/dθ) by enumerating every path of Bernoulli choices (replay with a prefix, branch on the first new one)."""
    value = grad = total = 0.0
    stack = [()]
    while stack:
        taken = list(stack.pop())
        n = [0]

        def choose(addr, idx, lg, taken=taken, n=n):
            k = n[0]
            n[0] += 1
            if k == len(taken):
                stack.append(tuple(taken) + (1,))
                taken.append(0)
            return taken[k]

        w = Walk(theta, choose)
        final = w.block(prog.body, 0.0, 0.0, ())
        v = w.cost + prog.r * final
        p = math.exp(w.logp)
        total += p
        value += p * v
        grad += p * (w.dlogp * v + w.dcost)
    assert abs(total - 1.0) < 1e-9
    return value, grad


def oracle_density(prog, theta, choices):
    """Replay recorded choices: (log density per address, factors, visited positions per address)."""
    ch = {k: np.asarray(v, np.float64) for k, v in choices.items()}
    seen = {k: np.zeros(v.shape, bool) for k, v in ch.items()}

    def get(addr, idx):
        assert not seen[addr][idx], f"{addr}{idx} written twice"
        seen[addr][idx] = True
        return ch[addr][idx]

    w = Walk(theta, lambda addr, idx, lg: get(addr, idx), get)
    w.block(prog.body, 0.0, 0.0, ())
    return w.by_addr, w.factor, seen


def _near(a, b, what):
    assert abs(float(a) - float(b)) <= 2e-4 * (1.0 + abs(float(b))), f"{what}: {float(a)} vs exact {float(b)}"


def check_trace(prog, choices):
    """Addresses, shapes, zeros where no taken site wrote; returns the oracle's (per-address density, factors)."""
    want = shapes(prog.body)
    got = {k: tuple(np.shape(v)) for k, v in choices.items()}
    assert got == want, f"choice shapes {got}, expected {want} (scan / lane axes in front, outermost first)"
    by_addr, factor, seen = oracle_density(prog, THETA, choices)
    for k, v in choices.items():
        untaken = np.asarray(v)[~seen[k]]
        assert np.all(untaken == 0), f"{k}: choices of untaken branches are not zero: {np.asarray(v)} (taken {seen[k]})"
    return by_addr, factor, seen


# ------------------------------------------------------------------------- tests


def with_examples(test):
    for prog in reversed(EXAMPLES):
        test = example(prog)(test)
    return test


@settings.get_profile(PROFILE)
@with_examples
@given(programs())
def test_simulate_assess_generate(prog):
    model = model_of(prog)
    theta = jnp.float32(THETA)
    sim = jax.jit(model.simulate)
    tr = sim(jax.random.key(0), theta)
    by_addr, factor, _ = check_trace(prog, tr.choices)
    log_p = sum(by_addr.values()) + factor
    _near(tr.score, log_p, "simulate score")
    _near(jax.jit(model.assess)(tr.choices, theta)[0], log_p, "assess")

    # generate: constrain a subset of addresses (values from another simulation, Gaussian ones shifted)
    other = sim(jax.random.key(1), theta).choices
    addrs = sorted(other)
    cons = {a: other[a] + (0.25 if a.startswith("x") else 0) for i, a in enumerate(addrs) if prog.constrain >> i & 1}
    tr2, log_w = jax.jit(model.generate)(jax.random.key(2), cons, theta)
    by_addr2, factor2, seen2 = check_trace(prog, tr2.choices)
    for a, v in cons.items():
        np.testing.assert_array_equal(np.asarray(tr2.choices[a])[seen2[a]], np.asarray(v)[seen2[a]], err_msg=a)
    _near(log_w, sum(by_addr2.get(a, 0.0) for a in cons) + factor2, "generate log weight")
    _near(tr2.score, sum(by_addr2.values()) + factor2, "generate score")


@settings.get_profile(PROFILE)
@with_examples
@given(programs())
def test_expectation_unbiased(prog):
    value, grad = exact_expectation(prog, THETA)
    f = expectation_of(prog)
    v, g = jax.jit(jax.vmap(f.value_and_grad_estimate, (0, None)))(keys(N, 3), jnp.float32(THETA))
    samples = np.stack([np.asarray(v), np.asarray(g)], axis=1)
    exact = np.array([value, grad])
    assert_unbiased(samples, exact, max_stderr=0.05 * (1.0 + np.abs(exact).max()))
