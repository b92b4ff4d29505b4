"""Datasets: list with counts and quality, create, build from the corpus selection or a saved
search through templates, import files, score, freeze versions, diff, export and download."""

import pandas as pd
import streamlit as st

from core.corpus.search import list_saved_searches
from core.datasets.builder import (
    BUILTIN_TEMPLATES,
    PLACEHOLDERS,
    SampleTemplate,
    build_from_documents,
    build_from_saved_search,
)
from core.datasets.errors import DatasetError, ImportFailed
from core.datasets.export import EXPORT_FORMATS, FILE_TYPES, export_version
from core.datasets.importers import FORMATS, import_upload
from core.datasets.scoring import latest_scoring_run, start_scoring
from core.datasets.service import (
    create_dataset,
    get_dataset,
    list_datasets,
    reset_thresholds,
    set_thresholds,
    thresholds_for,
)
from core.datasets.thresholds import (
    GROUPS,
    field_value,
    format_text,
    parse_text,
    threshold_effects,
    threshold_fields,
    with_field_value,
)
from core.datasets.versions import diff_versions, freeze, list_versions
from core.permissions import PermissionDenied
from ui import session

user = session.require_principal()
engine = session.engine()
st.title("Datasets")
st.session_state.setdefault("selection_documents", [])
st.session_state.setdefault("datasets_selected", None)
st.session_state.setdefault("datasets_flash", None)

# A fixed slot keeps the element tree stable between reruns, so open expanders stay open.
flash_slot = st.empty()
if st.session_state["datasets_flash"]:
    flash_slot.success(st.session_state["datasets_flash"])
    st.session_state["datasets_flash"] = None


def _flash(msg: str) -> None:
    st.session_state["datasets_flash"] = msg
    st.rerun()


datasets = list_datasets(engine, user)
PAGE = 20
if datasets:
    n_pages = (len(datasets) - 1) // PAGE + 1
    page_no = st.number_input("Page", 1, n_pages, 1, key="datasets_list_page") if n_pages > 1 else 1
    shown = datasets[(page_no - 1) * PAGE : page_no * PAGE]
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "name": d.name,
                    "kind": d.kind,
                    "samples": d.counts["total"],
                    "pending": d.counts["pending"],
                    "accepted": d.counts["accepted"],
                    "rejected": d.counts["rejected"],
                    "scored": d.scored,
                    "mean score": d.mean_score,
                    "versions": d.versions,
                    "updated": d.updated_at,
                }
                for d in shown
            ]
        ),
        hide_index=True,
        width="stretch",
        key="datasets_table",
    )
else:
    st.info("No datasets yet: create one below.")

with (
    st.expander("Create a dataset", expanded=not datasets),
    st.form("datasets_create_form", clear_on_submit=True),
):
    c1, c2 = st.columns([1, 2])
    new_name = c1.text_input(
        "Name", key="datasets_new_name", help="letters, digits, '.', '_' or '-'"
    )
    new_desc = c2.text_input("Description", key="datasets_new_desc")
    if st.form_submit_button("Create dataset"):
        try:
            info = create_dataset(engine, user, new_name, new_desc)
            st.session_state["datasets_selected"] = info.name
            _flash(f"Created dataset {info.name}.")
        except (DatasetError, PermissionDenied) as err:
            st.error(str(err))

if not datasets:
    st.stop()

names = [d.name for d in datasets]
if st.session_state["datasets_selected"] not in names:
    st.session_state["datasets_selected"] = names[0]
name = st.selectbox("Dataset", names, key="datasets_selected")
ds = next(d for d in datasets if d.name == name)
c = st.columns(5)
c[0].metric("Samples", ds.counts["total"])
c[1].metric("Pending", ds.counts["pending"])
c[2].metric("Accepted", ds.counts["accepted"])
c[3].metric("Rejected", ds.counts["rejected"])
c[4].metric("Mean score", "-" if ds.mean_score is None else f"{ds.mean_score:.2f}")

run = latest_scoring_run(engine, user, ds.id)


@st.fragment(run_every=2 if run and run.active else None)
def scoring_status() -> None:
    r = latest_scoring_run(engine, user, ds.id)
    if r is None:
        st.caption("Not scored yet.")
    elif r.status == "queued":
        job = f" (job {r.job_id})" if r.job_id else ""
        st.progress(0.0, text=f"Scoring run {r.id}{job} waits for a worker: 0 / {r.total} samples")
    elif r.active:
        job = f", job {r.job_id}" if r.job_id else ""
        st.progress(r.fraction, text=f"Scoring run {r.id}{job}: {r.done} / {r.total} samples")
    elif r.status == "failed":
        st.error(f"Scoring run {r.id} failed: {r.error}")
    else:
        st.success(
            f"Scoring run {r.id} {r.status}: {r.done} sample(s) scored, finished "
            f"{r.finished_at:%Y-%m-%d %H:%M:%S} UTC."
        )
    if run and run.active and r is not None and not r.active:
        st.rerun()  # refresh the counts above once the run is over


scoring_status()
if st.button(
    "Score dataset", key="datasets_score_btn", type="primary", disabled=bool(run and run.active)
):
    try:
        start_scoring(engine, user, ds.id)
        st.rerun()
    except (DatasetError, PermissionDenied) as err:
        st.error(str(err))

tab_add, tab_quality, tab_versions, tab_export = st.tabs(
    ["Add samples", "Quality", "Versions", "Export"]
)

with tab_add:
    source = st.radio(
        "Source",
        ["Corpus selection", "Saved search", "Import a file"],
        horizontal=True,
        key="datasets_source",
    )
    if source in ("Corpus selection", "Saved search"):
        base = st.selectbox(
            "Template", list(BUILTIN_TEMPLATES), index=2, key="datasets_template_base"
        )
        t = BUILTIN_TEMPLATES[base]
        kind = st.radio(
            "Sample kind",
            ["chat", "text"],
            horizontal=True,
            index=0 if t.kind == "chat" else 1,
            key=f"datasets_tpl_kind_{base}",
        )
        if kind == "text":
            tpl_text = st.text_area("Text", t.text, key=f"datasets_tpl_text_{base}")
            fields = {"text": tpl_text}
        else:
            tpl_system = st.text_input(
                "System prompt (optional)", t.system or "", key=f"datasets_tpl_system_{base}"
            )
            tpl_user = st.text_area("User", t.user, height=70, key=f"datasets_tpl_user_{base}")
            tpl_assistant = st.text_area(
                "Assistant", t.assistant, height=70, key=f"datasets_tpl_assistant_{base}"
            )
            fields = {"system": tpl_system or None, "user": tpl_user, "assistant": tpl_assistant}
        st.caption("Placeholders: " + ", ".join(f"`{{{p}}}` {d}" for p, d in PLACEHOLDERS.items()))
        c1, c2 = st.columns(2)
        unit = c1.radio(
            "Unit",
            ["document", "chunk"],
            horizontal=True,
            key="datasets_unit",
            help="whole documents (split when longer than the limit) or the "
            "corpus's retrieval chunks",
        )
        max_tokens = c2.number_input(
            "Max tokens per sample", 16, 32768, 1024, step=128, key="datasets_max_tokens"
        )
        try:
            unchanged = kind == t.kind and all(getattr(t, k) == v for k, v in fields.items())
            template = SampleTemplate(name=base if unchanged else "custom", kind=kind, **fields)
        except DatasetError as err:
            st.error(str(err))
            template = None
        if source == "Corpus selection":
            selected = list(st.session_state.get("selection_documents") or [])
            st.write(f"{len(selected)} document(s) selected on the Corpus page.")
            if selected:
                st.caption(", ".join(selected[:20]) + (" ..." if len(selected) > 20 else ""))
            if st.button(
                "Build samples from selection",
                key="datasets_build_selection",
                disabled=not selected or template is None,
            ):
                try:
                    rep = build_from_documents(
                        engine, user, ds.id, selected, template, unit, int(max_tokens)
                    )
                    _flash(
                        f"Added {rep.added} sample(s) from {rep.documents} document(s) "
                        f"({rep.split_documents} split, {rep.skipped_existing} already there"
                        + (f"; not found: {', '.join(rep.missing)}" if rep.missing else "")
                        + ")."
                    )
                except (DatasetError, PermissionDenied) as err:
                    st.error(str(err))
        else:
            searches = list_saved_searches(engine, user)
            if not searches:
                st.info("No saved searches yet: save one on the Corpus page.")
            else:
                s_name = st.selectbox(
                    "Saved search", [s.name for s in searches], key="datasets_saved_search"
                )
                k = st.number_input("Top k documents", 1, 1000, 10, key="datasets_search_k")
                if st.button(
                    "Build samples from saved search",
                    key="datasets_build_search",
                    disabled=template is None,
                ):
                    try:
                        rep = build_from_saved_search(
                            engine, user, ds.id, s_name, template, unit, int(max_tokens), int(k)
                        )
                        _flash(f"Added {rep.added} sample(s) from {rep.documents} document(s).")
                    except (DatasetError, PermissionDenied) as err:
                        st.error(str(err))
    else:
        up = st.file_uploader(
            "JSONL, JSON, CSV or Parquet",
            type=["jsonl", "json", "csv", "parquet"],
            key="datasets_upload",
        )
        fmt_label = st.selectbox(
            "Format",
            ["detect automatically", *FORMATS],
            key="datasets_import_format",
            help="; ".join(FORMATS.values()),
        )
        skip_bad = st.checkbox("Skip bad rows (import the good ones)", key="datasets_skip_bad")
        if st.button("Import", key="datasets_import_btn", disabled=up is None):
            fmt = None if fmt_label == "detect automatically" else fmt_label
            try:
                rep = import_upload(engine, user, ds.id, up.name, up.getvalue(), fmt, skip_bad)
                _flash(
                    f"Imported {rep.imported} sample(s) from {rep.file} (format {rep.format})"
                    + (f"; skipped {rep.skipped} bad row(s)." if rep.skipped else ".")
                )
            except ImportFailed as err:
                st.error(
                    f"{len(err.errors)} bad row(s), {err.good_rows} good: nothing was "
                    "imported. Fix the file, or tick “Skip bad rows” to import the good "
                    "rows only."
                )
                st.dataframe(
                    pd.DataFrame([e.__dict__ for e in err.errors[:1000]]),
                    hide_index=True,
                    key="datasets_import_errors",
                )
            except (DatasetError, PermissionDenied) as err:
                st.error(str(err))


@st.fragment
def quality_thresholds() -> None:
    """Every threshold as a field with its saved value and, under it, what it does to this
    dataset (counted in core from the stored signals). A fragment: editing a field reruns
    only this tab."""
    saved = thresholds_for(engine, user, ds.id)
    # The fields' keys carry a generation: Discard and Reset start a new one, so the browser
    # shows fresh fields with the saved values (it keeps a widget's value while its key lives).
    gen_key = f"datasets_thr_gen_{ds.id}"
    gen = st.session_state.setdefault(gen_key, 0)
    prefix = f"datasets_thr_{ds.id}_{gen}_"
    may_change = user.can("datasets:create")
    st.caption(
        "Stored with the dataset and written into every version's manifest; the defaults "
        "come from the quality library. Under each field: how many samples of this dataset "
        "it flags with the value shown, from the signals of the last scoring run."
    )
    summary = st.empty()
    proposed = dict(saved)
    slots = {}
    problems: list[str] = []
    fields = threshold_fields(saved)
    for group in GROUPS:
        group_fields = [f for f in fields if f.group == group]
        if not group_fields:
            continue
        with st.expander(group, expanded=group in ("Length", "Decision")):
            cols = st.columns(2)
            for i, f in enumerate(group_fields):
                value = field_value(saved, f.key)
                key = prefix + f.key
                with cols[i % 2]:
                    if f.kind == "int":
                        new = st.number_input(
                            f.label,
                            min_value=None if f.minimum is None else int(f.minimum),
                            value=int(value),
                            step=1,
                            key=key,
                            help=f.help or None,
                        )
                    elif f.kind == "float":
                        new = st.number_input(
                            f.label,
                            min_value=None if f.minimum is None else float(f.minimum),
                            max_value=None if f.maximum is None else float(f.maximum),
                            value=float(value),
                            step=float(f.step or 0.01),
                            format="%g",
                            key=key,
                            help=f.help or None,
                        )
                    elif f.kind == "bool":
                        new = st.checkbox(f.label, value=bool(value), key=key, help=f.help or None)
                    elif f.kind == "choice":
                        new = st.selectbox(
                            f.label,
                            f.options,
                            index=f.options.index(value),
                            key=key,
                            help=f.help or None,
                        )
                    elif f.options:
                        new = st.multiselect(
                            f.label, f.options, default=value, key=key, help=f.help or None
                        )
                    else:
                        text = st.text_input(
                            f.label, format_text(f, value), key=key, help=f.help or None
                        )
                        try:
                            new = parse_text(f, text)
                        except DatasetError as err:
                            problems.append(str(err))
                            new = value
                    slots[f.key] = st.empty()
                proposed = with_field_value(proposed, f.key, new)

    changed = proposed != saved or bool(problems)  # saved values are always valid
    try:
        eff = threshold_effects(engine, user, ds.id, proposed)
    except DatasetError as err:
        problems.append(str(err))
        eff = None
    for msg in problems:
        summary.error(msg)
    if eff is not None:
        for key, slot in slots.items():
            slot.caption(eff.describe(key))
        if not problems:
            if not eff.scored:
                summary.info(
                    "Not scored yet: score the dataset to see how many samples each "
                    "threshold flags."
                )
            else:
                text = (
                    f"With {'these' if changed else 'the saved'} values: "
                    f"{eff.any_flagged} of {eff.scored} scored samples flagged, "
                    f"{eff.below_min_score} below the minimum score"
                )
                if changed:
                    text += (
                        f" (saved values: {eff.any_flagged_saved} flagged, "
                        f"{eff.below_min_score_saved} below)"
                    )
                summary.info(text + ".")

    def _forget_fields() -> None:
        st.session_state[gen_key] = gen + 1

    c1, c2, c3 = st.columns(3)
    if c1.button(
        "Save thresholds",
        key="datasets_thresholds_save",
        type="primary",
        disabled=not may_change or not changed or bool(problems),
    ):
        try:
            set_thresholds(engine, user, ds.id, proposed)
            _flash("Thresholds saved; score the dataset again to apply them.")
        except (DatasetError, PermissionDenied) as err:
            st.error(str(err))
    if c2.button("Discard changes", key="datasets_thresholds_discard", disabled=not changed):
        _forget_fields()
        st.rerun()
    if c3.button(
        "Reset to defaults",
        key="datasets_thresholds_reset",
        disabled=not may_change or get_dataset(engine, user, ds.id).thresholds is None,
        help="Back to the quality library's defaults (saved at once).",
    ):
        try:
            reset_thresholds(engine, user, ds.id)
            _forget_fields()
            _flash("Thresholds reset to the defaults; score the dataset again to apply them.")
        except (DatasetError, PermissionDenied) as err:
            st.error(str(err))


with tab_quality:
    quality_thresholds()

with tab_versions:
    with st.form("datasets_freeze_form"):
        c1, c2, c3 = st.columns(3)
        ratio = c1.number_input("Eval share", 0.0, 0.9, 0.1, step=0.05, key="datasets_eval_ratio")
        seed = c2.number_input("Seed", 0, 2**31 - 1, 42, key="datasets_seed")
        label = c3.text_input("Label (optional)", key="datasets_version_label")
        if st.form_submit_button(f"Freeze {ds.counts['accepted']} accepted sample(s)"):
            try:
                v = freeze(engine, user, ds.id, float(ratio), int(seed), label or None)
                _flash(f"Froze {v.ref}: {v.counts['train']} train, {v.counts['eval']} eval.")
            except (DatasetError, PermissionDenied) as err:
                st.error(str(err))
    versions = list_versions(engine, user, ds.id)
    if versions:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "version": v.ref,
                        "id": v.id,
                        "label": v.name,
                        "train": v.counts["train"],
                        "eval": v.counts["eval"],
                        "created": v.created_at,
                        "by": v.created_by,
                        "manifest sha256": v.manifest_sha256,
                    }
                    for v in versions
                ]
            ),
            hide_index=True,
            width="stretch",
            key="datasets_versions_table",
        )
        refs = [v.ref for v in versions]
        shown_ref = st.selectbox("Manifest of", refs, key="datasets_manifest_ref")
        st.json(next(v for v in versions if v.ref == shown_ref).manifest, expanded=False)
        if len(refs) > 1:
            c1, c2 = st.columns(2)
            old = c1.selectbox("Diff from", refs, index=1, key="datasets_diff_old")
            new = c2.selectbox("to", refs, index=0, key="datasets_diff_new")
            if st.button("Diff", key="datasets_diff_btn"):
                d = diff_versions(engine, user, old, new)
                st.write(
                    f"{len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} "
                    f"changed, {d.unchanged} unchanged"
                )
                st.json(d.model_dump(), expanded=False)
    else:
        st.caption("No versions yet.")

with tab_export:
    versions = list_versions(engine, user, ds.id)
    if not versions:
        st.caption("Freeze a version first.")
    else:
        c1, c2, c3 = st.columns(3)
        ref = c1.selectbox("Version", [v.ref for v in versions], key="datasets_export_ref")
        fmt = c2.selectbox("Format", EXPORT_FORMATS, key="datasets_export_format")
        ftype = c3.selectbox("File type", FILE_TYPES, key="datasets_export_type")
        if st.button("Export", key="datasets_export_btn"):
            try:
                st.session_state["datasets_export"] = export_version(engine, user, ref, fmt, ftype)
            except (DatasetError, PermissionDenied) as err:
                st.error(str(err))
        exp = st.session_state.get("datasets_export")
        if exp is not None and exp.version in [v.ref for v in versions]:
            st.success(f"Exported {exp.version} as {exp.format}/{exp.file_type} to {exp.path}")
            names = [*exp.files, "dataset_info.json", "axolotl.yaml"]
            cols = st.columns(len(names))
            for col, fname in zip(cols, names, strict=True):
                col.download_button(
                    f"Download {fname}",
                    (exp.path / fname).read_bytes(),
                    file_name=f"{exp.version.replace('@', '-')}-{fname}",
                    key=f"datasets_download_{fname}",
                )
