"""Operations: the health of every store and process, the queue, the disk, and activity per
hour. Admins and auditors see it (system:health); admins may also forget processes that are
gone for good (system:maintain)."""

import plotly.express as px
import streamlit as st

from core.ops.activity import audit_activity, job_activity
from core.ops.health import health_report, process_rows, queue_rows
from core.ops.heartbeats import forget_stale_processes
from ui import session

STATUS = {"ok": ":green[ok]", "warn": ":orange[warn]", "fail": ":red[**fail**]"}

user = session.require_principal()
cfg = session.settings()
engine = session.engine()
st.title("Operations")


@st.fragment(run_every=10)
def _health() -> None:
    report = health_report(engine, user, cfg, local_gpus=False)
    st.subheader(f"Health: {STATUS[report.status]}")
    for check in report.checks:
        st.markdown(f"{STATUS[check.status]} **{check.name}**: {check.detail}")
    st.subheader("Processes")
    if report.processes:
        st.dataframe(process_rows(report.processes), hide_index=True, key="ops_processes")
    else:
        st.caption("No worker, chat or API server has registered.")
    stale = [p for p in report.processes if p.stale]
    if stale and user.can("system:maintain"):
        st.button(
            f"Forget {len(stale)} stale process(es)",
            key="ops_forget",
            help="They stopped without a clean exit; forget them once you know they are gone.",
            on_click=forget_stale_processes,
            args=(engine, user, cfg.health_stale_seconds),
        )
    st.subheader("Queue")
    st.dataframe(queue_rows(report.queue), hide_index=True, key="ops_queue")
    if report.disk:
        d = report.disk
        c1, c2, c3 = st.columns(3)
        c1.metric("Data dir", f"{d.data_dir_bytes / 1e9:.2f} GB")
        c2.metric("Free on its disk", f"{d.free_bytes / 1e9:.1f} GB")
        c3.metric("Disk size", f"{d.total_bytes / 1e9:.1f} GB")


_health()

st.subheader("Activity")
hours = st.selectbox("Hours", [24, 72, 168], key="ops_hours")
jobs = job_activity(engine, user, hours)
if jobs.empty:
    st.caption("No jobs in this window.")
else:
    st.plotly_chart(
        px.bar(
            jobs,
            x="hour",
            y="jobs",
            color="event",
            pattern_shape="kind",
            title="Jobs submitted and finished, by kind",
        ),
        key="ops_chart_jobs",
    )
audit = audit_activity(engine, user, hours)
if audit.empty:
    st.caption("No audit entries in this window.")
else:
    st.plotly_chart(
        px.bar(audit, x="hour", y="entries", color="family", title="Audit entries by area"),
        key="ops_chart_audit",
    )
