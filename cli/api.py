"""`clara api`: the HTTP API server (FastAPI under uvicorn)."""

from __future__ import annotations

import typer

from cli.common import app, console, context


@app.command("api")
def api(
    host: str | None = typer.Option(None, help="bind address (default CLARA_API_HOST)"),
    port: int | None = typer.Option(None, help="port (default CLARA_API_PORT, 8510)"),
) -> None:
    """Run the HTTP API: /api/v1 (corpus, datasets, jobs, adapters) and the
    OpenAI-compatible /v1; documentation at /api/docs."""
    import uvicorn

    from api.app import asgi_app
    from core.ops.heartbeats import ProcessHeartbeat

    ctx = context()
    cfg = ctx.settings
    bind_host, bind_port = host or cfg.api_host, port or cfg.api_port
    cfg.check_bind(bind_host)
    url = f"http://{bind_host}:{bind_port}"
    console.print(f"API on {url}/api/v1  (docs: /api/docs, metrics: /metrics)")
    presence = ProcessHeartbeat(
        ctx.engine, "api", lambda: {"url": url}, every=cfg.heartbeat_seconds
    )
    with presence.running():
        uvicorn.run(
            asgi_app(ctx.engine, cfg),
            host=bind_host,
            port=bind_port,
            log_level="info",
            proxy_headers=cfg.trust_proxy_headers,
            server_header=False,
            # Open streams (job events, generations) must not hold a stop up for ever.
            timeout_graceful_shutdown=5,
        )
