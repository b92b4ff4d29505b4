import pytest

from core.config import ConfigError, Settings, load_settings, mask_url


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


def test_production_refuses_default_or_empty_secret(monkeypatch):
    monkeypatch.setenv("CLARA_ENV", "production")
    with pytest.raises(ConfigError, match="CLARA_AUTH_SECRET"):
        load_settings()
    monkeypatch.setenv("CLARA_AUTH_SECRET", "")
    with pytest.raises(ConfigError, match="CLARA_AUTH_SECRET"):
        load_settings()
    monkeypatch.setenv("CLARA_AUTH_SECRET", "x" * 40)
    assert load_settings().env == "production"


def test_production_refuses_auth_off(monkeypatch):
    monkeypatch.setenv("CLARA_ENV", "production")
    monkeypatch.setenv("CLARA_AUTH_SECRET", "x" * 40)
    monkeypatch.setenv("CLARA_AUTH", "off")
    with pytest.raises(ConfigError, match="CLARA_AUTH=off is refused"):
        load_settings()


def test_masked_hides_secrets():
    s = Settings(
        auth_secret="supersecretvalue",
        database_url="postgresql+psycopg://u:hunter2@h/db",
        graph_password="neo-pw",
    )
    shown = str(s.masked())
    assert "supersecretvalue" not in shown and "hunter2" not in shown and "neo-pw" not in shown
    assert s.masked()["database_url"] == "postgresql+psycopg://u:********@h/db"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"
