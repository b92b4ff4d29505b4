"""Users: add, change role, disable or enable, reset password; API keys (admins only)."""

import pandas as pd
import streamlit as st

from core.api_keys import create_api_key, list_api_keys, revoke_api_key
from core.errors import ClaraError
from core.permissions import ROLES
from core.users import create_user, list_users, reset_password, set_disabled, set_role
from ui import session

user = session.require_principal()
engine = session.engine()
st.title("Users")
st.session_state.setdefault("admin_flash", None)
st.session_state.setdefault("admin_confirm_admin", None)  # user name awaiting confirmation
st.session_state.setdefault("admin_new_key", None)  # (name, key): shown once, then dropped

# Every action reruns the page (see _run), so the table below always shows its result.
flash_slot = st.empty()
if st.session_state["admin_flash"]:
    flash_slot.success(st.session_state["admin_flash"])
    st.session_state["admin_flash"] = None

users = list_users(engine, user)
st.dataframe(
    pd.DataFrame([u.__dict__ for u in users]).drop(columns=["id"]),
    hide_index=True,
    width="stretch",
    key="admin_users_table",
)


def _run(action, *args, ok: str) -> None:
    """Do it, then rerun at once: the table above was drawn before the action."""
    try:
        action(engine, user, *args)
    except ClaraError as err:
        st.error(str(err))
        return
    st.session_state["admin_flash"] = ok
    st.session_state["admin_confirm_admin"] = None
    st.rerun()


with st.form("admin_add_user", clear_on_submit=True):
    st.subheader("Add user")
    c1, c2, c3 = st.columns(3)
    name = c1.text_input("User name", key="admin_new_name")
    role = c2.selectbox("Role", ROLES, index=ROLES.index("user"), key="admin_new_role")
    password = c3.text_input("Password", type="password", key="admin_new_password")
    full_name = c1.text_input("Full name", key="admin_new_full_name")
    email = c2.text_input("E-mail", key="admin_new_email")
    if st.form_submit_button("Add user"):
        _run(create_user, name, password, role, email, full_name, ok=f"Added {name}.")

st.subheader("Change a user")
by_name = {u.username: u for u in users}
target = st.selectbox("User", list(by_name), key="admin_target")
current = by_name[target]
st.caption(f"{target} is {current.role}" + (", disabled." if current.disabled else ", active."))
c1, c2, c3 = st.columns(3)
# The user's own role is preselected (one key per user, so switching users shows theirs):
# nothing changes unless a different role is chosen on purpose.
new_role = c1.selectbox(
    "New role", ROLES, index=ROLES.index(current.role), key=f"admin_set_role_{target}"
)
if c1.button("Set role", key="admin_set_role_btn", disabled=new_role == current.role):
    if new_role == "admin":
        st.session_state["admin_confirm_admin"] = target  # asked below, not done yet
    else:
        _run(set_role, target, new_role, ok=f"{target} is now {new_role}.")
if c2.button("Disable", key="admin_disable_btn", disabled=current.disabled):
    _run(set_disabled, target, True, ok=f"{target} disabled.")
if c2.button("Enable", key="admin_enable_btn", disabled=not current.disabled):
    _run(set_disabled, target, False, ok=f"{target} enabled.")
new_pw = c3.text_input("New password", type="password", key="admin_reset_pw")
if c3.button("Reset password", key="admin_reset_btn"):
    _run(reset_password, target, new_pw, ok=f"Password of {target} changed.")

pending = st.session_state["admin_confirm_admin"]
if pending is not None:
    if pending != target or new_role != "admin":
        st.session_state["admin_confirm_admin"] = None  # the choice changed: ask again
    else:
        with st.container(border=True):
            st.warning(
                f"Make **{pending}** an admin? Admins may do everything: manage users, "
                "read the audit log, delete adapters and documents."
            )
            b1, b2 = st.columns(2)
            if b1.button(f"Yes, make {pending} an admin", key="admin_confirm_admin_btn"):
                _run(set_role, pending, "admin", ok=f"{pending} is now admin.")
            if b2.button("Cancel", key="admin_cancel_admin_btn"):
                st.session_state["admin_confirm_admin"] = None
                st.rerun()

st.subheader("API keys")
st.caption(
    "Personal keys for the HTTP API (`Authorization: Bearer <key>`). A key acts as its user "
    "with the user's current role; only its hash is stored, so it is shown once."
)
new_key = st.session_state["admin_new_key"]
if new_key is not None:
    st.success(f"API key {new_key[0]!r} created. Copy it now: it is not shown again.")
    st.code(new_key[1], language=None)
    st.session_state["admin_new_key"] = None
keys = list_api_keys(engine, user, every_user=True)
if keys:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "id": k.id,
                    "user": k.username,
                    "name": k.name,
                    "prefix": k.prefix,
                    "status": k.status,
                    "created": k.created_at,
                    "expires": k.expires_at,
                    "last used": k.last_used_at,
                }
                for k in keys
            ]
        ),
        hide_index=True,
        width="stretch",
        key="admin_keys_table",
    )
else:
    st.caption("No API keys yet.")
with st.form("admin_add_key", clear_on_submit=True):
    c1, c2, c3 = st.columns(3)
    key_user = c1.selectbox("For user", list(by_name), key="admin_key_user")
    key_name = c2.text_input("Key name", placeholder="ci-pipeline", key="admin_key_name")
    key_expires = c3.text_input("Expires after", value="90d", key="admin_key_expires")
    if st.form_submit_button("Create API key"):
        try:
            info, secret = create_api_key(
                engine, user, key_name, expires=key_expires, username=key_user
            )
        except ClaraError as err:
            st.error(str(err))
        else:
            st.session_state["admin_new_key"] = (info.name, secret)
            st.rerun()
live = [k for k in keys if k.status == "active"]
if live:
    c1, c2 = st.columns([3, 1])
    labels = {f"{k.id}: {k.username} / {k.name} ({k.prefix})": k.id for k in live}
    chosen = c1.selectbox("Revoke key", list(labels), key="admin_revoke_key")
    if c2.button("Revoke", key="admin_revoke_key_btn"):
        _run(revoke_api_key, labels[chosen], ok=f"API key {labels[chosen]} revoked.")
