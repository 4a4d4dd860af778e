"""``bench/air.py`` (Attend-Infer-Repeat, gradient strategies for ``z_pres``) runs end to end in its smallest mode.

``main(["--tiny"])`` in this process: one training step of three variants that between them take every code path
(ELBO + ``enum``; REINFORCE with a learned baseline through ``sim``/``density``; ``ppl.iwae`` with ``mvd`` in the
particles' map lanes), 2 AIR steps instead of 3, XLA at optimization level 0. Timings and accuracies are not asserted
— one step learns nothing — only that every variant trains, is evaluated and prints finite numbers.
"""

from __future__ import annotations

import math

from tests.test_bench_quick import bench_module, check_regions, needs_mlxtend, run_bench, table_rows


@needs_mlxtend
def test_air_tiny() -> None:
    out = run_bench("air.py")
    assert "## AIR: time per epoch and count accuracy" in out, out
    variants = bench_module("air").TINY_VARIANTS
    assert {"enum", "baseline"} <= set(variants) and any(v.startswith("IWAE") for v in variants), variants
    for name in variants:
        rows = [r for r in table_rows(out, name) if len(r) == 6]  # the main table
        assert len(rows) == 1, f"{name}: no row in the main table\n{out}"
        _, compile_s, per_epoch, ratio, elbo, accuracy = rows[0]
        numbers = [float(compile_s), float(per_epoch), float(ratio.rstrip("×")), float(elbo), float(accuracy)]
        assert all(math.isfinite(x) for x in numbers), f"{name}: {rows[0]}"
        assert 0.0 <= float(accuracy) <= 1.0 and float(per_epoch) > 0.0, rows[0]
    assert table_rows(out, "enum")[0][3] == "1.00×", "ratios are against enum, measured in the same run"
    assert "Not supported" not in out, "IWAE + mvd/enum train now (multi-call strategies in map lanes)"
    check_regions("air", out)
