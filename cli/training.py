"""`clara train ...`, `clara worker`, `clara adapters ...`, `clara demo-model`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cli.common import (
    EXIT_USAGE,
    CliFailure,
    app,
    console,
    context,
    err_console,
    print_json,
    print_rows,
    settings,
)

train_app = typer.Typer(help="Training jobs: submit, watch, cancel, retry.", no_args_is_help=True)
adapters_app = typer.Typer(help="The adapter registry.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(adapters_app, name="adapters")


def _ts(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


# clara train --------------------------------------------------------------------------------


@train_app.command("submit")
def submit(
    spec_file: Path = typer.Argument(..., help="training spec (YAML)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Validate a spec (and everything it names) and queue it."""
    from core.training.jobs import submit_job
    from core.training.spec import load_spec

    ctx = context()
    spec = load_spec(spec_file)
    job = submit_job(ctx.engine, ctx.user, spec, settings=ctx.settings)
    if json_out:
        print_json(job)
        return
    console.print(
        f"queued job [bold]{job.id}[/bold] ({job.method} → adapter {job.name!r}); "
        f"follow it with `clara train logs {job.id} --follow`"
    )


@train_app.command("list")
def list_(
    state: list[str] = typer.Option(None, "--state", help="queued|running|succeeded|..."),
    limit: int = 50,
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """List training jobs, newest first."""
    from core.training.jobs import list_jobs

    ctx = context()
    jobs = list_jobs(ctx.engine, ctx.user, state or None, limit=limit)
    print_rows(
        jobs,
        json_out,
        ["id", "name", "method", "state", "step", "attempts", "owner", "created", "error"],
        lambda j: (
            str(j.id),
            j.name,
            j.method,
            j.state,
            f"{j.step}/{j.max_steps or '?'}",
            f"{j.attempts}/{j.max_attempts}",
            j.owner,
            _ts(j.created_at),
            (j.error or "")[:60],
        ),
    )


@train_app.command("show")
def show(job_id: int, json_out: bool = typer.Option(False, "--json")) -> None:
    """One job: state, progress, metrics summary, error."""
    from core.training.jobs import get_job, job_metrics, job_progress, waiting_reason

    ctx = context()
    user = ctx.user
    job = get_job(ctx.engine, user, job_id)
    metrics = job_metrics(ctx.engine, user, job_id)
    frac, eta = job_progress(job, metrics)
    waiting = waiting_reason(ctx.engine, user, job, ctx.settings)
    if json_out:
        print_json(
            {
                "job": job,
                "waiting": waiting,
                "progress": frac,
                "eta_seconds": eta,
                "metrics": json.loads(metrics.to_json(orient="records", date_format="iso")),
            }
        )
        return
    console.print(
        f"[bold]job {job.id}[/bold] {job.name!r} ({job.kind}/{job.method}) "
        f"state [bold]{job.state}[/bold]"
    )
    console.print(
        f"owner {job.owner}  priority {job.priority}  attempts "
        f"{job.attempts}/{job.max_attempts}  step {job.step}/{job.max_steps or '?'} "
        f"({frac:.0%}{f', ETA {eta:.0f}s' if eta else ''})"
    )
    console.print(f"base {job.base_model}  dataset version {job.dataset_version_id}")
    console.print(
        f"created {_ts(job.created_at)}  started {_ts(job.started_at)}  "
        f"finished {_ts(job.finished_at)}"
    )
    if job.checkpoint:
        console.print(f"checkpoint {job.checkpoint}")
    if job.adapter_id:
        console.print(f"adapter id {job.adapter_id}")
    if job.error:
        console.print(f"[red]error:[/red] {job.error}")
    if waiting:
        console.print(f"[yellow]{waiting}[/yellow]")
    if len(metrics):
        train = metrics[metrics["phase"] == "train"]
        if len(train):
            last = train.iloc[-1]
            console.print(f"last loss {last['loss']:.4f} at step {int(last['step'])}")
        for phase in ("eval_before", "eval_after"):
            rows = metrics[metrics["phase"] == phase]
            if len(rows):
                console.print(f"{phase}: perplexity {rows.iloc[-1]['eval_perplexity']:.2f}")
    console.print(f"log {job.log_path}")


@train_app.command("logs")
def logs(
    job_id: int,
    lines: int = typer.Option(50, "--lines", "-n"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until it ends"),
) -> None:
    """The job's log (last lines); --follow keeps printing until the job finishes."""
    from core.training.jobs import FINISHED_STATES, get_job, job_log_tail

    ctx = context()
    user = ctx.user
    job = get_job(ctx.engine, user, job_id)
    if not follow:
        console.print(job_log_tail(ctx.engine, user, job_id, lines), markup=False, highlight=False)
        return
    pos = 0
    while True:
        path = Path(job.log_path) if job.log_path else None
        if path and path.exists():
            with path.open("rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
            if chunk:
                typer.echo(chunk.decode("utf-8", errors="replace"), nl=False)
        if job.state in FINISHED_STATES:
            break
        time.sleep(1.0)
        job = get_job(ctx.engine, user, job_id)
    err_console.print(f"job {job.id} {job.state}" + (f": {job.error}" if job.error else ""))


@train_app.command("cancel")
def cancel(job_id: int) -> None:
    """Cancel a queued job, or stop a running one (it checkpoints first)."""
    from core.training.jobs import cancel_job

    ctx = context()
    job = cancel_job(ctx.engine, ctx.user, job_id)
    what = "cancelled" if job.state == "cancelled" else "cancel requested (the worker stops it)"
    console.print(f"job {job.id}: {what}")


@train_app.command("retry")
def retry(job_id: int) -> None:
    """Queue a failed or cancelled job again (resumes from its last checkpoint)."""
    from core.training.jobs import retry_job

    ctx = context()
    job = retry_job(ctx.engine, ctx.user, job_id)
    console.print(f"job {job.id}: {job.state}")


@train_app.command("presets")
def presets_cmd(name: str | None = typer.Argument(None)) -> None:
    """List the presets, or print one as YAML to start a spec from."""
    import yaml

    from core.training.spec import PRESETS, preset

    if name is None:
        for key, value in PRESETS.items():
            console.print(f"[bold]{key}[/bold]: {value.get('description', '')}")
        return
    data = preset(name, name="my-adapter", dataset_version="DATASET@v1")
    typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


@train_app.command("sleep-job", hidden=True)
def sleep_job(
    seconds: float = 0.0,
    count: int = 1,
    name: str = "sleep",
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Queue jobs that only sleep (checks of queue and workers)."""
    from core.training.jobs import submit_sleep_job

    ctx = context()
    user = ctx.user
    jobs = [submit_sleep_job(ctx.engine, user, seconds, name=name) for _ in range(count)]
    if json_out:
        print_json([j.id for j in jobs])
    else:
        console.print(f"queued {len(jobs)} sleep job(s)")


# clara worker -------------------------------------------------------------------------------


@app.command("worker")
def worker(
    concurrency: int = typer.Option(
        None, "--concurrency", "-c", help="jobs at once (default CLARA_WORKER_CONCURRENCY)"
    ),
    once: bool = typer.Option(False, "--once", help="run until the queue is empty, then exit"),
    lease_seconds: float = typer.Option(
        30.0,
        "--lease-seconds",
        help="a job whose worker is silent this long is taken over by another worker",
    ),
    poll_interval: float = typer.Option(0.25, "--poll-interval", hidden=True),
    kinds: str = typer.Option(
        "",
        "--kinds",
        help="only these job kinds, comma-separated: train, score, embed (default: all); "
        "e.g. --kinds train on a GPU box, --kinds score,embed elsewhere",
    ),
    metrics_port: int = typer.Option(
        None,
        "--metrics-port",
        min=0,
        max=65535,
        help="serve Prometheus /metrics on this port (default CLARA_WORKER_METRICS_PORT; 0: "
        "off) at CLARA_WORKER_METRICS_HOST (127.0.0.1)",
    ),
    gpus: int = typer.Option(
        None,
        "--gpus",
        min=0,
        max=64,
        help="GPUs jobs may use here (default: all CUDA devices found); jobs whose spec asks "
        "for more (resources.gpus) are left to other workers",
    ),
) -> None:
    """Run jobs from the queue (training, scoring, embedding; each in its own child process)."""
    from workers.trainer import Worker, parse_kinds

    ctx = context()
    if concurrency is not None and concurrency < 1:
        raise CliFailure("--concurrency must be at least 1", EXIT_USAGE)
    try:
        wanted = parse_kinds(kinds)
    except ValueError as err:
        raise CliFailure(str(err), EXIT_USAGE) from None
    if lease_seconds < 2:
        raise CliFailure("--lease-seconds must be at least 2", EXIT_USAGE)
    w = Worker(
        ctx.settings,
        concurrency=concurrency or ctx.settings.worker_concurrency,
        lease_seconds=lease_seconds,
        poll_interval=poll_interval,
        once=once,
        engine=ctx.engine,
        kinds=wanted,
        gpus=gpus,
        log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True),
    )
    port = ctx.settings.worker_metrics_port if metrics_port is None else metrics_port
    if port:
        w.metrics_url = _serve_worker_metrics(ctx, port)
        w.log(f"metrics on {w.metrics_url}")
    raise typer.Exit(w.run())


def _serve_worker_metrics(ctx, port: int) -> str:
    from core.ops.metrics import metrics_registry, start_metrics_server

    host = ctx.settings.worker_metrics_host
    registry = metrics_registry(ctx.engine, ctx.settings, worker=True)
    try:
        start_metrics_server(registry, host, port, ctx.settings)
    except OSError as err:
        raise CliFailure(
            f"cannot serve metrics on {host}:{port} ({err.strerror}); choose another --metrics-port"
        ) from None
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


# clara demo-model ---------------------------------------------------------------------------


@app.command("demo-model")
def demo_model(json_out: bool = typer.Option(False, "--json")) -> None:
    """Build (once) the small demo base model from the sample corpus and print its folder."""
    from core.training.demo_model import MANIFEST, ensure_demo_model

    cfg = settings()
    cfg.ensure_dirs()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("demo model", total=1.0)
        path = ensure_demo_model(
            cfg,
            progress=lambda msg, frac: progress.update(task, description=msg, completed=frac),
        )
    manifest = json.loads((path / MANIFEST).read_text())
    if json_out:
        print_json({"path": str(path), **manifest})
        return
    console.print(
        f"demo model: [bold]{path}[/bold]  ({manifest['parameters']:,} parameters, "
        f"size {manifest['size']}, final pre-training loss "
        f"{manifest['final_loss']:.3f})"
    )


# clara adapters -----------------------------------------------------------------------------


@adapters_app.command("list")
def adapters_list(json_out: bool = typer.Option(False, "--json")) -> None:
    """Registered adapters, newest first."""
    from core.training.adapters import list_adapters

    ctx = context()
    print_rows(
        list_adapters(ctx.engine, ctx.user),
        json_out,
        ["id", "name", "method", "dataset version", "job", "ppl before", "ppl after"]
        + ["created by", "created"],
        lambda a: (
            a.id,
            a.name,
            a.method,
            a.dataset_version_id or "-",
            a.job_id or "-",
            _num(a.metrics.get("eval_perplexity_before")),
            _num(a.metrics.get("eval_perplexity_after")),
            a.created_by,
            _ts(a.created_at),
        ),
    )


def _num(v) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) else "-"


@adapters_app.command("show")
def adapters_show(name: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """One adapter with its manifest data and lineage (dataset version → job → adapter)."""
    from core.training.adapters import get_adapter, lineage

    ctx = context()
    user = ctx.user
    info = get_adapter(ctx.engine, user, name)
    lin = lineage(ctx.engine, user, name)
    if json_out:
        print_json({"adapter": info, "lineage": lin})
        return
    console.print(f"[bold]{info.name}[/bold] (id {info.id}, {info.method}) at {info.path}")
    console.print(f"base {info.base_model}  fingerprint {info.base_model_fingerprint[:16]}…")
    for step in lin["chain"]:
        v, j, a = step["dataset_version"], step["job"], step["adapter"]
        console.print(
            f"  {v.get('ref') or v.get('id')} → job {j['id'] if j else '-'} → {a['name']}"
        )
    for k, v in sorted(info.metrics.items()):
        console.print(f"  {k}: {v}")
    console.print(
        "  libraries: " + ", ".join(f"{k} {v}" for k, v in info.library_versions.items() if v)
    )


@adapters_app.command("merge")
def adapters_merge(name: str, out_dir: Path) -> None:
    """Export base + adapter as full safetensors weights with the tokenizer."""
    from core.training.adapters import merge_adapter

    ctx = context()
    with console.status(f"merging {name}…"):
        out = merge_adapter(ctx.engine, ctx.user, name, out_dir, settings=ctx.settings)
    console.print(f"merged model written to [bold]{out}[/bold]")


@adapters_app.command("delete")
def adapters_delete(name: str, yes: bool = typer.Option(False, "--yes", "-y")) -> None:
    """Delete an adapter (row and files)."""
    from core.training.adapters import delete_adapter, get_adapter

    ctx = context()
    # Permission and existence first, the question after: nobody confirms what they may not do.
    user = ctx.allowed("adapters:activate", "adapters.delete", name)
    get_adapter(ctx.engine, user, name)
    if not yes:
        typer.confirm(f"delete adapter {name!r} and its files?", abort=True)
    info = delete_adapter(ctx.engine, user, name)
    console.print(f"deleted adapter {info.name}")
