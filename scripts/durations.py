"""Sum a pytest JUnit XML report's test times per module, to see where the suite's time goes.

Usage: ``python scripts/durations.py test-artifacts/junit-parallel.xml [--top N]``. The times
are per test (set-up, call and tear-down together), so a module whose fixtures are shared
shows their cost on its first test. With ``--dist loadgroup`` a module runs on one worker, so
the largest module total is a floor for the parallel phase.
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from collections import defaultdict


def module_totals(path: str) -> dict[str, tuple[float, int]]:
    """Seconds and test count per test module in the report at ``path``."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for case in ET.parse(path).getroot().iter("testcase"):
        # classname is "tests.test_x" (or "tests.test_x.Class"): the module is its first two parts.
        module = ".".join(case.get("classname", "?").split(".")[:2])
        entry = totals[module]
        entry[0] += float(case.get("time", "0") or 0)
        entry[1] += 1
    return {name: (secs, int(count)) for name, (secs, count) in totals.items()}


def main() -> None:
    """Print the modules by total time, largest first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    totals = module_totals(args.report)
    grand = sum(secs for secs, _ in totals.values())
    print(f"{grand:8.0f} s in all, {sum(n for _, n in totals.values())} tests")
    for name, (secs, count) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{secs:8.1f} s {count:4d}  {name}")


if __name__ == "__main__":
    main()
