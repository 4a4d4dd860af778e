"""``bench/air.py`` (Attend-Infer-Repeat, gradient strategies for ``z_pres``) runs end to end in its smallest mode.

One subprocess with ``--quick --tiny`` (one training step per variant, 2 AIR steps instead of 3, XLA at optimization
level 0; about a minute on 2 cores, mostly compiling the nine programs). Timings and accuracies are not asserted — one
step learns nothing — only that every variant trains, is evaluated and prints finite numbers, including the IWAE rows
with multi-call strategies (``enum``/``mvd``) on the particles of ``ppl.iwae``.
"""

from __future__ import annotations

import math

from tests.test_bench_quick import needs_mlxtend, run_bench, table_rows

VARIANTS = ("enum", "mvd", "hybrid mvd/enum", "reinforce", "baseline",
            "IWAE(2) reinforce", "IWAE(2) mvd", "IWAE(2) enum", "IWAE(2) hybrid")


@needs_mlxtend
def test_air_tiny() -> None:
    out = run_bench("air.py")
    assert "## AIR: time per epoch and count accuracy" in out, out
    for name in VARIANTS:
        rows = [r for r in table_rows(out, name) if len(r) == 6]  # the main table
        assert len(rows) == 1, f"{name}: no row in the main table\n{out}"
        _, compile_s, per_epoch, ratio, elbo, accuracy = rows[0]
        numbers = [float(compile_s), float(per_epoch), float(ratio.rstrip("×")), float(elbo), float(accuracy)]
        assert all(math.isfinite(x) for x in numbers), f"{name}: {rows[0]}"
        assert 0.0 <= float(accuracy) <= 1.0 and float(per_epoch) > 0.0, rows[0]
    assert table_rows(out, "enum")[0][3] == "1.00×", "ratios are against enum, measured in the same run"
    assert "Not supported" not in out, "IWAE + mvd/enum train now (multi-call strategies in map lanes)"
