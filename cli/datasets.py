"""`clara dataset ...`: create, build, import, score, review, freeze, diff, export."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import (
    EXIT_USAGE,
    CliFailure,
    app,
    console,
    context,
    print_json,
    print_rows,
)
from core.datasets.errors import DatasetError, ImportFailed

dataset_app = typer.Typer(
    help="Build, score, review, freeze and export datasets.", no_args_is_help=True
)
review_app = typer.Typer(
    help="Accept or reject samples (by id or by filter).", no_args_is_help=True
)
dataset_app.add_typer(review_app, name="review")
app.add_typer(dataset_app, name="dataset")

JSON = typer.Option(False, "--json", help="machine-readable output")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@dataset_app.command("create")
def create(
    name: str,
    description: str = typer.Option("", help="what the dataset is for"),
    kind: str = typer.Option("standard", help="standard or feedback"),
    json_out: bool = JSON,
) -> None:
    """Create an empty dataset."""
    from core.datasets.service import create_dataset

    ctx = context()
    info = create_dataset(ctx.engine, ctx.user, name, description, kind)
    if json_out:
        print_json(info)
    else:
        console.print(f"created dataset [bold]{info.name}[/bold] (id {info.id})")


@dataset_app.command("build")
def build(
    name: str,
    docs: str = typer.Option("", help="comma-separated document ids"),
    saved_search: str = typer.Option("", "--saved-search", help="name of a saved corpus search"),
    template: str = typer.Option("text", help="built-in template name or a JSON/YAML file"),
    unit: str = typer.Option("document", help="document or chunk"),
    max_tokens: int = typer.Option(1024, help="split longer documents into parts"),
    k: int = typer.Option(0, help="top k of the saved search (0: its own k)"),
    json_out: bool = JSON,
) -> None:
    """Add samples built from corpus documents or a saved search (dataset created if new)."""
    from core.datasets.builder import build_from_documents, build_from_saved_search
    from core.datasets.service import get_or_create_dataset

    ctx = context()
    actor = ctx.user
    tpl: object = template
    if template.endswith((".json", ".yaml", ".yml")):
        import yaml

        p = Path(template)
        if not p.is_file():
            raise CliFailure(f"template file {p} not found")
        tpl = yaml.safe_load(p.read_text(encoding="utf-8"))
    ids = [d.strip() for d in docs.split(",") if d.strip()]
    if bool(ids) == bool(saved_search):
        raise CliFailure("give either --docs or --saved-search")
    ds = get_or_create_dataset(ctx.engine, actor, name)
    if ids:
        rep = build_from_documents(ctx.engine, actor, ds.id, ids, tpl, unit, max_tokens)
    else:
        rep = build_from_saved_search(
            ctx.engine, actor, ds.id, saved_search, tpl, unit, max_tokens, k or None
        )
    if json_out:
        print_json(rep)
        return
    console.print(
        f"{rep.dataset}: added {rep.added} sample(s) from {rep.documents} document(s)"
        f"; {rep.split_documents} split, {rep.skipped_existing} already present"
    )
    if rep.missing:
        console.print(f"[yellow]not found:[/yellow] {', '.join(rep.missing)}")


@dataset_app.command("import")
def import_(
    name: str,
    file: Path,
    fmt: str = typer.Option(
        None, "--format", help="messages, alpaca, sharegpt or text (detected when omitted)"
    ),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="import the good rows, report the bad ones (default: all or nothing)",
    ),
    json_out: bool = JSON,
) -> None:
    """Import JSONL / JSON / CSV / Parquet instruction data (dataset created if new)."""
    from core.datasets.importers import import_file
    from core.datasets.service import get_or_create_dataset

    ctx = context()
    actor = ctx.user
    try:
        ds = get_or_create_dataset(ctx.engine, actor, name)
        with _progress() as prog:
            task = prog.add_task(f"importing {file.name}", total=None)
            rep = import_file(
                ctx.engine,
                actor,
                ds.id,
                file,
                fmt,
                skip_bad,
                progress=lambda n: prog.update(task, completed=n),
            )
    except ImportFailed as err:
        if json_out:
            print_json({"imported": 0, "errors": [str(e) for e in err.errors]})
        raise CliFailure(str(err)) from None
    if json_out:
        print_json(rep)
        return
    how = "detected" if rep.detected else "given"
    console.print(
        f"imported {rep.imported} sample(s) into [bold]{rep.dataset}[/bold] "
        f"(format {rep.format}, {how})"
    )
    if rep.skipped:
        console.print(f"[yellow]skipped {rep.skipped} bad row(s):[/yellow]")
        for e in rep.errors:
            console.print(f"  {e}", markup=False)


@dataset_app.command("score")
def score(
    name: str,
    background: bool = typer.Option(
        False, help="queue a score job for `clara worker` and return (default: score here)"
    ),
    json_out: bool = JSON,
) -> None:
    """Run the quality pipeline over a dataset (scores, reasons, duplicates): in this process
    with a progress bar, or with --background as a job of the worker."""
    from core.datasets.scoring import score_dataset, start_scoring

    ctx = context()
    actor = ctx.user
    if background:
        run = start_scoring(ctx.engine, actor, name)
    else:
        with _progress() as prog:
            task = prog.add_task(f"scoring {name}", total=None)
            run = score_dataset(
                ctx.engine,
                actor,
                name,
                progress=lambda d, t: prog.update(task, completed=d, total=t),
            )
    if json_out:
        print_json(run)
    elif background:
        console.print(
            f"scoring run {run.id} queued as job {run.job_id} for {run.total} sample(s); "
            "`clara worker` (or `clara up`) runs it"
        )
    else:
        kept = run.stats["pipeline"]["pipeline"]["kept"] if run.stats else "?"
        console.print(f"scored {run.done} sample(s); {kept} above the minimum score")


@dataset_app.command("list")
def list_(json_out: bool = JSON) -> None:
    """List datasets with counts by status and their mean quality score."""
    from core.datasets.service import list_datasets

    ctx = context()
    print_rows(
        list_datasets(ctx.engine, ctx.user),
        json_out,
        ["name", "kind", "total", "pending", "accepted", "rejected", "scored", "mean score"]
        + ["versions"],
        lambda d: (
            d.name,
            d.kind,
            d.counts["total"],
            d.counts["pending"],
            d.counts["accepted"],
            d.counts["rejected"],
            d.scored,
            "-" if d.mean_score is None else f"{d.mean_score:.2f}",
            d.versions,
        ),
    )


@dataset_app.command("show")
def show(name: str, json_out: bool = JSON) -> None:
    """A dataset: counts, thresholds, versions and the latest scoring run."""
    from core.datasets.scoring import latest_scoring_run
    from core.datasets.service import get_dataset
    from core.datasets.versions import list_versions

    ctx = context()
    actor = ctx.user
    info = get_dataset(ctx.engine, actor, name)
    versions = list_versions(ctx.engine, actor, info.id)
    run = latest_scoring_run(ctx.engine, actor, info.id)
    if json_out:
        print_json({"dataset": info, "versions": versions, "latest_scoring_run": run})
        return
    console.print(f"[bold]{info.name}[/bold] ({info.kind}) {info.description}")
    console.print("samples: " + ", ".join(f"{k} {v}" for k, v in info.counts.items()))
    if run:
        console.print(f"latest scoring run {run.id}: {run.status} {run.done}/{run.total}")
    t = Table("version", "id", "train", "eval", "created", "by", "manifest sha256")
    for v in versions:
        t.add_row(
            v.ref,
            str(v.id),
            str(v.counts["train"]),
            str(v.counts["eval"]),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            v.created_by,
            v.manifest_sha256[:16],
        )
    console.print(t)


@dataset_app.command("review-stats")
def review_stats_(name: str, json_out: bool = JSON) -> None:
    """Review progress, reasons and score distribution of a dataset."""
    from core.datasets.quality.reasons import reason_label
    from core.datasets.review import review_stats

    ctx = context()
    stats = review_stats(ctx.engine, ctx.user, name)
    if json_out:
        print_json(stats)
        return
    c = stats.counts
    console.print(
        f"{c['total']} samples: {c['accepted']} accepted, {c['rejected']} rejected, "
        f"{c['pending']} pending; {stats.scored} scored, {stats.edited} edited"
    )
    t = Table("reason", "samples")
    for code, n in sorted(stats.reasons.items(), key=lambda kv: -kv[1]):
        t.add_row(f"{code} ({reason_label(code)})", str(n))
    console.print(t)


def _filters(
    status: str, reason: str, source: str, min_score: float | None, max_score: float | None
):
    from core.datasets.review import SampleFilter

    return SampleFilter(
        status=[s for s in status.split(",") if s] or None,
        reason=reason or None,
        source=source or None,
        min_score=min_score,
        max_score=max_score,
    )


def _review(
    decision: str,
    name: str,
    ids: str,
    status: str,
    reason: str,
    source: str,
    min_score: float | None,
    max_score: float | None,
    json_out: bool,
) -> None:
    from core.datasets.review import bulk_decide, decide, get_sample

    ctx = context()
    actor = ctx.user
    try:
        if ids:
            wanted = [int(i) for i in ids.split(",") if i.strip()]
            for sid in wanted:
                cur = get_sample(ctx.engine, actor, sid)
                decide(ctx.engine, actor, sid, decision, cur.row_version)
            changed = len(wanted)
        else:
            f = _filters(status, reason, source, min_score, max_score)
            changed = bulk_decide(ctx.engine, actor, name, decision, f)
    except (DatasetError, ValueError) as err:
        raise CliFailure(str(err)) from None
    if json_out:
        print_json({"changed": changed, "decision": decision})
    else:
        console.print(f"{decision} {changed} sample(s)")


_IDS = typer.Option("", help="comma-separated sample ids (default: all matching the filters)")
_STATUS = typer.Option("pending", help="comma-separated statuses to match")
_REASON = typer.Option("", help="reason code to match")
_SOURCE = typer.Option("", help="source to match (corpus, import, feedback, manual)")


def _review_command(decision: str, verb: str):
    def command(
        name: str,
        ids: str = _IDS,
        status: str = _STATUS,
        reason: str = _REASON,
        source: str = _SOURCE,
        min_score: float = typer.Option(None),
        max_score: float = typer.Option(None),
        json_out: bool = JSON,
    ) -> None:
        _review(decision, name, ids, status, reason, source, min_score, max_score, json_out)

    command.__doc__ = f"{verb} samples by id or every sample matching the filters."
    return command


review_app.command("accept")(_review_command("accepted", "Accept"))
review_app.command("reject")(_review_command("rejected", "Reject"))


@dataset_app.command("thresholds")
def thresholds(
    name: str,
    set_: list[str] = typer.Option(
        [], "--set", help="field=value (value as JSON; n-gram limits as field.n=value), repeatable"
    ),
    reset: bool = typer.Option(False, "--reset", help="back to the library defaults"),
    preview: bool = typer.Option(
        False,
        "--preview",
        help="show how many samples each threshold would flag (from the last scoring run's "
        "signals); with --set, for the new values, which are then not saved",
    ),
    json_out: bool = JSON,
) -> None:
    """Show or change the dataset's quality thresholds."""
    from core.datasets.quality.models import QualityThresholds
    from core.datasets.service import reset_thresholds, set_thresholds, thresholds_for
    from core.datasets.thresholds import (
        field_value,
        threshold_effects,
        threshold_fields,
        with_field_value,
    )

    if reset and set_:
        raise CliFailure("--reset and --set exclude each other", EXIT_USAGE)
    ctx = context()
    actor = ctx.user
    current = thresholds_for(ctx.engine, actor, name)
    if reset:
        current = QualityThresholds().to_dict()
    for item in set_:
        key, sep, raw = item.partition("=")
        if not sep:
            raise CliFailure(f"--set {item!r}: write field=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        field, _, n = key.strip().partition(".")
        if n and not isinstance(current.get(field), dict):
            raise CliFailure(f"--set {item!r}: {field} has no parts")
        current = with_field_value(current, key.strip(), value)
    eff = None
    if preview:
        eff = threshold_effects(ctx.engine, actor, name, current)
    elif reset:
        reset_thresholds(ctx.engine, actor, name)
    elif set_:
        set_thresholds(ctx.engine, actor, name, current)
        current = thresholds_for(ctx.engine, actor, name)
    if eff is not None:
        if json_out:
            print_json({"thresholds": current, "effects": eff})
            return
        console.print(
            f"{eff.dataset}: {eff.scored} of {eff.total} samples scored; flagged by any check "
            f"{eff.any_flagged} (saved values: {eff.any_flagged_saved}), below the minimum "
            f"score {eff.below_min_score} (saved values: {eff.below_min_score_saved})",
            markup=False,
        )
        t = Table("threshold", "value", "effect")
        for f in threshold_fields(current):
            value = json.dumps(field_value(current, f.key), ensure_ascii=False)
            t.add_row(f.key, value, eff.describe(f.key))
        console.print(t)
        return
    if json_out:
        print_json(current)
    else:
        for k, v in current.items():
            console.print(f"{k} = {json.dumps(v, ensure_ascii=False)}", markup=False)


@dataset_app.command("freeze")
def freeze_(
    name: str,
    eval_ratio: float = typer.Option(0.1, help="share of samples in the eval split"),
    seed: int = typer.Option(42, help="seed of the split"),
    label: str = typer.Option(None, "--name", help="optional label of the version"),
    json_out: bool = JSON,
) -> None:
    """Freeze the accepted samples into a new immutable version (Parquet + manifest)."""
    from core.datasets.versions import freeze

    ctx = context()
    v = freeze(ctx.engine, ctx.user, name, eval_ratio, seed, label)
    if json_out:
        print_json(v)
    else:
        console.print(
            f"froze [bold]{v.ref}[/bold] (id {v.id}): {v.counts['train']} train, "
            f"{v.counts['eval']} eval → {v.path}"
        )


@dataset_app.command("diff")
def diff(old: str, new: str, json_out: bool = JSON) -> None:
    """Samples added, removed and changed between two versions (name@vN or id)."""
    from core.datasets.versions import diff_versions

    ctx = context()
    d = diff_versions(ctx.engine, ctx.user, old, new)
    if json_out:
        print_json(d)
        return
    console.print(
        f"{d.old} → {d.new}: {len(d.added)} added, {len(d.removed)} removed, "
        f"{len(d.changed)} changed, {d.unchanged} unchanged"
    )
    for label, ids in (("added", d.added), ("removed", d.removed), ("changed", d.changed)):
        if ids:
            console.print(f"  {label}: {', '.join(ids[:50])}{' ...' if len(ids) > 50 else ''}")


@dataset_app.command("export")
def export(
    version: str,
    fmt: str = typer.Option("messages", "--format", help="messages, alpaca, sharegpt or text"),
    file_type: str = typer.Option("jsonl", "--file-type", help="jsonl, parquet or csv"),
    out: Path = typer.Option(None, help="output folder (default under the data dir)"),
    json_out: bool = JSON,
) -> None:
    """Export a version with a LLaMA-Factory dataset_info.json and an Axolotl snippet."""
    from core.datasets.export import export_version

    ctx = context()
    exp = export_version(ctx.engine, ctx.user, version, fmt, file_type, out)
    if json_out:
        print_json(exp)
    else:
        console.print(f"exported {exp.version} as {fmt}/{file_type} to {exp.path}")
        for name, meta in exp.files.items():
            console.print(f"  {name}: {meta['rows']} rows, sha256 {meta['sha256'][:16]}")
