"""CLI start-up: wall time of `clara --help`, `clara corpus --help` and a keyword search,
and where the import time goes.

Usage: .venv/bin/python bench/cli_start_bench.py [--runs 5] [--repo PATH] [--top 10]

Each command runs `--runs` times as a fresh process (`python -m cli ...` in the checkout,
the same code the `clara` script runs); the median and the fastest wall time and the median
CPU time (user + system; less disturbed by other load on the machine) are reported. The
search runs against a temporary data dir with the sample corpus loaded without embeddings
(`clara corpus load-sample --no-embed`, done once before timing). Then each command runs once
more under `python -X importtime`, and the top import costs are listed per top-level package
(self time summed over its modules), with the heavy libraries that a start-up must not load
(torch, transformers, chromadb, pandas, ...; `tests/unit/test_cli_imports.py` checks that).
Target: every command under 1.5 s wall on a quiet machine.

--repo runs another checkout with this virtualenv (e.g. a `git worktree` of an older commit,
to compare before and after).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The modules a command must not load at start: the list the test enforces.
from tests.unit.test_cli_imports import HEAVY  # noqa: E402

COMMANDS = {
    "clara --help": ["--help"],
    "clara corpus --help": ["corpus", "--help"],
    "clara corpus search Hundesteuer --mode keyword": [
        "corpus", "search", "Hundesteuer", "--mode", "keyword", "-k", "10",
    ],
}  # fmt: skip


def clean_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARA_")}
    env.update(
        CLARA_DATA_DIR=str(data_dir),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        ANONYMIZED_TELEMETRY="False",
        COLUMNS="100",
    )
    return env


def run(repo: Path, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one `clara` process."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=repo, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"`clara {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime


def import_costs(stderr: str) -> tuple[float, dict[str, float]]:
    """Total import time and self time per top-level package, in ms, from -X importtime."""
    per_pkg: dict[str, float] = defaultdict(float)
    total = 0.0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cum, name = line[len("import time:") :].split("|")
        name = name.strip()
        per_pkg[name.split(".")[0]] += int(self_us) / 1000
        total += int(self_us) / 1000
    return total, per_pkg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout to run (default: this)")
    ap.add_argument("--top", type=int, default=10)
    a = ap.parse_args()
    repo = a.repo.resolve()

    with tempfile.TemporaryDirectory(prefix="clara-cli-bench-") as tmp:
        env = clean_env(Path(tmp))
        t_load, _ = run(repo, ["corpus", "load-sample", "--no-embed"], env)
        # One untimed run of each: the OS file cache and .pyc files are warm for all runs.
        for args in COMMANDS.values():
            run(repo, args, env)

        print(
            f"CLI start-up, {a.runs} runs each ({repo}; sample corpus loaded in {t_load:.1f} s)\n"
            f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}, load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
        )
        print(
            f"{'command':<48} {'median s':>8} {'min s':>6} {'cpu s':>6} {'imports s':>9}"
            "  heavy loaded"
        )
        profiles = {}
        for label, args in COMMANDS.items():
            walls, cpus = zip(*(run(repo, args, env) for _ in range(a.runs)), strict=True)
            probe = (
                "import runpy, sys; sys.argv = ['clara', *sys.argv[1:]]\n"
                "try:\n    runpy.run_module('cli', run_name='__main__')\n"
                "except SystemExit:\n    pass\n"
                f"print('LOADED', *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)"
            )
            proc = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", probe, *args],
                cwd=repo, env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            loaded = next(
                (ln.split()[1:] for ln in proc.stderr.splitlines() if ln.startswith("LOADED")),
                ["?"],
            )
            total, per_pkg = import_costs(proc.stderr)
            profiles[label] = per_pkg
            print(
                f"{label:<48} {statistics.median(walls):>8.2f} {min(walls):>6.2f} "
                f"{statistics.median(cpus):>6.2f} {total / 1000:>9.2f}  {', '.join(loaded) or '-'}"
            )
        for label, per_pkg in profiles.items():
            print(f"\ntop {a.top} import costs (self time per package, ms): {label}")
            for name, ms in sorted(per_pkg.items(), key=lambda kv: -kv[1])[: a.top]:
                print(f"  {ms:8.1f}  {name}")


if __name__ == "__main__":
    main()
