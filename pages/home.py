"""Home: who is logged in and whether the system is healthy (details for admins and
auditors only: core.system decides)."""

import pandas as pd
import streamlit as st

from core.permissions import permissions_of
from core.system import system_status
from ui import session

user = session.require_principal()
status = system_status(session.engine(), user, session.settings())

st.title("CLARA Workbench")
st.caption("Corpus → datasets → LoRA adapters → chat, on your own machine.")

st.subheader("System status")
if status.detailed:
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Database", "reachable" if status.database_ok else "unreachable")
    c2.metric("Environment", status.environment)
    c3.metric("Schema", status.schema_revision or "-")
    c4.metric("Data dir size", f"{(status.data_dir_bytes or 0) / 1e6:.1f} MB")
else:
    c1, c2 = st.columns(2)
    c1.metric("Database", "reachable" if status.database_ok else "unreachable")
    c2.metric("Environment", status.environment)
    st.caption("Database address, data directory and tables are shown to admins and auditors.")

if not status.database_ok:
    if status.detailed:
        st.error(f"Database problem: {status.database_error}")
    else:
        st.error("The database cannot be reached: please tell an administrator.")
if status.database_ok and not status.schema_current:
    if status.detailed:
        st.warning(
            f"Schema {status.schema_revision} is behind {status.schema_head}: "
            "run `clara db upgrade`."
        )
    else:
        st.warning("The database needs an upgrade: please tell an administrator.")

if status.detailed:
    st.write(
        f"**Database:** `{status.database_url}`  \n**Data dir:** `{status.data_dir}`  \n"
        f"**Authentication:** {'on' if status.auth_enabled else 'off'}"
    )
    st.dataframe(
        pd.DataFrame(sorted(status.table_counts.items()), columns=["table", "rows"]),
        hide_index=True,
        key="home_table_counts",
    )

with st.expander(f"Your role: {user.role}"):
    st.write(", ".join(permissions_of(user.role)))
