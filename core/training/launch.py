"""torchrun for one job's ranks on this machine: `python -m core.training.launch PARENT_PID
TORCHRUN_ARGS…`.

torch's own launcher (`torch.distributed.run`), run in a process that dies with the job
process that started it (PR_SET_PDEATHSIG plus a parent-pid watchdog, as the job process
does with its worker), so killing a job never leaves training processes behind."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from core.training.child import die_with_parent

    die_with_parent(int(argv[0]))
    from torch.distributed.run import main as torchrun

    torchrun(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
