"""Users: add, change role, disable or enable, reset password (admins only)."""

import pandas as pd
import streamlit as st

from core.permissions import ROLES, AuthError
from core.users import create_user, list_users, reset_password, set_disabled, set_role
from ui import session

user = session.require_principal()
engine = session.engine()
st.title("Users")
st.session_state.setdefault("admin_flash", None)
st.session_state.setdefault("admin_confirm_admin", None)  # user name awaiting confirmation

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
    except AuthError as err:
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
