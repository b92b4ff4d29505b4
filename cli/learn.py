"""`clara learn ...`: adapter lines (served as "line:NAME"), activation and rollback, learning
policies and cycles."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import CliFailure, app, console, context, print_json, print_rows

learn_app = typer.Typer(
    help="Continuous learning: adapter lines, activation history, rollback.",
    no_args_is_help=True,
)
line_app = typer.Typer(help="Adapter lines (served as line:NAME).", no_args_is_help=True)
learn_app.add_typer(line_app, name="line")
app.add_typer(learn_app, name="learn")


def _show(info, json_out: bool) -> None:
    if json_out:
        print_json({"line": info, "served_as": info.served_as})
        return
    console.print(
        f"[bold]{info.name}[/bold] served as {info.served_as}: active adapter "
        f"[bold]{info.active_adapter}[/bold] (base {info.base_model})"
    )
    for a in info.history:
        was = f" (was {a.previous_adapter_name})" if a.previous_adapter_name else ""
        why = f": {a.reason}" if a.reason else ""
        when = f"{a.at:%Y-%m-%d %H:%M:%S}"
        console.print(f"  {when} {a.action} {a.adapter_name}{was} by {a.actor}{why}")


@line_app.command("create")
def line_create(
    name: str,
    adapter: str = typer.Option(..., "--adapter", help="its first (active) adapter"),
    description: str = typer.Option("", "--description"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """A new line; chat and the API serve it as line:NAME."""
    from core.learning.lines import create_line

    ctx = context()
    _show(create_line(ctx.engine, ctx.user, name, adapter, description), json_out)


@line_app.command("list")
def line_list(json_out: bool = typer.Option(False, "--json")) -> None:
    """Every line with its active adapter."""
    from core.learning.lines import list_lines

    ctx = context()
    print_rows(
        list_lines(ctx.engine, ctx.user),
        json_out,
        ["line", "served as", "active adapter", "base model", "created by"],
        lambda r: [r.name, r.served_as, r.active_adapter, r.base_model, r.created_by],
    )


@line_app.command("show")
def line_show(name: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """A line and its activation history (who, what, when, why), newest first."""
    from core.learning.lines import get_line

    ctx = context()
    _show(get_line(ctx.engine, ctx.user, name), json_out)


@line_app.command("delete")
def line_delete(name: str) -> None:
    """Forget a line and its history (its adapters stay registered)."""
    from core.learning.lines import delete_line

    ctx = context()
    delete_line(ctx.engine, ctx.user, name)
    console.print(f"deleted line {name}")


def _change(how, line: str, adapter: str, reason: str, json_out: bool) -> None:
    ctx = context()
    _show(how(ctx.engine, ctx.user, line, adapter, reason=reason), json_out)


@learn_app.command("activate")
def learn_activate(
    line: str,
    adapter: str,
    reason: str = typer.Option("", "--reason", help="recorded in the line's history"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Serve ADAPTER (trained on the line's base) as the line from the next request on."""
    from core.learning.lines import activate

    _change(activate, line, adapter, reason, json_out)


@learn_app.command("rollback")
def learn_rollback(
    line: str,
    adapter: str,
    reason: str = typer.Option("", "--reason", help="recorded in the line's history"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Go back to an adapter the line has served before."""
    from core.learning.lines import rollback

    _change(rollback, line, adapter, reason, json_out)


policy_app = typer.Typer(help="A line's learning policy.", no_args_is_help=True)
learn_app.add_typer(policy_app, name="policy")


@policy_app.command("set")
def policy_set(line: str, path: Path, json_out: bool = typer.Option(False, "--json")) -> None:
    """Set LINE's policy from a YAML file (sources, regression set, trigger, trainer, gate,
    probes); refused, naming why, when the regression set is empty or a key is wrong."""
    from core.learning.cycles import set_policy
    from core.learning.policy import parse_policy_text

    ctx = context()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CliFailure(f"{path}: {err.strerror}") from None
    policy = set_policy(ctx.engine, ctx.user, line, parse_policy_text(text, str(path)))
    if json_out:
        print_json(policy)
    else:
        console.print(f"policy of line {line} set (regression set {policy.regression})")


@policy_app.command("show")
def policy_show(line: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """LINE's policy and how many accepted samples are new for it."""
    from core.learning.cycles import get_policy, new_samples

    ctx = context()
    policy = get_policy(ctx.engine, ctx.user, line)
    new = new_samples(ctx.engine, ctx.user, line)
    if json_out:
        print_json({"policy": policy, "new_samples": new})
    elif policy is None:
        console.print(f"line {line} has no policy: it changes only by hand")
    else:
        console.print(
            f"{new} new accepted sample(s); a cycle starts at {policy.min_new_samples}"
            + ("" if policy.enabled else " (disabled)")
        )
        console.print_json(policy.model_dump_json())


@learn_app.command("run")
def learn_run(line: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """Start a learning cycle of LINE now (a worker trains and gates it)."""
    from core.learning.cycles import start_cycle

    ctx = context()
    cycle = start_cycle(ctx.engine, ctx.user, line)
    if json_out:
        print_json(cycle)
    else:
        console.print(
            f"line {line}: cycle {cycle.number} started with {cycle.new_samples} new "
            f"sample(s); training job {cycle.job_id} ({cycle.candidate})"
        )


@learn_app.command("cycles")
def learn_cycles(line: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """LINE's cycles, newest first: state, job, gate figures, decision."""
    from core.learning.cycles import list_cycles

    ctx = context()
    print_rows(
        list_cycles(ctx.engine, ctx.user, line),
        json_out,
        ["cycle", "state", "new samples", "from", "candidate", "job", "gate job", "reason"],
        lambda c: [
            c.number,
            c.state,
            c.new_samples,
            c.from_adapter,
            c.candidate,
            c.job_id,
            c.gate_job_id,
            c.reason,
        ],
    )
