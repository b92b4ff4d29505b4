"""Users: add, change role, disable or enable, reset password (admins only)."""

import pandas as pd
import streamlit as st

from core import auth
from ui import session

user = session.require_principal()
engine = session.engine()
st.title("Users")

users = auth.list_users(engine, user)
st.dataframe(
    pd.DataFrame([u.__dict__ for u in users]).drop(columns=["id"]),
    hide_index=True,
    width="stretch",
    key="admin_users_table",
)


def _run(action, *args, ok: str) -> None:  # noqa: ANN001
    try:
        action(engine, user, *args)
        st.success(ok)
    except auth.AuthError as err:
        st.error(str(err))


with st.form("admin_add_user", clear_on_submit=True):
    st.subheader("Add user")
    c1, c2, c3 = st.columns(3)
    name = c1.text_input("User name", key="admin_new_name")
    role = c2.selectbox("Role", auth.ROLES, index=auth.ROLES.index("user"), key="admin_new_role")
    password = c3.text_input("Password", type="password", key="admin_new_password")
    full_name = c1.text_input("Full name", key="admin_new_full_name")
    email = c2.text_input("E-mail", key="admin_new_email")
    if st.form_submit_button("Add user"):
        _run(auth.create_user, name, password, role, email, full_name, ok=f"Added {name}.")

st.subheader("Change a user")
names = [u.username for u in users]
target = st.selectbox("User", names, key="admin_target")
c1, c2, c3 = st.columns(3)
new_role = c1.selectbox("New role", auth.ROLES, key="admin_set_role")
if c1.button("Set role", key="admin_set_role_btn"):
    _run(auth.set_role, target, new_role, ok=f"{target} is now {new_role}.")
if c2.button("Disable", key="admin_disable_btn"):
    _run(auth.set_disabled, target, True, ok=f"{target} disabled.")
if c2.button("Enable", key="admin_enable_btn"):
    _run(auth.set_disabled, target, False, ok=f"{target} enabled.")
new_pw = c3.text_input("New password", type="password", key="admin_reset_pw")
if c3.button("Reset password", key="admin_reset_btn"):
    _run(auth.reset_password, target, new_pw, ok=f"Password of {target} changed.")
