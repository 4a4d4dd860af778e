"""Regenerate every table of ``docs/benchmarks.md`` from the scripts in ``bench/``: ``make bench`` (full) and
``make bench-quick`` (quick mode).

Each script prints its results as markdown: one ``## heading`` per table, the table, then a note. This script runs
each script (a subprocess on the CPU, ``JAX_PLATFORMS=cpu``, one after the other), cuts its output into sections at
the ``##`` headings, and rewrites each region of ``docs/benchmarks.md`` between the marker comments::

    <!-- bench:vae:gradient begin -->
    ... (the region: replaced) ...
    <!-- bench:vae:gradient end -->

with the section's table and note, preceded by one line saying how and when it was made: the command, the date, the
mode, the machine (CPU model, cores), the versions (python, jax, jaxlib, numpyro) and the load average at the start
and the end of the run. Prose outside the markers is not touched (it is written by hand; keep its numbers in step
with the tables).

The ``summary:goals`` region is not a script's: after every write it is rebuilt from the doc's ``<job>:goals``
regions (each script's ``## Goals`` section: the ratio a goal asks for, the ratios of that run, met or missed,
computed by ``common.print_goals``), each row with the date of its run, so the verdicts at the top of the doc are
never retyped.

``JOBS`` maps each script to its regions. A script that fails leaves its regions as they were (the others are still
written; the exit status is 1). ``bench/genjax_compare.py`` needs the GenJAX venv ``.venv-genjax``: without it the
job is skipped with a message and its tables keep their date. ``bench/fit.py`` is run when it exists.

    python bench/regenerate.py                     # full mode (make bench): 19 min at load 2–5 on 2 cores
    python bench/regenerate.py --quick             # quick mode (make bench-quick): 15 min at load 11–14
    python bench/regenerate.py --quick --only vae,scaling
    python bench/regenerate.py --from-logs DIR     # rewrite the doc from saved outputs (DIR/<job>.txt), run nothing
    python bench/regenerate.py --check             # every marker of the doc belongs to a job's section, and back

Outputs are saved to ``--logs DIR`` (default: a new temporary directory, printed at the end).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mdtable import table

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
GENJAX_PYTHON = ROOT / ".venv-genjax" / "bin" / "python"

MARKER = re.compile(r"^<!-- bench:(?P<id>[\w:.\-]+) (?P<end>begin|end) -->$", re.MULTILINE)


@dataclass
class Job:
    """A script and its regions: region id → a regular expression matched at the start of a ``##`` heading."""

    script: str
    sections: dict[str, str]
    args: tuple[str, ...] = ()  # extra arguments, in every mode
    optional: bool = False  # skipped (with a message) when the script does not exist
    needs: Path | None = None  # skipped (with a message) when this path does not exist
    needs_hint: str = ""
    timeout_s: float = 3 * 3600.0
    regions: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.regions = list(self.sections)

    def command(self, quick: bool) -> list[str]:
        return ["python", self.script, *(["--quick"] if quick else []), *self.args]


JOBS: dict[str, Job] = {
    "vae": Job("bench/vae.py", {
        "vae:gradient": r"Gradient \(",
        "vae:step": r"Step \(",
        "vae:size": r"Program size",
        "vae:compile": r"Compile cost",
        "vae:goals": r"Goals$",
    }),
    "scaling": Job("bench/scaling.py", {
        "scaling:sites": r"Sites in a scan",
        "scaling:enum": r"k enumerated Bernoulli sites",
        "scaling:goals": r"Goals$",
    }),
    "discrete": Job("bench/discrete.py", {
        "discrete:step": r"Gradient step: time",
        "discrete:efficiency": r"Speed-up over TraceGraph_ELBO",
        "discrete:support": r"What a user hits",
        "discrete:goals": r"Goals$",
        "discrete:plated-step": r"Plated mixture, N = [\d,]+ points",
        "discrete:plated-variance": r"Plated mixture, N = [\d,]+: gradient variance",
        "discrete:plated-fits": r"Plated mixture, N = [\d,]+: Adam fits",
    }),
    "air": Job("bench/air.py", {
        "air:table": r"AIR: time per epoch",
        "air:curve": r"Held-out count accuracy during training",
        "air:details": r"Training details",
    }),
    "fit": Job("bench/fit.py", {
        "fit:step": r"Time per step",
        "fit:compile": r"Compile cost",
        "fit:goals": r"Goals$",
    }, optional=True),
    "genjax": Job("bench/genjax_compare.py", {
        "genjax:step": r"Gradient step: ppl vs GenJAX",
        "genjax:size": r"Program size and compile cost",
        "genjax:scan-bug": r"GenJAX bug",
    }, needs=GENJAX_PYTHON,
        needs_hint="python3.12 -m venv .venv-genjax && .venv-genjax/bin/pip install genjax==1.0.14"),
}


# ---------------------------------------------------------------------------------------------- parsing an output


def sections(output: str) -> dict[str, str]:
    """``## heading`` → the text under it (table and note), up to the next heading or the closing load line."""
    out: dict[str, str] = {}
    heading, lines = None, []
    for line in output.splitlines():
        if line.startswith("## ") or line.startswith("load average at the end"):
            if heading is not None:
                out[heading] = "\n".join(lines).strip()
            heading, lines = (line[3:].strip() if line.startswith("## ") else None), []
        elif heading is not None:
            lines.append(line)
    if heading is not None:
        out[heading] = "\n".join(lines).strip()
    return out


def header(output: str) -> dict[str, str]:
    """The environment line every script prints (``python: … | jax: … | …``), the mode line and the final load."""
    env: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("python: ") and " | jax: " in line and "python" not in env:
            for part in line.split(" | "):
                k, _, v = part.partition(": ")
                env[k.strip()] = v.strip()
        elif line.startswith("mode: ") and "mode" not in env:
            env["mode"] = line[len("mode: "):].strip()
        elif line.startswith("load average at the end: "):
            env["load at end"] = line.split(": ", 1)[1].strip()
    return env


def provenance(command: str, env: dict[str, str], when: str, wall_s: float | None, make: str) -> str:
    """The line written above each regenerated table."""
    load = env.get("load average (1, 5, 15 min)", "n/a")
    parts = [
        f"Regenerated by `{make}`: `{command}`, {when}" + (f", {wall_s / 60:.1f} min" if wall_s else ""),
        f"mode {env.get('mode', 'n/a')}",
        f"python {env.get('python', '?')}, jax {env.get('jax', '?')}, jaxlib {env.get('jaxlib', '?')}, "
        f"numpyro {env.get('numpyro', '?')}, backend {env.get('backend', '?')}",
        f"{env.get('cpu', '?')}, {env.get('cores', '?')} cores",
        f"load average (1, 5, 15 min) {load} at the start, {env.get('load at end', 'n/a')} at the end",
    ]
    return "<sub>" + "; ".join(parts) + ".</sub>"


# ---------------------------------------------------------------------------------------------- the document


def regions(doc: str) -> dict[str, tuple[int, int]]:
    """Region id → (start, end) offsets of its content (between the end of the begin marker's line and the start of
    the end marker). Raises ``ValueError`` on unbalanced or repeated markers."""
    out: dict[str, tuple[int, int]] = {}
    open_: dict[str, int] = {}
    for m in MARKER.finditer(doc):
        rid = m["id"]
        if m["end"] == "begin":
            if rid in open_ or rid in out:
                raise ValueError(f"marker bench:{rid} begins twice")
            open_[rid] = m.end() + 1
        else:
            if rid not in open_:
                raise ValueError(f"marker bench:{rid} ends without a begin")
            out[rid] = (open_.pop(rid), m.start())
    if open_:
        raise ValueError(f"markers without an end: {sorted(open_)}")
    return out


def write_regions(doc: str, contents: dict[str, str]) -> str:
    """``doc`` with the content of each region in ``contents`` replaced (other regions and all prose unchanged)."""
    spans = regions(doc)
    missing = [r for r in contents if r not in spans]
    if missing:
        raise ValueError(f"docs/benchmarks.md has no markers for {missing}")
    out, pos = [], 0
    for rid, (start, end) in sorted(spans.items(), key=lambda kv: kv[1][0]):
        if rid in contents:
            out += [doc[pos:start], contents[rid].strip("\n") + "\n"]
            pos = end
    out.append(doc[pos:])
    return "".join(out)


SUMMARY = "summary:goals"  # assembled from the ``*:goals`` regions of the doc, never from one run
_WHEN = re.compile(r"`, (\d{4}-\d\d-\d\d \d\d:\d\d [^,]+), ")


def summary(doc: str) -> str:
    """The summary table: every row of every ``<job>:goals`` region of ``doc`` (as last regenerated, each with the
    date of its run), so the verdicts at the top of the doc are the scripts' own, never retyped."""
    spans, rows = regions(doc), []
    for rid, (start, end) in sorted(spans.items(), key=lambda kv: kv[1][0]):
        if not rid.endswith(":goals") or rid == SUMMARY:
            continue
        text = doc[start:end]
        when = _WHEN.search(text)
        table_lines = [ln for ln in text.splitlines() if ln.startswith("| ")][1:]  # less the header
        for ln in table_lines:
            cells = [c.strip() for c in ln.strip("|").split("|")]
            rows.append([*cells, f"`{rid.split(':')[0]}`, {when[1] if when else 'date unknown'}"])
    if not rows:
        return "No goals section has been generated yet (run `make bench`)."
    return (
        "**Every goal, as the scripts computed it** (assembled by `bench/regenerate.py` from the `## Goals` "
        "section of each script's last run; the date is that run's)\n\n"
        + table(["goal", "target", "measured", "verdict", "run"], rows)
    )


def update_doc(contents: dict[str, str], path: Path = DOC) -> None:
    doc = write_regions(path.read_text(), contents)
    if SUMMARY in regions(doc):
        doc = write_regions(doc, {SUMMARY: summary(doc)})
    path.write_text(doc)


def region_contents(job: Job, output: str, command: str, when: str, wall_s: float | None,
                    make: str) -> tuple[dict[str, str], list[str]]:
    """The new content of each of ``job``'s regions from the script's ``output``, and the problems met."""
    secs, env = sections(output), header(output)
    line = provenance(command, env, when, wall_s, make)
    contents, problems = {}, []
    for rid, pattern in job.sections.items():
        found = [h for h in secs if re.match(pattern, h)]
        if len(found) != 1:
            problems.append(f"{rid}: {len(found)} sections match {pattern!r} (headings: {list(secs)})")
            continue
        contents[rid] = f"{line}\n\n**{found[0]}**\n\n{secs[found[0]]}\n"
    return contents, problems


def check(doc: str) -> list[str]:
    """Problems: a marker of the doc that no job writes, a job region the doc lacks."""
    problems = []
    try:
        spans = regions(doc)
    except ValueError as e:
        return [str(e)]
    known = {r for job in JOBS.values() for r in job.regions}
    problems += [f"docs/benchmarks.md has a marker bench:{r} that no job writes" for r in spans
                 if r not in known and not r.startswith("gpu:") and r != SUMMARY]
    problems += [f"job region {r} has no markers in docs/benchmarks.md" for r in sorted(known) if r not in spans]
    return problems


# ---------------------------------------------------------------------------------------------- running


def run_job(name: str, job: Job, quick: bool, logs: Path) -> tuple[str | None, float]:
    cmd = [sys.executable, str(ROOT / job.script), *(["--quick"] if quick else []), *job.args]
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    print(f"[{name}] {shlex.join(job.command(quick))} …", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(logs / f"{name}.stderr.txt", "w") as err:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                  timeout=job.timeout_s)
        except subprocess.TimeoutExpired:
            print(f"[{name}] timed out after {job.timeout_s:.0f} s", file=sys.stderr)
            return None, time.perf_counter() - t0
    wall = time.perf_counter() - t0
    (logs / f"{name}.txt").write_text(proc.stdout)
    if proc.returncode != 0:
        print(f"[{name}] exited {proc.returncode} after {wall:.0f} s; see {logs / f'{name}.stderr.txt'}",
              file=sys.stderr)
        return None, wall
    print(f"[{name}] done in {wall:.0f} s", file=sys.stderr, flush=True)
    return proc.stdout, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="run every script with --quick (make bench-quick)")
    ap.add_argument("--only", default=None, help=f"comma-separated jobs (default: all of {', '.join(JOBS)})")
    ap.add_argument("--logs", default=None, help="save each script's output here (default: a temporary directory)")
    ap.add_argument("--from-logs", default=None, help="rewrite the doc from DIR/<job>.txt; run nothing")
    ap.add_argument("--check", action="store_true", help="check the doc's markers against the jobs; write nothing")
    ap.add_argument("--doc", default=str(DOC), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    doc_path = Path(args.doc)

    problems = check(doc_path.read_text())
    if args.check or problems:
        print("\n".join(problems) or "docs/benchmarks.md: every marker belongs to a job's section, and back")
        return 1 if problems else 0

    names = [s.strip() for s in args.only.split(",")] if args.only else list(JOBS)
    if unknown := [n for n in names if n not in JOBS]:
        ap.error(f"--only: unknown job(s) {unknown}; the jobs are {list(JOBS)}")
    make = "make bench-quick" if args.quick else "make bench"
    if args.only or args.from_logs:
        shown = list(argv if argv is not None else sys.argv[1:])
        if "--logs" in shown:  # where the outputs were saved is not how the table was made
            del shown[shown.index("--logs"):shown.index("--logs") + 2]
        make = shlex.join(["python", "bench/regenerate.py", *shown])
    logs = Path(args.from_logs or args.logs or tempfile.mkdtemp(prefix="bench-"))
    logs.mkdir(parents=True, exist_ok=True)

    failed, skipped, written = [], [], []
    for name in names:
        job = JOBS[name]
        if job.optional and not (ROOT / job.script).exists():
            skipped.append(f"{name}: {job.script} does not exist")
            continue
        if job.needs is not None and not job.needs.exists() and not args.from_logs:
            skipped.append(f"{name}: {job.needs.relative_to(ROOT)} not found, its tables keep their date "
                           f"(install: {job.needs_hint})")
            continue
        when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        if args.from_logs:
            path = logs / f"{name}.txt"
            if not path.exists():
                skipped.append(f"{name}: no {path}")
                continue
            output, wall = path.read_text(), None
            when = datetime.datetime.fromtimestamp(path.stat().st_mtime).astimezone().strftime("%Y-%m-%d %H:%M %Z")
        else:
            output, wall = run_job(name, job, args.quick, logs)
        if output is None:
            failed.append(name)
            continue
        contents, problems = region_contents(job, output, shlex.join(job.command(args.quick)), when, wall, make)
        if problems:
            failed.append(name)
            print(f"[{name}] " + "\n  ".join(problems), file=sys.stderr)
        if contents:  # write what we have, job by job (a later failure keeps these)
            update_doc(contents, doc_path)
            written += contents
    shown = doc_path.relative_to(ROOT) if doc_path.is_relative_to(ROOT) else doc_path
    print(f"rewrote {len(written)} region(s) of {shown}" + (f": {', '.join(written)}" if written else ""))
    for s in skipped:
        print(f"skipped {s}")
    if failed:
        print(f"FAILED: {', '.join(failed)} (their regions are unchanged; outputs in {logs})")
    print(f"outputs: {logs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
