"""Audit log: newest first, filtered and paginated in the database."""

import streamlit as st

from core.audit import read_audit_log
from ui import session

PAGE_SIZE = 50
user = session.require_principal()
st.title("Audit log")

c1, c2, c3 = st.columns(3)
action = c1.text_input("Action starts with", key="audit_action", placeholder="users.")
actor = c2.text_input("User", key="audit_actor")
page_no = c3.number_input("Page", min_value=1, value=1, step=1, key="audit_page")

result = read_audit_log(
    session.engine(),
    user,
    offset=(int(page_no) - 1) * PAGE_SIZE,
    limit=PAGE_SIZE,
    action_prefix=action or None,
    user=actor or None,
)
pages = max(1, -(-result.total // PAGE_SIZE))
st.caption(f"{result.total} entries · page {int(page_no)} of {pages}")
st.dataframe(result.rows, hide_index=True, width="stretch", key="audit_table")
