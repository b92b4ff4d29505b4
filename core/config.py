"""Configuration from the environment (and an optional `.env`), validated once.

Every setting is an environment variable prefixed with ``CLARA_``. `load_settings()` turns
pydantic's validation errors into a single line naming the variable and what it accepts,
because that is what a person starting the workbench needs to see.
"""

from __future__ import annotations

import math
import os
import secrets
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ClaraError

# Values published somewhere (our own old default, examples, placeholders) and words that
# no random secret contains; a configured secret holding any of them is refused.
_PUBLISHED_SECRETS = {"change-me-clara-development-secret"}
_PLACEHOLDER_WORDS = ("change", "secret", "password", "example", "default", "clara", "xxxx")
MIN_SECRET_LENGTH = 32
SECRET_FILE = "auth_secret"
GENERATE_HINT = "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

ENV_PREFIX = "CLARA_"


class ConfigError(ClaraError):
    """A configuration value is invalid; the message is one line meant for a person."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    env: Literal["development", "testing", "production"] = "development"
    data_dir: Path = Path(".clara")

    # Storage. None means "the embedded default under the data dir".
    database_url: str | None = None
    chroma_url: str | None = Field(
        default=None, description="Chroma server URL (http://host:port); embedded when unset"
    )
    chroma_path: Path | None = None
    graph_uri: str | None = Field(
        default=None, description="bolt:// or neo4j:// URI; the embedded graph when unset"
    )
    graph_user: str = "neo4j"
    graph_password: SecretStr = SecretStr("")
    graph_database: str | None = None

    # Models.
    base_model: str | None = Field(
        default=None, description="local path or model id; the demo model when unset"
    )
    embedding_model: str | None = Field(
        default=None, description="local path or model id; the packaged all-MiniLM-L6-v2 when unset"
    )
    embedding_backend: Literal["torch", "onnx"] = Field(
        default="torch",
        description="torch: the sentence-transformers model; onnx: its int8 ONNX Runtime build "
        "(made once in data/models); the vector store must be re-embedded after a switch",
    )

    # Auth.
    auth: Literal["on", "off"] = "on"
    # None: a random secret generated once into the data dir (file mode 0600).
    auth_secret: SecretStr | None = None
    admin_password: SecretStr | None = None
    session_expiry_days: float = Field(default=1.0, gt=0)
    bcrypt_rounds: int = Field(default=12, ge=4, le=16, description="bcrypt cost factor")
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_seconds: int = Field(default=300, ge=1)
    login_max_failures_per_address: int = Field(
        default=20, ge=1, description="failures from one address, any names, before it is locked"
    )
    login_max_failures_per_name: int = Field(
        default=100, ge=1, description="failures for one name from all addresses together"
    )
    trust_proxy_headers: bool = Field(
        default=False,
        description="take the client address and https from X-Forwarded-For / -Proto "
        "(only behind a proxy that sets them)",
    )

    # Network.
    host: str = "127.0.0.1"
    ui_port: int = Field(default=8501, ge=1, le=65535)
    chat_host: str = "127.0.0.1"
    chat_port: int = Field(default=7860, ge=1, le=65535)
    chat_public_url: str | None = Field(
        default=None, description="URL the browser uses to reach the chat server"
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8510, ge=1, le=65535)
    api_max_body_mb: float = Field(
        default=200.0, gt=0, description="larger request bodies (uploads) are refused with 413"
    )
    api_access_token_minutes: float = Field(
        default=15.0, gt=0, le=1440, description="lifetime of an API access token (JWT)"
    )
    api_refresh_token_days: float = Field(
        default=7.0, gt=0, le=365, description="lifetime of an API refresh token"
    )

    # Workers and models.
    worker_concurrency: int = Field(default=1, ge=1, le=64)
    train_threads: int = Field(
        default=0,
        ge=0,
        description="torch threads per training job; 0: cores split between jobs",
    )
    worker_address: str | None = Field(
        default=None,
        description="the address other machines reach this worker's training processes at "
        "(distributed jobs over several machines); the host name's address when unset",
    )
    demo_model_size: Literal["tiny", "small"] = "small"
    chat_quantization: Literal["4bit", "8bit"] | None = Field(
        default=None, description="load the chat base model in 4 or 8 bit (bitsandbytes)"
    )
    serving_batch_window_ms: float = Field(
        default=15.0,
        ge=0,
        le=1000,
        description="how long an idle chat engine waits for more requests to batch with the first",
    )
    serving_max_batch: int = Field(
        default=8, ge=1, le=256, description="requests served by one forward pass at most"
    )

    # Command line and local files.
    cli_user: str = Field(default="admin", description="the user the CLI acts as")
    load_sample: Literal["ask", "yes", "no"] = Field(
        default="ask", description="load the sample corpus into an empty data dir at `clara up`"
    )
    cache_dir: Path | None = Field(
        default=None, description="derived files (decoded language model); $XDG_CACHE_HOME/clara"
    )
    start_worker: bool = True
    start_chat: bool = True
    start_api: bool = True

    # Health and metrics (core.ops).
    heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="how often workers and servers record that they live",
    )
    health_stale_seconds: float = Field(
        default=60.0, gt=0, description="a process silent this long counts as dead"
    )
    health_min_free_gb: float = Field(
        default=2.0, ge=0, description="less free space on the data dir's disk fails health"
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="bearer token a Prometheus scraper sends to every /metrics; without it only "
        "admins' own credentials open the API's and the chat server's",
    )
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="`clara worker` serves /metrics here; 0: off"
    )

    @field_validator("load_sample", mode="before")
    @classmethod
    def _check_load_sample(cls, v: Any) -> Any:
        word = str(v).strip().lower() if v is not None else "ask"
        return {"": "ask", "true": "yes", "1": "yes", "false": "no", "0": "no"}.get(word, word)

    @field_validator("demo_model_size", "chat_quantization", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return (v.strip().lower() or None) if isinstance(v, str) else v

    @field_validator("embedding_backend", mode="before")
    @classmethod
    def _check_embedding_backend(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not (v.startswith("sqlite") or v.startswith("postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        if v.startswith("postgresql://") or v.startswith("postgres://"):
            # One driver for the whole project: psycopg 3.
            v = "postgresql+psycopg://" + v.split("://", 1)[1]
        return v

    @field_validator("chroma_url")
    @classmethod
    def _check_chroma_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL of a Chroma server")
        return v.rstrip("/")

    @field_validator("graph_uri")
    @classmethod
    def _check_graph_uri(cls, v: str | None) -> str | None:
        if not v:
            return None
        allowed = ("bolt://", "bolt+s://", "bolt+ssc://", "neo4j://", "neo4j+s://", "neo4j+ssc://")
        if not v.startswith(allowed):
            raise ValueError("must be a bolt:// or neo4j:// URI (or unset for the embedded graph)")
        return v

    @field_validator("auth_secret", "metrics_token", mode="before")
    @classmethod
    def _check_secret(cls, v: Any) -> Any:
        raw = v.get_secret_value() if isinstance(v, SecretStr) else v
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            return None  # unset: the generated secret in the data dir / no scrape token
        problem = secret_weakness(str(raw))
        if problem:
            raise ValueError(f"{problem}; {GENERATE_HINT}")
        return v

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        if self.auth_secret is None:
            public = sorted(
                {h for h in (self.host, self.chat_host, self.api_host) if h not in _LOOPBACK}
            )
            if public:
                raise ValueError(
                    f"serving on {', '.join(public)} (not only this machine) needs an explicit "
                    f"CLARA_AUTH_SECRET shared by every process; {GENERATE_HINT}"
                )
        if self.health_stale_seconds <= self.heartbeat_seconds:
            raise ValueError(
                "CLARA_HEALTH_STALE_SECONDS must be longer than CLARA_HEARTBEAT_SECONDS "
                "(else every live process looks dead between two heartbeats)"
            )
        if self.worker_metrics_host not in _LOOPBACK and self.metrics_token is None:
            raise ValueError(
                f"serving worker metrics on {self.worker_metrics_host} (not only this machine) "
                f"needs CLARA_METRICS_TOKEN; {GENERATE_HINT}"
            )
        if self.env == "production":
            if self.auth == "off":
                raise ValueError("CLARA_AUTH=off is refused when CLARA_ENV=production")
            if self.auth_secret is None:
                raise ValueError(
                    "CLARA_AUTH_SECRET is not set; production needs an explicit secret of at "
                    f"least {MIN_SECRET_LENGTH} random characters; {GENERATE_HINT}"
                )
            if self.graph_uri and not self.graph_password.get_secret_value():
                raise ValueError("CLARA_GRAPH_PASSWORD is empty while CLARA_GRAPH_URI is set")
        return self

    def check_bind(self, host: str) -> None:
        """Refuse to serve beyond this machine without an explicit secret (the rule the
        settings apply to CLARA_HOST / CLARA_CHAT_HOST, for a host given another way)."""
        if self.auth_secret is None and host not in _LOOPBACK:
            raise ConfigError(
                f"serving on {host} (not only this machine) needs an explicit "
                f"CLARA_AUTH_SECRET shared by every process; {GENERATE_HINT}"
            )

    def auth_secret_value(self) -> str:
        """The configured secret, or the one generated once into the data dir."""
        if self.auth_secret is not None:
            return self.auth_secret.get_secret_value()
        return generated_secret(self.data_path / SECRET_FILE)

    # Derived locations -------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_path / 'clara.db'}"

    @property
    def effective_chroma_path(self) -> Path:
        return (self.chroma_path or self.data_path / "chroma").expanduser().resolve()

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "on"

    def ensure_dirs(self) -> None:
        self.data_path.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "artifacts"):
            (self.data_path / sub).mkdir(exist_ok=True)

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain values, secrets and URL passwords masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "********" if value.get_secret_value() else "(empty)"
            elif name == "auth_secret" and value is None:
                value = f"(generated: {self.data_path / SECRET_FILE})"
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        out["database_url"] = mask_url(self.effective_database_url)
        out["data_dir"] = str(self.data_path)
        out["chroma_path"] = None if self.chroma_url else str(self.effective_chroma_path)
        return out


def secret_weakness(value: str) -> str | None:
    """Why a configured secret is unfit (too short, published, a placeholder, not random)."""
    v = value.strip()
    if len(v) < MIN_SECRET_LENGTH:
        return f"too short: use at least {MIN_SECRET_LENGTH} random characters"
    lowered = v.lower()
    if v in _PUBLISHED_SECRETS or any(w in lowered for w in _PLACEHOLDER_WORDS):
        return "a published default or a placeholder"
    counts = Counter(v)
    entropy_bits = -sum(c / len(v) * math.log2(c / len(v)) for c in counts.values()) * len(v)
    steps = sum(1 for a, b in zip(v, v[1:], strict=False) if abs(ord(b) - ord(a)) == 1)
    if len(counts) < 12 or entropy_bits < 100 or steps > len(v) // 3:
        return "does not look random (too few distinct characters or a pattern)"
    return None


def generated_secret(path: Path) -> str:
    """Read the data dir's secret, creating it (mode 0600) the first time, race-free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # it must never be readable by other users of the machine
    value = path.read_text(encoding="ascii").strip()
    if len(value) < MIN_SECRET_LENGTH:
        # A file being written by another process right now: it fills in microseconds.
        import time

        time.sleep(0.05)
        value = path.read_text(encoding="ascii").strip()
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{path} holds no usable secret: delete it and start again")
    return value


def mask_url(url: str) -> str:
    """Hide the password part of a URL such as postgresql+psycopg://user:pw@host/db."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:********@{host}"
    return url


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "__root__"]
    msg = first.get("msg", "invalid value")
    msg = msg.removeprefix("Value error, ")
    if not loc:  # model-level rule; the message already names the variable
        return msg
    var = ENV_PREFIX + loc[0].upper()
    got = first.get("input")
    ctx = first.get("ctx") or {}
    if first.get("type") == "literal_error" and "expected" in ctx:
        allowed = ctx["expected"].replace("'", "")
        return f"{var}: must be one of {allowed} (got {got!r})"
    shown = (
        "" if isinstance(got, dict) or "PASSWORD" in var or "SECRET" in var else f" (got {got!r})"
    )
    return f"{var}: {msg}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raise ConfigError with one readable line."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (read once). Tests call `get_settings.cache_clear()`."""
    return load_settings()


def cache_root(settings: Settings | None = None) -> Path:
    """Where derived files go (decoded models, lookup tables): CLARA_CACHE_DIR, else
    $XDG_CACHE_HOME/clara or ~/.cache/clara. Anything here can be rebuilt from installed
    packages."""
    base = (settings or get_settings()).cache_dir
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clara"


def env_snapshot() -> dict[str, str]:
    """The CLARA_* variables of this process, for handing to child processes."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
