"""`make mutation`'s summary: the score of each module mutmut ran, and every mutant that survived.

Only the mutants the run selected count: `python -m devtools.mutation_report [PATTERN ...]`."""

from __future__ import annotations

import argparse
import fnmatch
import json
from collections import Counter
from pathlib import Path

MUTANTS = Path("mutants")
# mutmut's exit codes (mutmut/stats.py), the ones a run leaves behind.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout"}
STATUS |= {-24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "type check"}


def results(patterns: list[str]) -> dict[str, dict[str, str]]:
    """module -> mutant -> status, for the mutants the patterns select (all if none)."""
    found: dict[str, dict[str, str]] = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        module = meta.relative_to(MUTANTS).as_posix().removesuffix(".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        chosen = {
            name: STATUS.get(code, "suspicious") if code is not None else "not checked"
            for name, code in codes.items()
            if not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)
        }
        if chosen:
            found[module] = chosen
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="*", help="mutant names or fnmatch patterns")
    args = parser.parse_args(argv)
    by_module = results(args.patterns)
    if not by_module:
        print("no mutation results in mutants/: run `make mutation` first")
        return 1

    print("| module | mutants | killed | survived | timeout | no tests | score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    total: Counter[str] = Counter()
    for module, statuses in by_module.items():
        counts = Counter(statuses.values())
        total += counts
        print(_row(module, counts))
    print(_row("**all**", total))

    survivors = [
        name
        for statuses in by_module.values()
        for name, status in statuses.items()
        if status in ("survived", "no tests", "suspicious")
    ]
    print(f"\n{len(survivors)} not killed (`.venv/bin/mutmut show NAME` shows the change):")
    for name in survivors:
        status = next(s[name] for s in by_module.values() if name in s)
        print(f"  {name}: {status}")
    return 0


def _row(module: str, counts: Counter[str]) -> str:
    tried = sum(counts.values()) - counts["not checked"]
    # A timeout counts as killed: the mutant made the tests hang, which they would notice.
    caught = counts["killed"] + counts["timeout"] + counts["type check"]
    score = f"{100 * caught / tried:.0f}%" if tried else "n/a"
    return (
        f"| {module} | {tried} | {counts['killed']} | {counts['survived']} | "
        f"{counts['timeout']} | {counts['no tests']} | {score} |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
