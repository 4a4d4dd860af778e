"""``bench/regenerate.py`` (``make bench``): the doc's markers and the jobs' sections agree, and a rewrite touches only
the regions it regenerates. (Each script's output is checked to contain its job's sections by the ``--tiny`` tests,
``check_regions``.)"""

from __future__ import annotations

from tests.test_bench_quick import ROOT, bench_module

OUTPUT = """# Title

python: 3.11.7 | jax: 0.10.2 | jaxlib: 0.10.2 | numpyro: 0.22.0 | backend: cpu (cpu) | cpu: AMD EPYC | cores: 2 usable \
of 2 | load average (1, 5, 15 min): 1.00, 2.00, 3.00
mode: quick, 30 timed repetitions per system (interleaved), warm-up excluded


## Gradient (value and gradient of the ELBO w.r.t. all parameters)

| batch | system |
|-------|--------|
| 64    | a      |

A note.

## Step (gradient + Adam update)

| batch | system |
|-------|--------|
| 64    | b      |
load average at the end: 4.00, 5.00, 6.00
"""

DOC = """# Doc

Prose with a number: 1.23×.

<!-- bench:vae:gradient begin -->
old table
<!-- bench:vae:gradient end -->

More prose.

<!-- bench:vae:step begin -->
old step table
<!-- bench:vae:step end -->
<!-- bench:other begin -->
kept
<!-- bench:other end -->
"""


def test_the_doc_markers_and_the_jobs_agree():
    regenerate = bench_module("regenerate")
    assert regenerate.check((ROOT / "docs" / "benchmarks.md").read_text()) == []


def test_a_rewrite_replaces_only_its_regions():
    regenerate = bench_module("regenerate")
    job = regenerate.Job("bench/vae.py", {"vae:gradient": r"Gradient \(", "vae:step": r"Step \("})
    contents, problems = regenerate.region_contents(job, OUTPUT, "python bench/vae.py --quick", "2026-11-30 20:00",
                                                    90.0, "make bench-quick")
    assert not problems
    new = regenerate.write_regions(DOC, contents)
    assert new.startswith("# Doc\n\nProse with a number: 1.23×.\n\n<!-- bench:vae:gradient begin -->\n")
    assert "old table" not in new and "old step table" not in new and "kept" in new and "More prose." in new
    assert "| 64    | a      |\n\nA note.\n<!-- bench:vae:gradient end -->" in new
    assert "| 64    | b      |\n<!-- bench:vae:step end -->" in new
    line = new.split("\n")[5]  # the provenance line above the table
    for part in ("`make bench-quick`", "`python bench/vae.py --quick`", "2026-11-30 20:00", "1.5 min", "mode quick",
                 "jax 0.10.2", "numpyro 0.22.0", "AMD EPYC", "2 usable of 2 cores", "1.00, 2.00, 3.00 at the start",
                 "4.00, 5.00, 6.00 at the end"):
        assert part in line, (part, line)
    assert regenerate.write_regions(new, contents) == new  # idempotent
    assert regenerate.regions(new).keys() == {"vae:gradient", "vae:step", "other"}


def test_unbalanced_markers_and_missing_sections_are_reported():
    regenerate = bench_module("regenerate")
    assert regenerate.check("<!-- bench:vae:gradient begin -->\n") == ["markers without an end: ['vae:gradient']"]
    job = regenerate.Job("bench/vae.py", {"vae:size": r"Program size"})
    contents, problems = regenerate.region_contents(job, OUTPUT, "cmd", "now", None, "make bench")
    assert contents == {} and "vae:size: 0 sections match" in problems[0]


def test_the_summary_is_assembled_from_the_goals_sections():
    """The verdicts at the top of the doc are the scripts' own (``## Goals``), each with its run's date."""
    regenerate, common = bench_module("regenerate"), bench_module("common")
    goals = [common.Goal("fit chunk", 1.05, {"batch 64": 1.011, "batch 256": 1.07}),
             common.Goal("speed-up", 5.0, {"N = 100": 7.9}, at_least=True)]
    assert goals[0].row()[3] == "**missed** at batch 256 (1.070×)" and goals[1].row()[3] == "**met**"
    assert goals[0].row()[2] == "1.011× / 1.070× (batch 64 / batch 256)"
    output = OUTPUT.replace("load average at the end", "## Goals\n\n" + common.table(
        ["goal", "target", "measured (this run)", "verdict"], [g.row() for g in goals]) + "\nload average at the end")
    job = regenerate.Job("bench/fit.py", {"fit:goals": r"Goals$"})
    contents, problems = regenerate.region_contents(job, output, "python bench/fit.py", "2026-12-01 03:00 UTC", 60.0,
                                                    "make bench")
    assert not problems
    doc = ("<!-- bench:summary:goals begin -->\n<!-- bench:summary:goals end -->\n"
           "<!-- bench:fit:goals begin -->\n<!-- bench:fit:goals end -->\n")
    doc = regenerate.write_regions(doc, contents)
    table = regenerate.summary(doc)
    assert "| fit chunk " in table and "**missed** at batch 256 (1.070×)" in table and "| speed-up " in table
    assert table.count("`fit`, 2026-12-01 03:00 UTC") == 2
