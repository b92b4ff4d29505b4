import pytest

from core.config import ConfigError, Settings, load_settings, mask_url, secret_weakness


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_embedded(tmp_path):
    s = load_settings()
    assert s.env == "development"
    assert s.effective_database_url == f"sqlite:///{tmp_path / '.clara' / 'clara.db'}"
    assert s.effective_chroma_path == tmp_path / ".clara" / "chroma"
    assert s.chroma_url is None and s.graph_uri is None and s.base_model is None


def test_reads_environment(monkeypatch):
    monkeypatch.setenv("CLARA_ENV", "testing")
    monkeypatch.setenv("CLARA_DATABASE_URL", "postgresql://u:pw@db:5432/clara")
    monkeypatch.setenv("CLARA_CHROMA_URL", "http://chroma:8000/")
    monkeypatch.setenv("CLARA_GRAPH_URI", "bolt://neo:7687")
    s = load_settings()
    assert s.env == "testing"
    assert s.effective_database_url == "postgresql+psycopg://u:pw@db:5432/clara"
    assert s.chroma_url == "http://chroma:8000"
    assert s.graph_uri == "bolt://neo:7687"


def test_reads_dotenv(tmp_path):
    (tmp_path / ".env").write_text("CLARA_UI_PORT=9999\n")
    assert load_settings().ui_port == 9999


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("CLARA_ENV", "staging", "CLARA_ENV: must be one of development, testing or production"),
        ("CLARA_UI_PORT", "70000", "CLARA_UI_PORT:"),
        ("CLARA_DATABASE_URL", "mysql://x", "CLARA_DATABASE_URL: must be a sqlite"),
        ("CLARA_GRAPH_URI", "http://neo", "CLARA_GRAPH_URI: must be a bolt://"),
        ("CLARA_AUTH", "maybe", "CLARA_AUTH: must be one of on or off"),
        ("CLARA_CHROMA_URL", "chroma:8000", "CLARA_CHROMA_URL: must be an http://"),
    ],
)
def test_invalid_values_give_one_line(monkeypatch, var, value, expected):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)


STRONG = "Zq3vW8pLx2Rk9TbN4mHc7YdF1sGj6QaE5uVw0XoKiBn"


def test_production_requires_an_explicit_strong_secret(monkeypatch):
    monkeypatch.setenv("CLARA_ENV", "production")
    with pytest.raises(ConfigError, match="CLARA_AUTH_SECRET is not set"):
        load_settings()
    monkeypatch.setenv("CLARA_AUTH_SECRET", "")
    with pytest.raises(ConfigError, match="CLARA_AUTH_SECRET is not set"):
        load_settings()
    monkeypatch.setenv("CLARA_AUTH_SECRET", STRONG)
    assert load_settings().env == "production"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("abc", "too short"),
        ("x" * 40, "published default or a placeholder"),
        ("change-me-clara-development-secret", "published default or a placeholder"),
        ("my-long-and-secret-value-for-the-workbench", "published default or a placeholder"),
        ("abcdefghijklmnopqrstuvwxyz0123456789", "does not look random"),
        ("ab" * 20, "does not look random"),
    ],
)
@pytest.mark.parametrize("env", ["development", "production"])
def test_weak_secrets_are_refused_in_every_mode(monkeypatch, value, why, env):
    monkeypatch.setenv("CLARA_ENV", env)
    monkeypatch.setenv("CLARA_AUTH_SECRET", value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert why in str(err.value)
    assert "secrets.token_urlsafe" in str(err.value)  # says how to make a good one
    assert value not in str(err.value)  # and never echoes the secret


def test_without_a_secret_one_is_generated_into_the_data_dir(tmp_path):
    s = load_settings(data_dir=tmp_path / "d")
    assert s.auth_secret is None
    first = s.auth_secret_value()
    path = tmp_path / "d" / "auth_secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(first) >= 32 and secret_weakness(first) is None
    assert load_settings(data_dir=tmp_path / "d").auth_secret_value() == first  # kept
    assert load_settings(data_dir=tmp_path / "e").auth_secret_value() != first  # per dir
    path.chmod(0o644)
    assert s.auth_secret_value() == first and path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("var", ["CLARA_HOST", "CLARA_CHAT_HOST"])
def test_public_bind_needs_an_explicit_secret(monkeypatch, var):
    monkeypatch.setenv(var, "0.0.0.0")
    with pytest.raises(ConfigError, match="needs an explicit CLARA_AUTH_SECRET"):
        load_settings()
    monkeypatch.setenv("CLARA_AUTH_SECRET", STRONG)
    assert load_settings().auth_secret is not None
    monkeypatch.setenv(var, "127.0.0.1")
    monkeypatch.delenv("CLARA_AUTH_SECRET")
    assert load_settings().auth_secret is None


def test_production_refuses_auth_off(monkeypatch):
    monkeypatch.setenv("CLARA_ENV", "production")
    monkeypatch.setenv("CLARA_AUTH_SECRET", STRONG)
    monkeypatch.setenv("CLARA_AUTH", "off")
    with pytest.raises(ConfigError, match="CLARA_AUTH=off is refused"):
        load_settings()


def test_masked_hides_secrets():
    s = Settings(
        auth_secret=STRONG,
        database_url="postgresql+psycopg://u:hunter2@h/db",
        graph_password="neo-pw",
    )
    shown = str(s.masked())
    assert STRONG not in shown and "hunter2" not in shown and "neo-pw" not in shown
    assert s.masked()["database_url"] == "postgresql+psycopg://u:********@h/db"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"


def test_first_start_makes_the_secret_file(tmp_path):
    from core.system import prepare

    s = load_settings(data_dir=tmp_path / "fresh", database_url=f"sqlite:///{tmp_path / 'x.db'}")
    prepare(s)
    assert (tmp_path / "fresh" / "auth_secret").stat().st_mode & 0o777 == 0o600
