"""One training job over several processes and machines: torchrun launches, we supervise.

A job whose spec has `resources: {gpus: N, nodes: M}` (on CPUs `processes: N`) with N x M > 1
runs like this:

- The worker that claims it starts the job's process as always (core.training.child). That
  process holds the lease and, instead of training itself, starts torch's elastic launcher
  (`torch.distributed.run`, i.e. torchrun; see core.training.launch) in its own session.
  torchrun starts N rank processes, each again `core.training.child`, which recognises a
  rank by torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE).
- Every rank trains (transformers' Trainer runs DDP over gloo on CPUs, NCCL on GPUs). Only
  global rank 0 writes about the job: metrics, checkpoints, the stop report, the adapter
  and its registration, all through the same fenced `JobLease`; the other ranks write
  nothing but their share of a checkpoint (their RNG state, by the Trainer).
- A stop (cancel, worker shutdown) reaches the job's process as SIGTERM; it passes the
  signal on to its ranks. The ranks agree on the step to stop at (`any_rank` at the end of
  every step), so all of them save the same checkpoint and none waits forever in a
  collective. The worker's stop deadline logic is unchanged: rank 0 writes the stop report
  under the job process's pid.
- With M > 1 machines, the other machines' workers join the job (`claim_node`, below):
  PostgreSQL is the coordinator. The claiming worker publishes the rendezvous address of
  node 0 in `job_nodes`; a worker with a free slot takes the next free node rank of a
  running job that still needs machines (one atomic insert: the primary key makes a second
  taker fail), starts its own launcher with that node rank, and stops it as soon as the
  attempt it joined is no longer the job's. All machines must share the data dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, func, insert, select
from sqlalchemy.exc import IntegrityError

from core.training.models import JobNode, TrainingJob

if TYPE_CHECKING:
    from core.training.handlers import JobContext
    from core.training.spec import ResourcesSpec

JOB_PID_ENV = "CLARA_JOB_PID"  # the job process's pid, under which rank 0 reports a stop


@dataclass(frozen=True)
class Rank:
    rank: int
    local_rank: int
    world_size: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def current_rank() -> Rank | None:
    """This process's place in a torchrun launch, None outside one."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return Rank(
        int(os.environ["RANK"]),
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ["WORLD_SIZE"]),
    )


def writes_about_job(rank: Rank | None, node_rank: int) -> bool:
    """Whether a job's process writes about the job (progress, metrics, stop report,
    outcome): the one the claiming worker started, or rank 0 of its ranks."""
    return rank.main if rank is not None else node_rank == 0


def wants_launch(resources: ResourcesSpec | None) -> bool:
    """Whether this (non-rank) job process must start torchrun instead of training itself."""
    return resources is not None and resources.world_size > 1 and current_rank() is None


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def any_rank(flag: bool, device: Any) -> bool:
    """True on every rank when `flag` is true on any rank (a collective: all ranks call it
    at the same point). Outside a process group: `flag`."""
    if not _initialized():
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(values: list[int], device: Any) -> list[int]:
    """Element-wise sums over all ranks (a collective); `values` outside a process group."""
    if not _initialized():
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t.tolist()]


# The launcher ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def launch_command(
    job_id: int,
    token: int,
    parent_pid: int,
    *,
    processes: int,
    nodes: int,
    node_rank: int,
    master_addr: str,
    master_port: int,
    join_timeout_s: int = 600,
) -> list[str]:
    """torchrun (static rendezvous at node 0's address) starting `processes` ranks of the
    job's process on this machine; core.training.launch ends it when `parent_pid` dies."""
    return [
        sys.executable,
        "-m",
        "core.training.launch",
        str(parent_pid),
        f"--nnodes={nodes}",
        f"--node-rank={node_rank}",
        f"--nproc-per-node={processes}",
        f"--master-addr={master_addr}",
        f"--master-port={master_port}",
        f"--rdzv-conf=timeout={join_timeout_s}",
        "--max-restarts=0",
        "-m",
        "core.training.child",
        str(job_id),
        str(token),
    ]


def rank_pids(launcher_pid: int) -> list[int]:
    """The rank processes: children of torchrun (read from /proc; Linux)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid …": comm may hold spaces, so split after the last ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == launcher_pid:
                out.append(int(stat.parent.name))
    return out


def run_launcher(ctx: JobContext, resources: ResourcesSpec) -> int:
    """Start torchrun for this machine's share of the job and supervise it until it ends;
    returns the job process's exit code (core.training.child's codes). On node 0 (the
    claiming worker's) this process holds the lease and reports; on a joined node it only
    runs its ranks."""
    from core.training.handlers import EXIT_FAILED, EXIT_LOST, EXIT_OK, EXIT_STOPPED
    from core.training.jobs import load_job
    from core.training.queue import FailureReason
    from core.training.stopping import read_stop_report

    job, log, engine, token = ctx.job, ctx.log, ctx.engine, ctx.lease.token
    node_rank = ctx.node_rank
    if resources.nodes == 1:
        address, port = "127.0.0.1", free_port()
    elif node_rank == 0:
        address, port = worker_address(ctx.settings.worker_address), free_port()
        row = load_job(engine, job.id)
        if not publish_first_node(
            engine,
            job.id,
            token,
            nodes=resources.nodes,
            worker_id=(row.lease_owner if row else None) or f"pid {os.getpid()}",
            host=socket.gethostname(),
            address=address,
            port=port,
        ):
            ctx.lost()
        log(
            f"waiting up to {resources.join_timeout_s} s for {resources.nodes - 1} more "
            f"machine(s) to join at {address}:{port}"
        )
    else:
        found = first_node(engine, job.id, token)
        if found is None:
            ctx.lost()
        address, port = found
    cores = ctx.settings.train_threads or os.cpu_count() or 1
    per_rank = str(max(1, cores // resources.processes_per_node))
    env = {
        **os.environ,
        JOB_PID_ENV: str(os.getpid()),
        # The job's share of the cores, split between its ranks.
        "CLARA_TRAIN_THREADS": per_rank,
        "OMP_NUM_THREADS": per_rank,
    }
    cmd = launch_command(
        job.id,
        token,
        os.getpid(),
        processes=resources.processes_per_node,
        nodes=resources.nodes,
        node_rank=node_rank,
        master_addr=address,
        master_port=port,
        join_timeout_s=resources.join_timeout_s,
    )
    log(
        f"launching {resources.processes_per_node} training process(es) on this machine "
        f"(node {node_rank} of {resources.nodes}, world size {resources.world_size}, "
        f"rendezvous {address}:{port})"
    )
    # The tracker of this process only relays: the ranks report the stop themselves.
    ctx.tracker.exit_now = None
    ctx.tracker.set_phase("train")
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL)

    def relay() -> None:
        ctx.stop.wait()
        pids = rank_pids(proc.pid)
        log(f"stop requested: passing it on to {len(pids)} training process(es)")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)

    threading.Thread(target=relay, name="stop-relay", daemon=True).start()
    rc = proc.wait()
    report = read_stop_report(job.output_dir) or {}
    # A stop asked of this machine, or of another one (the ranks agreed on it and rank 0
    # saved the checkpoint): either way the job stopped, it did not fail.
    if ctx.stop.is_set() or (report.get("pid") == os.getpid() and report.get("state") == "saved"):
        log(f"training processes stopped (launcher exit code {rc})")
        return EXIT_STOPPED
    if node_rank != 0:
        return EXIT_OK if rc == 0 else EXIT_FAILED  # node 0 reports the job's outcome
    row = load_job(engine, job.id)
    if row is None or row.fencing_token != token:
        return EXIT_LOST
    if row.state != "running":
        return EXIT_OK if row.state == "succeeded" else EXIT_FAILED  # reported by rank 0
    joined = joined_nodes(engine, job.id, token) if resources.nodes > 1 else 1
    if joined < resources.nodes:
        message = (
            f"only {joined} of {resources.nodes} machines joined within "
            f"{resources.join_timeout_s} s: start `clara worker` on more machines that share "
            "this database and data dir (and can reach CLARA_WORKER_ADDRESS of this one)"
        )
    elif rc == 0:
        message = "the training processes ended without reporting a result; see the log"
    else:
        message = (
            f"a training process failed (torchrun exit code {rc}); the log names the rank "
            "and its error"
        )
    log(f"failed: {message}")
    if not ctx.lease.fail(FailureReason.EXIT, message):
        return EXIT_LOST
    return EXIT_FAILED


# Machines joining a job (PostgreSQL as the coordinator) --------------------------------------

NODES = JobNode.__table__
JOBS = TrainingJob.__table__


@dataclass(frozen=True)
class NodeSeat:
    """A node rank of one attempt of a distributed job, taken by a joining worker."""

    job_id: int
    token: int
    node_rank: int
    nodes: int
    address: str
    port: int
    kind: str
    name: str
    attempt: int


def worker_address(configured: str | None) -> str:
    """Where other machines reach this one: CLARA_WORKER_ADDRESS, else the host name's
    address."""
    if configured:
        return configured
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def publish_first_node(
    engine: Engine,
    job_id: int,
    token: int,
    *,
    nodes: int,
    worker_id: str,
    host: str,
    address: str,
    port: int,
) -> bool:
    """Node 0 of this attempt, with the rendezvous address, while the token holds the job."""
    with engine.begin() as conn:
        held = conn.execute(
            select(JOBS.c.id).where(
                JOBS.c.id == job_id, JOBS.c.fencing_token == token, JOBS.c.state == "running"
            )
        ).first()
        if held is None:
            return False
        conn.execute(
            insert(NODES).values(
                job_id=job_id,
                token=token,
                node_rank=0,
                nodes=nodes,
                worker_id=worker_id,
                host=host,
                address=address,
                port=port,
            )
        )
    return True


def joined_nodes(engine: Engine, job_id: int, token: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(NODES)
                .where(NODES.c.job_id == job_id, NODES.c.token == token)
            ).scalar_one()
        )


def claim_node(engine: Engine, worker_id: str, host: str, gpus: int = 0) -> NodeSeat | None:
    """Take the next node rank of the oldest running distributed job that still needs
    machines, fits this worker's `gpus` and that this worker is not part of yet; None when
    there is none (or another worker took the same rank a moment earlier: the insert fails
    on the primary key)."""
    first = NODES.alias("first")
    member = NODES.alias("member")
    seat = (
        first.c.job_id,
        first.c.token,
        first.c.nodes,
        first.c.address,
        first.c.port,
        JOBS.c.kind,
        JOBS.c.name,
        JOBS.c.attempts,
    )
    q = (
        select(*seat, func.count(member.c.node_rank).label("taken"))
        .join(
            JOBS,
            and_(
                JOBS.c.id == first.c.job_id,
                JOBS.c.fencing_token == first.c.token,
                JOBS.c.state == "running",
                JOBS.c.gpus <= gpus,
            ),
        )
        .join(member, and_(member.c.job_id == first.c.job_id, member.c.token == first.c.token))
        .where(first.c.node_rank == 0)
        .group_by(*seat)
        .having(func.count(member.c.node_rank) < first.c.nodes)
        .order_by(first.c.job_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(q).all()
        taken_by_me = {
            (r.job_id, r.token)
            for r in conn.execute(
                select(NODES.c.job_id, NODES.c.token).where(NODES.c.worker_id == worker_id)
            )
        }
    for row in rows:
        if (row.job_id, row.token) in taken_by_me:
            continue
        try:
            with engine.begin() as conn:
                conn.execute(
                    insert(NODES).values(
                        job_id=row.job_id,
                        token=row.token,
                        node_rank=int(row.taken),
                        nodes=row.nodes,
                        worker_id=worker_id,
                        host=host,
                    )
                )
        except IntegrityError:
            return None  # another worker took this rank first; the next round tries again
        return NodeSeat(
            row.job_id,
            row.token,
            int(row.taken),
            row.nodes,
            row.address,
            row.port,
            row.kind,
            row.name,
            row.attempts,
        )
    return None


def first_node(engine: Engine, job_id: int, token: int) -> tuple[str, int] | None:
    """The rendezvous address node 0 of this attempt published."""
    with engine.connect() as conn:
        row = conn.execute(
            select(NODES.c.address, NODES.c.port).where(
                NODES.c.job_id == job_id, NODES.c.token == token, NODES.c.node_rank == 0
            )
        ).first()
    return (row.address, row.port) if row is not None else None
