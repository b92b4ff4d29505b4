"""`clara chat` (the Gradio chat server), `clara generate` (one streamed answer to stdout),
`clara feedback` (what people said about answers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from cli.common import CliFailure, app, console, context, print_rows, settings
from core.serving.engine import BASE, GenerationSettings

feedback_app = typer.Typer(help="Feedback given in the chat.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@app.command("chat")
def chat(
    host: str | None = typer.Option(None, help="bind address (default CLARA_CHAT_HOST)"),
    port: int | None = typer.Option(None, help="port (default CLARA_CHAT_PORT)"),
    quantization: str | None = typer.Option(
        None,
        help="load the base model in 4bit or 8bit (bitsandbytes); default CLARA_CHAT_QUANTIZATION",
    ),
) -> None:
    """Run the chat server (Gradio; embedded by the Streamlit Chat page)."""
    from workers.chat import serve

    cfg = settings()
    cfg.check_bind(host or cfg.chat_host)
    console.print(
        f"chat server on http://{host or cfg.chat_host}:{port or cfg.chat_port} "
        f"(auth {'on' if cfg.auth_enabled else 'OFF'}); loading the base model…"
    )

    serve(host, port, cfg, quantization)


def _history(path: Path | None) -> list[dict[str, str]]:
    if path is None:
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CliFailure(f"{path}: cannot read the conversation as JSON ({err})") from None
    if not isinstance(data, list) or not all(
        isinstance(m, dict)
        and m.get("role") in ("system", "user", "assistant")
        and isinstance(m.get("content"), str)
        for m in data
    ):
        raise CliFailure(
            f'{path}: expected a JSON list of {{"role": user|assistant|system, '
            '"content": text}} messages'
        )
    return data


@app.command("generate")
def generate(
    prompt: str = typer.Argument(..., help="the question; '-' reads it from stdin"),
    adapter: str = typer.Option(
        BASE, "--adapter", "-a", help="adapter name, line:NAME (a line's active adapter), or 'base'"
    ),
    system: str = typer.Option("", help="system prompt"),
    temperature: float = typer.Option(0.7, min=0.0, max=2.0),
    top_p: float = typer.Option(0.95, min=0.01, max=1.0),
    max_new_tokens: int = typer.Option(256, min=1, max=4096),
    repetition_penalty: float = typer.Option(1.1, min=1.0, max=2.0),
    history: Path | None = typer.Option(None, help="JSON file with earlier messages"),
    quantization: str | None = typer.Option(None, help="4bit or 8bit (bitsandbytes)"),
) -> None:
    """Answer one prompt, streaming the text to stdout (notes go to stderr)."""
    from cli.common import err_console
    from core.permissions import require
    from core.serving.chat import ChatService, engine_from_settings

    ctx = context()
    user = require(ctx.user, "chat:use")  # before reading stdin or loading
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise CliFailure("the prompt is empty")
    gen = GenerationSettings(
        system_prompt=system,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty,
    )

    service = ChatService(ctx.engine, engine_from_settings(ctx.settings, quantization))
    messages = [*_history(history), {"role": "user", "content": prompt}]
    reply = service.reply(user, messages, adapter, gen)
    if reply.note:
        err_console.print(f"[yellow]{reply.note}[/yellow]")
    for piece in reply:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@feedback_app.command("list")
def feedback_list(
    adapter: str | None = typer.Option(None, help="only this adapter ('base' for none)"),
    user: str | None = typer.Option(None, "--user", help="only this user's feedback"),
    limit: int = typer.Option(50, min=1, max=10_000),
    offset: int = typer.Option(0, min=0),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """List feedback, newest first."""
    from core.serving.feedback import list_feedback

    ctx = context()
    rows, total = list_feedback(
        ctx.engine,
        ctx.user,
        adapter=adapter,
        username=user,
        limit=limit,
        offset=offset,
    )
    print_rows(
        rows,
        json_out,
        ["id", "when", "user", "adapter", "rating", "prompt", "corrected", "sample"],
        lambda r: (
            str(r.id),
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            r.username,
            r.adapter_name,
            "👍" if r.rating == "up" else "👎",
            r.prompt[:60],
            "yes" if r.correction else "",
            str(r.sample_id or ""),
        ),
        data={"total": total, "items": rows},
        title=f"{len(rows)} of {total}",
    )
