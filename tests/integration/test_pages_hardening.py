"""Pages under Streamlit's AppTest against a real database (issue 10): the Quality tab's
form with effects and reset (item 17), the Users page (items 14 and 15)."""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.datasets.scoring import score_dataset
from core.datasets.service import add_samples, create_dataset, get_dataset
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def _page(path: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("CLARA_AUTH", "off")
    from core.config import get_settings

    get_settings.cache_clear()
    st.cache_resource.clear()  # ui.session.startup() holds the previous test's engine
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.switch_page(path)
    at.run()
    assert not at.exception, at.exception
    return at


def _captions(at) -> list[str]:
    return [c.value for c in at.caption]


def _infos(at) -> list[str]:
    return [i.value for i in at.info]


def _field(elements, label: str):
    """The one widget with this label (the Quality tab's keys carry a generation)."""
    (found,) = [e for e in elements if e.label == label]
    return found


def test_quality_tab_fields_effects_save_and_reset(db_engine, admin, settings, monkeypatch):
    from core.datasets.thresholds import threshold_effects
    from tests.integration.test_datasets_thresholds import _samples

    ds = create_dataset(db_engine, admin, "faq")
    add_samples(db_engine, admin, ds.id, _samples())
    score_dataset(db_engine, admin, "faq")
    at = _page("pages/datasets.py", monkeypatch)

    # A field per threshold with the current value, not a JSON editor.
    assert not [t for t in at.text_area if t.label == "Thresholds (JSON)"]
    min_chars = _field(at.number_input, "Minimum characters")
    assert min_chars.value == 20 and min_chars.label == "Minimum characters"
    assert _field(at.number_input, "Minimum score to keep").value == 0.5
    assert _field(at.multiselect, "Personal data to flag").value == [
        "email",
        "phone",
        "iban",
    ]
    # Under each field, what it does to this dataset, computed in core.
    saved = threshold_effects(
        db_engine, admin, "faq", get_dataset(db_engine, admin, "faq").thresholds or _defaults()
    )
    flags_now = saved.fields["min_chars"].flagged
    assert f"Flags {flags_now} of 13 scored samples." in _captions(at)
    assert any(i.startswith("With the saved values: ") for i in _infos(at))

    # A new value shows its effect next to the saved one before anything is saved.
    min_chars.set_value(120)
    at.run()
    assert not at.exception, at.exception
    proposed = threshold_effects(db_engine, admin, "faq", {**_defaults(), "min_chars": 120})
    flags_new = proposed.fields["min_chars"].flagged
    assert flags_new > flags_now
    assert f"Flags {flags_new} of 13 scored samples (saved value: {flags_now})." in _captions(at)
    assert any(
        i.startswith(f"With these values: {proposed.any_flagged} of 13 scored samples flagged")
        for i in _infos(at)
    )
    assert get_dataset(db_engine, admin, "faq").thresholds is None  # nothing saved yet

    at.button(key="datasets_thresholds_save").click()
    at.run()
    assert not at.exception, at.exception
    assert get_dataset(db_engine, admin, "faq").thresholds["min_chars"] == 120
    assert "Thresholds saved; score the dataset again to apply them." in [
        s.value for s in at.success
    ]

    # An invalid value is named, and cannot be saved.
    _field(at.text_input, "Penalty overrides (reason=penalty)").set_value("kurz=0.3")
    at.run()
    assert any("unknown reason 'kurz'" in e.value for e in at.error)
    assert at.button(key="datasets_thresholds_save").disabled
    at.button(key="datasets_thresholds_discard").click()
    at.run()
    assert _field(at.text_input, "Penalty overrides (reason=penalty)").value == ""

    # Reset: back to the defaults, in the database and in the fields.
    at.button(key="datasets_thresholds_reset").click()
    at.run()
    assert not at.exception, at.exception
    assert get_dataset(db_engine, admin, "faq").thresholds is None
    assert _field(at.number_input, "Minimum characters").value == 20
    assert at.button(key="datasets_thresholds_reset").disabled  # nothing to reset now


def _defaults() -> dict:
    from core.datasets.quality.models import QualityThresholds

    return QualityThresholds().to_dict()


def _users_table(at) -> dict:
    df = at.dataframe[0].value
    return {r["username"]: r for r in df.to_dict("records")}


def test_users_table_shows_add_and_disable_at_once(db_engine, admin, settings, monkeypatch):
    at = _page("pages/admin.py", monkeypatch)
    assert set(_users_table(at)) == {"admin"}

    at.text_input(key="admin_new_name").input("ulla")
    at.text_input(key="admin_new_password").input("ulla-pass-1")
    [b for b in at.button if b.label == "Add user"][0].click()
    at.run()
    assert not at.exception, at.exception
    assert "Added ulla." in [s.value for s in at.success]
    table = _users_table(at)  # after this one rerun, not after the next click
    assert table["ulla"]["role"] == "user" and not table["ulla"]["disabled"]

    at.selectbox(key="admin_target").set_value("ulla")
    at.run()
    at.button(key="admin_disable_btn").click()
    at.run()
    assert not at.exception, at.exception
    assert "ulla disabled." in [s.value for s in at.success]
    assert _users_table(at)["ulla"]["disabled"]
    at.button(key="admin_enable_btn").click()
    at.run()
    assert not _users_table(at)["ulla"]["disabled"]


def test_new_role_preselects_the_current_role_and_admin_needs_confirmation(
    db_engine, admin, settings, monkeypatch
):
    from core.users import create_user, get_user

    create_user(db_engine, admin, "ulla", "ulla-pass-1", "user")
    create_user(db_engine, admin, "tom", "tom-pass-11", "trainer")
    at = _page("pages/admin.py", monkeypatch)

    for name, role in (("ulla", "user"), ("tom", "trainer"), ("admin", "admin")):
        at.selectbox(key="admin_target").set_value(name)
        at.run()
        assert at.selectbox(key=f"admin_set_role_{name}").value == role
        # One click changes nothing: the role shown is the role the user has.
        assert at.button(key="admin_set_role_btn").disabled

    at.selectbox(key="admin_target").set_value("ulla")
    at.run()
    at.selectbox(key="admin_set_role_ulla").set_value("analyst")
    at.run()
    at.button(key="admin_set_role_btn").click()
    at.run()
    assert get_user(db_engine, "ulla").role == "analyst"
    assert _users_table(at)["ulla"]["role"] == "analyst"

    # To admin: asked first; nothing changes until confirmed.
    at.selectbox(key="admin_set_role_ulla").set_value("admin")
    at.run()
    at.button(key="admin_set_role_btn").click()
    at.run()
    assert not at.exception, at.exception
    assert get_user(db_engine, "ulla").role == "analyst"
    assert any("Make **ulla** an admin?" in w.value for w in at.warning)
    at.button(key="admin_cancel_admin_btn").click()
    at.run()
    assert get_user(db_engine, "ulla").role == "analyst"
    assert not any("an admin?" in w.value for w in at.warning)

    at.button(key="admin_set_role_btn").click()
    at.run()
    at.button(key="admin_confirm_admin_btn").click()
    at.run()
    assert not at.exception, at.exception
    assert get_user(db_engine, "ulla").role == "admin"
    assert _users_table(at)["ulla"]["role"] == "admin"
    assert "ulla is now admin." in [s.value for s in at.success]


# Home (item 9): the database address, data dir and table counts only for admins and auditors.


def test_system_status_details_only_for_admins_and_auditors(db_engine, settings):
    from core.permissions import ROLES, Principal
    from core.system import system_status

    for role in ROLES:
        s = system_status(db_engine, Principal(username=f"{role}1", role=role), settings)
        assert s.database_ok and s.schema_current and s.environment == "testing"
        if role in ("admin", "auditor"):
            assert s.detailed and s.data_dir == str(settings.data_path)
            assert s.database_url and s.table_counts["users"] >= 1
        else:
            assert not s.detailed, role
            assert s.database_url is None and s.data_dir is None and s.data_dir_bytes is None
            assert s.schema_revision is None and s.table_counts == {}
            assert str(settings.data_path) not in repr(s)


def _home_as(db_engine, settings, monkeypatch, username, role) -> AppTest:
    from core.sessions import open_session
    from core.users import create_user, principal_for

    monkeypatch.setenv("CLARA_AUTH", "on")
    from core.config import get_settings

    get_settings.cache_clear()
    st.cache_resource.clear()
    admin = principal_for(db_engine, "admin")
    if role != "admin":
        create_user(db_engine, admin, username, f"{username}-pass-1", role)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["clara_session"] = open_session(db_engine, principal_for(db_engine, username))
    at.run()
    assert not at.exception, at.exception
    return at


def _page_text(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [e.value for e in at.error] + [w.value for w in at.warning]
    parts += [str(d.value.to_dict()) for d in at.dataframe]
    return "\n".join(parts)


@pytest.mark.parametrize("role", ["user", "trainer", "analyst"])
def test_home_hides_paths_and_tables_from_other_roles(db_engine, settings, monkeypatch, role):
    at = _home_as(db_engine, settings, monkeypatch, "someone", role)
    text = _page_text(at)
    assert "Database reachable" in text  # health: yes
    assert str(settings.data_path) not in text  # the data dir: no
    assert "clara.db" not in text and "Data dir" not in text
    assert not at.dataframe  # no table counts
    assert "dataset_samples" not in text and "audit_log" not in text


@pytest.mark.parametrize("role", ["admin", "auditor"])
def test_home_shows_details_to_admins_and_auditors(db_engine, settings, monkeypatch, role):
    name = "admin" if role == "admin" else "otto"
    at = _home_as(db_engine, settings, monkeypatch, name, role)
    text = _page_text(at)
    assert str(settings.data_path) in text and "clara.db" in text
    rows = at.dataframe[0].value
    assert "users" in set(rows["table"])
