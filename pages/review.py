"""Review: a filterable, sortable, paginated queue of samples; a card with the flagged spans
highlighted; accept / reject / edit with conflict detection; bulk decisions; charts."""

import pandas as pd
import plotly.express as px
import streamlit as st

from core.datasets.errors import DatasetError, ReviewConflict
from core.datasets.quality.reasons import ALL_REASONS, reason_label
from core.datasets.review import (
    SORTS,
    SampleFilter,
    bulk_decide,
    decide,
    edit_sample,
    highlight_html,
    list_samples,
    part_offsets,
    review_stats,
)
from core.datasets.scoring import latest_scoring_run
from core.datasets.service import list_datasets
from core.permissions import PermissionDenied
from ui import session

user = session.require_principal()
engine = session.engine()
st.title("Review")
for key, default in {"review_page": 1, "review_selected": None, "review_flash": None}.items():
    st.session_state.setdefault(key, default)

datasets = list_datasets(engine, user)
if not datasets:
    st.info("No datasets yet: create one on the Datasets page.")
    st.stop()
# Fixed slots keep the element tree stable between reruns, so open expanders stay open.
flash_slot = st.empty()
if st.session_state["review_flash"]:
    kind, msg = st.session_state["review_flash"]
    (flash_slot.warning if kind == "warning" else flash_slot.success)(msg)
    st.session_state["review_flash"] = None


def _flash(msg: str, kind: str = "success") -> None:
    st.session_state["review_flash"] = (kind, msg)
    st.rerun()


def _reset_page() -> None:
    st.session_state["review_page"] = 1
    st.session_state["review_selected"] = None


names = [d.name for d in datasets]
pending_first = sorted(
    names, key=lambda n: -next(d for d in datasets if d.name == n).counts["pending"]
)
ds_name = st.selectbox(
    "Dataset",
    names,
    index=names.index(pending_first[0]),
    key="review_dataset",
    on_change=_reset_page,
)
ds = next(d for d in datasets if d.name == ds_name)

run = latest_scoring_run(engine, user, ds.id)
progress_slot = st.container()
if run and run.active:

    @st.fragment(run_every=2)
    def scoring_progress() -> None:
        r = latest_scoring_run(engine, user, ds.id)
        if r and r.active:
            st.progress(
                r.fraction,
                text=f"Scoring: {r.done} / {r.total} (scores appear as they are written)",
            )
        else:
            st.rerun()

    with progress_slot:
        scoring_progress()

# Filters ----------------------------------------------------------------------------------
stats = review_stats(engine, user, ds.id)
with st.container(border=True):
    c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
    status = c1.multiselect(
        "Status",
        ["pending", "accepted", "rejected"],
        default=["pending"],
        key="review_status",
        on_change=_reset_page,
    )
    reason_codes = [""] + sorted(set(ALL_REASONS) | set(stats.reasons))
    reason = c2.selectbox(
        "Reason",
        reason_codes,
        key="review_reason",
        on_change=_reset_page,
        format_func=lambda r: "any" if not r else f"{reason_label(r)} ({stats.reasons.get(r, 0)})",
    )
    sources = [""] + sorted(stats.by_source)
    source = c3.selectbox(
        "Source",
        sources,
        key="review_source",
        on_change=_reset_page,
        format_func=lambda s: s or "any",
    )
    sort = c4.selectbox(
        "Sort", list(SORTS), format_func=SORTS.get, key="review_sort", on_change=_reset_page
    )
    c5, c6, c7 = st.columns([3, 3, 2])
    lo, hi = c5.slider(
        "Score", 0.0, 1.0, (0.0, 1.0), step=0.05, key="review_score", on_change=_reset_page
    )
    search = c6.text_input("Search text", key="review_search", on_change=_reset_page)
    page_size = c7.selectbox(
        "Per page", [10, 20, 50, 100], index=1, key="review_page_size", on_change=_reset_page
    )
filters = SampleFilter(
    status=status or None,
    reason=reason or None,
    source=source or None,
    min_score=lo if lo > 0 else None,
    max_score=hi if hi < 1 else None,
    search=search or None,
)

# Charts -----------------------------------------------------------------------------------
with st.expander("Charts", expanded=False):
    g1, g2 = st.columns(2)
    sh = pd.DataFrame(stats.score_histogram, columns=["from", "to", "samples"])
    g1.plotly_chart(
        px.bar(sh, x="from", y="samples", title="Score histogram").update_layout(
            bargap=0.05, height=300
        ),
        key="review_chart_scores",
    )
    rs = pd.DataFrame(
        sorted(stats.reasons.items(), key=lambda kv: -kv[1]), columns=["reason", "samples"]
    )
    rs["reason"] = rs["reason"].map(reason_label)
    g2.plotly_chart(
        px.bar(rs, x="samples", y="reason", orientation="h", title="Reasons").update_layout(
            height=300
        ),
        key="review_chart_reasons",
    )
    g3, g4 = st.columns(2)
    th = pd.DataFrame(stats.token_histogram, columns=["from", "to", "samples"])
    g3.plotly_chart(
        px.bar(th, x="from", y="samples", title="Token lengths").update_layout(height=300),
        key="review_chart_tokens",
    )
    prog = pd.DataFrame(
        [(k, v) for k, v in stats.counts.items() if k != "total"], columns=["status", "samples"]
    )
    g4.plotly_chart(
        px.pie(
            prog,
            names="status",
            values="samples",
            title=f"Review progress ({stats.counts['total']} samples)",
        ).update_layout(height=300),
        key="review_chart_progress",
    )

# Queue ------------------------------------------------------------------------------------
page_no = st.session_state["review_page"]
page = list_samples(engine, user, ds.id, filters, sort, (page_no - 1) * page_size, page_size)
n_pages = max(1, -(-page.total // page_size))
if page_no > n_pages:
    st.session_state["review_page"] = n_pages
    st.rerun()

q1, q2, q3 = st.columns([6, 1, 1])
q1.caption(f"{page.total} matching sample(s) · page {page_no} of {n_pages}")
if q2.button("◀ Prev", key="review_prev", disabled=page_no <= 1):
    st.session_state["review_page"] = page_no - 1
    st.session_state["review_selected"] = None
    st.rerun()
if q3.button("Next ▶", key="review_next", disabled=page_no >= n_pages):
    st.session_state["review_page"] = page_no + 1
    st.session_state["review_selected"] = None
    st.rerun()

if not page.items:
    st.info("Nothing matches these filters.")
else:
    event = st.dataframe(
        page.frame(),
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key=f"review_table_{ds.id}_{page_no}",
    )
    ids = [v.id for v in page.items]
    picked = event.selection.rows if event is not None else []
    if picked:
        st.session_state["review_selected"] = ids[picked[0]]
    if st.session_state["review_selected"] not in ids:
        st.session_state["review_selected"] = ids[0]
    sample = next(v for v in page.items if v.id == st.session_state["review_selected"])
    idx = ids.index(sample.id)

    # Card ---------------------------------------------------------------------------------
    with st.container(border=True):
        h1, h2, h3, h4 = st.columns([2, 2, 2, 4])
        h1.markdown(f"**Sample {sample.id}** · {sample.kind}")
        h2.markdown(f"Status: **{sample.status}**")
        h3.markdown("Score: " + ("—" if sample.score is None else f"**{sample.score:.2f}**"))
        h4.markdown("Reasons: " + (", ".join(reason_label(r) for r in sample.reasons) or "none"))
        spans = [tuple(sp) for sp in sample.flagged_spans]
        for role, content, offset in part_offsets(sample):
            if sample.kind != "text":
                st.markdown(f"**{role}**")
            st.html(
                f'<div style="white-space: normal; line-height: 1.5">'
                f"{highlight_html(content, spans, offset)}</div>"
            )
        if sample.duplicate_of:
            st.caption(f"Duplicate of sample {sample.duplicate_of}")
        with st.expander("Provenance and signals"):
            st.json(
                {
                    "provenance": sample.provenance,
                    "metadata": sample.metadata,
                    "signals": sample.signals,
                    "reviewed_by": sample.reviewed_by,
                    "edited_by": sample.edited_by,
                    "edited_at": str(sample.edited_at) if sample.edited_at else None,
                },
                expanded=False,
            )
        if sample.original:
            with st.expander(
                f"Original (edited by {sample.edited_by} at {sample.edited_at:%Y-%m-%d %H:%M} UTC)"
            ):
                st.json(sample.original)

    def _decide(decision: str) -> None:
        try:
            decide(engine, user, sample.id, decision, sample.row_version)
            st.session_state["review_selected"] = ids[idx + 1] if idx + 1 < len(ids) else None
            _flash(f"Sample {sample.id} {decision}.")
        except ReviewConflict as err:
            _flash(str(err), "warning")
        except (DatasetError, PermissionDenied) as err:
            st.error(str(err))

    with st.form(f"review_decide_form_{sample.id}", clear_on_submit=True):
        f1, f2, f3, f4 = st.columns([3, 1, 1, 1])
        shortcut = f1.text_input(
            "Keyboard: type a (accept), r (reject), p (pending) or n (next), then Enter",
            key=f"review_shortcut_{sample.id}",
            max_chars=1,
        )
        apply_ = f2.form_submit_button("Apply ⏎")
        accept_ = f3.form_submit_button("Accept", type="primary")
        reject_ = f4.form_submit_button("Reject")
    key = (shortcut or "").strip().lower()
    if accept_ or (apply_ and key == "a"):
        _decide("accepted")
    elif reject_ or (apply_ and key == "r"):
        _decide("rejected")
    elif apply_ and key == "p":
        _decide("pending")
    elif apply_ and key == "n":
        st.session_state["review_selected"] = ids[idx + 1] if idx + 1 < len(ids) else None
        st.rerun()
    elif apply_ and key:
        st.warning(f"Unknown shortcut {key!r}: use a, r, p or n.")

    with st.expander("Edit this sample"), st.form(f"review_edit_form_{sample.id}"):
        if sample.kind == "text":
            new_text = st.text_area(
                "Text", sample.text or "", height=250, key=f"review_edit_text_{sample.id}"
            )
            new_msgs, new_system = None, None
        else:
            new_text = None
            new_system = st.text_area(
                "System prompt",
                sample.system or "",
                height=68,
                key=f"review_edit_system_{sample.id}",
            )
            new_msgs = []
            for i, m in enumerate(sample.messages or []):
                content = st.text_area(
                    m["role"], m["content"], height=120, key=f"review_edit_msg_{sample.id}_{i}"
                )
                new_msgs.append({"role": m["role"], "content": content})
            if sample.kind == "pref":
                new_text = st.text_area(
                    "rejected", sample.text or "", height=120, key=f"review_edit_rej_{sample.id}"
                )
        e1, e2 = st.columns(2)
        save = e1.form_submit_button("Save edit")
        save_accept = e2.form_submit_button("Save and accept")
    if save or save_accept:
        try:
            edit_sample(
                engine,
                user,
                sample.id,
                sample.row_version,
                text=new_text,
                messages=new_msgs,
                system=new_system,
                decision="accepted" if save_accept else None,
            )
            _flash(f"Sample {sample.id} edited (the original is kept).")
        except ReviewConflict as err:
            _flash(str(err), "warning")
        except (DatasetError, PermissionDenied) as err:
            st.error(str(err))

# Bulk -------------------------------------------------------------------------------------
with st.expander(f"Bulk decision for all {page.total} matching sample(s)"):
    st.caption("Applies to every sample matching the filters above, not only this page.")
    confirm = st.checkbox(
        f"Yes, change all {page.total} matching sample(s)", key="review_bulk_confirm"
    )
    b1, b2 = st.columns(2)
    for col, decision, label in (
        (b1, "accepted", "Accept all matching"),
        (b2, "rejected", "Reject all matching"),
    ):
        if col.button(label, key=f"review_bulk_{decision}", disabled=not confirm):
            try:
                n = bulk_decide(engine, user, ds.id, decision, filters)
                st.session_state["review_selected"] = None
                _flash(f"{n} sample(s) {decision}.")
            except (DatasetError, PermissionDenied) as err:
                st.error(str(err))
