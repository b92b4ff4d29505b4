"""Training: a spec form generated from presets (or YAML), the job queue with live charts,
log tail, cancel and retry, and the adapter registry with lineage and side-by-side metrics."""

import pandas as pd
import plotly.express as px
import streamlit as st

from core.datasets.versions import list_versions
from core.errors import ClaraError
from core.learning.cycles import get_policy, list_cycles, new_samples, set_policy, start_cycle
from core.learning.lines import activate, create_line, get_line, list_lines, rollback
from core.learning.policy import POLICY_TEMPLATE, parse_policy_text
from core.permissions import PermissionDenied
from core.training.adapters import AdapterNotFound, lineage, list_adapters
from core.training.demo_model import demo_build_status
from core.training.forms import (
    METHODS,
    TOP,
    FormValues,
    field_value,
    form_defaults,
    form_errors,
    spec_from_form,
)
from core.training.jobs import (
    DEMO,
    TrainingError,
    cancel_job,
    count_jobs,
    get_job,
    job_log_tail,
    job_metrics,
    job_progress,
    list_jobs,
    retry_job,
    submit_job,
    waiting_reason,
)
from core.training.spec import PRESETS, SpecError
from ui import session

user = session.require_principal()
engine = session.engine()

SECTION_TITLES = (
    ("peft", "LoRA (PEFT LoraConfig)"),
    ("quantization", "Quantization (bitsandbytes)"),
    ("trainer", "Trainer (TRL SFTConfig)"),
)
TABS = ["New job", "Jobs", "Adapters", "Lines"]
COLUMNS = [
    "id",
    "name",
    "method",
    "state",
    "step",
    "max_steps",
    "attempts",
    "owner",
    "created_at",
    "error",
]
GROUPS = (
    ("Queued", ["queued"]),
    ("Running", ["running"]),
    ("Finished", ["succeeded", "failed", "cancelled"]),
)


def _field_errors(field: str) -> None:
    """Show the validation error of one field right under its widget."""
    msg = st.session_state["training_errors"].get(field)
    if msg:
        st.error(msg, icon=":material/error:")


def _load_preset() -> None:
    """Fill every form widget from the chosen preset (its values are the form's defaults)."""
    defaults = form_defaults(st.session_state["training_preset"])
    st.session_state["training_f_method"] = defaults.method
    for field, value in defaults.values.items():
        st.session_state[f"training_f_{field}"] = value
    st.session_state["training_form_fields"] = defaults.fields
    st.session_state["training_yaml"] = defaults.yaml
    st.session_state["training_errors"] = {}


def _widget(section: str, key: str):
    """One input, its kind derived from the value the preset gives the field."""
    wkey = f"training_f_{section}.{key}"
    value = st.session_state.get(wkey)
    label = key
    if isinstance(value, bool):
        out = st.checkbox(label, key=wkey)
    elif isinstance(value, int):
        out = st.number_input(label, key=wkey, step=1)
    elif isinstance(value, float):
        out = st.number_input(label, key=wkey, format="%.6g", step=value / 10 or 0.01)
    else:
        out = st.text_input(label, key=wkey)
    _field_errors(f"{section}.{key}")
    return field_value(section, key, out)


def _submit(form: FormValues | str) -> None:
    """Queue the form's (or the YAML editor's) spec; errors go to their fields."""
    try:
        job = submit_job(engine, user, spec_from_form(form), settings=session.settings())
    except (SpecError, TrainingError, PermissionDenied) as err:
        st.session_state["training_errors"] = form_errors(err)
    else:
        st.session_state["training_selected_job"] = job.id
        st.session_state["training_goto_tab"] = "Jobs"
        st.session_state["training_flash"] = f"Queued job {job.id} for adapter {job.name!r}."
        st.session_state["training_errors"] = {}
    st.rerun()


def _signature() -> tuple:
    """What, when it changes, makes every part of the page stale: jobs per state, adapters."""
    counts = tuple(sorted(count_jobs(engine, user).items()))
    adapters = tuple(a.id for a in list_adapters(engine, user)) if user.can("adapters:read") else ()
    return counts, adapters


@st.fragment(run_every=3)
def _watch() -> None:
    """A job that changes state (finishes, fails, is cancelled by someone) or a new adapter
    shows everywhere on the page at once: a full rerun, not only the part that noticed."""
    if _signature() != st.session_state.get("training_signature"):
        st.rerun()


def _form(refs: list[str]) -> FormValues | None:
    """The spec form, grown from the preset's fields; the values when it was submitted."""
    with st.form("training_form"):
        a, b, c = st.columns(3)
        with a:
            name = st.text_input(
                "Adapter name", key="training_f_name", placeholder="a-z, 0-9, _ and -"
            )
            _field_errors("name")
        with b:
            if refs:
                version = st.selectbox("Dataset version", refs, key="training_f_dataset_version")
            else:
                version = st.text_input(
                    "Dataset version (id or name@vN)", key="training_f_dataset_version"
                )
            _field_errors("dataset_version")
        with c:
            method = st.selectbox("Method", METHODS, key="training_f_method")
            _field_errors("method")
        a, b = st.columns(2)
        with a:
            base = st.text_input(
                "Base model (empty: configured / demo model)", key="training_f_base_model"
            )
            _field_errors("base_model")
        with b:
            adapter_names = (
                [x.name for x in list_adapters(engine, user)] if user.can("adapters:read") else []
            )
            parent = st.selectbox(
                "Adapter to train further (continue; optional for dpo)",
                ["", *adapter_names],
                key="training_f_adapter",
            )
            _field_errors("adapter")
        fields = st.session_state["training_form_fields"]
        sections: dict = {}
        for section, title in SECTION_TITLES:
            if not fields.get(section):
                continue
            st.markdown(f"**{title}**")
            cols = st.columns(4)
            sections[section] = {}
            for i, key in enumerate(fields[section]):
                with cols[i % 4]:
                    sections[section][key] = _widget(section, key)
            _field_errors(section)
        extra = st.text_area(
            "More TRL / PEFT settings (YAML, e.g. `trainer: {weight_decay: 0.01}`)",
            key="training_f_extra",
            height=80,
        )
        _field_errors("extra")
        submitted = st.form_submit_button("Submit job", type="primary")
    if not submitted:
        return None
    return FormValues(
        name=name,
        dataset_version=version,
        method=method,
        base_model=base,
        adapter=parent,
        sections=sections,
        extra=extra,
    )


def _new_job_tab() -> None:
    """Preset, form or YAML editor, submit. Drawn whether open or not (keeps what was typed)."""
    if not user.can("training:create"):
        st.info("Your role may look at training jobs but not submit them.")
        return
    if "training_form_fields" not in st.session_state:
        st.session_state.setdefault("training_preset", "demo-lora")
        _load_preset()
    c1, c2 = st.columns([2, 3])
    c1.selectbox("Preset", list(PRESETS), key="training_preset", on_change=_load_preset)
    c2.caption(PRESETS[st.session_state["training_preset"]].get("description", ""))
    mode = st.radio("Edit as", ["Form", "YAML"], horizontal=True, key="training_mode")
    top = st.session_state["training_errors"].get(TOP)
    if top:
        st.error(top)
    if mode == "Form":
        versions = list_versions(engine, user) if user.can("datasets:read") else []
        form = _form([v.ref for v in versions])
        if form is not None:
            _submit(form)
    else:
        st.caption(
            "The spec as YAML: `peft` keys go to PEFT LoraConfig, `trainer` keys to "
            "TRL SFTConfig, unchanged."
        )
        text = st.text_area("Spec (YAML)", key="training_yaml", height=420)
        if st.button("Submit YAML", type="primary", key="training_submit_yaml"):
            _submit(text)


def _jobs_frame(states: list[str]) -> pd.DataFrame:
    jobs = list_jobs(engine, user, states, limit=200)
    frame = pd.DataFrame([j.model_dump() for j in jobs]) if jobs else pd.DataFrame()
    return frame.reindex(columns=COLUMNS)


@st.fragment(run_every=2)
def _job_tables() -> None:
    """Counts and the three tables, always the same elements in the same places (an empty
    table is still a table), so a refresh replaces them instead of adding copies."""
    counts = count_jobs(engine, user)
    cols = st.columns(5)
    for col, state in zip(
        cols, ("queued", "running", "succeeded", "failed", "cancelled"), strict=True
    ):
        col.metric(state, counts.get(state, 0))
    for title, states in GROUPS:
        frame = _jobs_frame(states)
        st.markdown(f"**{title}** ({len(frame)})")
        st.dataframe(
            frame,
            hide_index=True,
            width="stretch",
            height=min(38 + 35 * max(len(frame), 1), 300),
            key=f"training_table_{title.lower()}",
        )


def _charts(metrics: pd.DataFrame) -> None:
    """Loss, learning rate, eval perplexity: three fixed slots, a chart or a note in each."""
    train = metrics[metrics["phase"] == "train"] if len(metrics) else metrics
    evals = (
        metrics[metrics["phase"].isin(["eval_before", "eval", "eval_after"])]
        if len(metrics)
        else metrics
    )
    c1, c2, c3 = st.columns(3)
    if len(train):
        fig = px.line(train, x="step", y="loss", color="attempt", markers=True, title="Loss")
        c1.plotly_chart(fig, width="stretch", key="training_chart_loss")
        fig = px.line(train, x="step", y="learning_rate", markers=True, title="Learning rate")
        c2.plotly_chart(fig, width="stretch", key="training_chart_lr")
    else:
        c1.caption("Loss: no training steps yet.")
        c2.caption("Learning rate: no training steps yet.")
    if len(evals):
        fig = px.scatter(
            evals, x="step", y="eval_perplexity", color="phase", title="Eval perplexity"
        )
        c3.plotly_chart(fig, width="stretch", key="training_chart_ppl")
    else:
        c3.caption("Eval perplexity: no evaluation yet.")


def _fmt_seconds(seconds: float) -> str:
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _act(action, job_id: int) -> None:
    """Cancel or Retry, then a full rerun: the tables, the job list and this view all show
    the new state at once."""
    try:
        action(engine, user, job_id)
    except (TrainingError, PermissionDenied) as err:
        st.session_state["training_action_error"] = str(err)
    st.rerun()


@st.fragment(run_every=2)
def _job_detail(job_id: int) -> None:
    """One job, refreshed every 2 s. Every element has a fixed place: what does not apply
    right now leaves its slot empty instead of shifting what follows."""
    try:
        job = get_job(engine, user, job_id)
    except TrainingError as err:
        st.error(str(err))
        return
    metrics = job_metrics(engine, user, job_id)
    frac, eta = job_progress(job, metrics)
    st.markdown(f"### Job {job.id}: `{job.name}` — **{job.state}**")
    unit = {"score": "samples scored", "embed": "chunks embedded"}.get(job.kind)
    if unit is None:
        st.caption(
            f"{job.method} · owner {job.owner} · attempts {job.attempts}/{job.max_attempts}"
            f" · base {job.base_model} · dataset version {job.dataset_version_id}"
        )
    else:  # scoring and embedding jobs run in the same queue and workers
        st.caption(
            f"{job.kind} job · owner {job.owner} · attempts {job.attempts}/{job.max_attempts}"
        )
    eta_txt = f", ETA {_fmt_seconds(eta)}" if eta is not None else ""
    total = job.max_steps or "?"
    done = f"step {job.step}/{total}" if unit is None else f"{job.step}/{total} {unit}"
    st.progress(frac, text=f"{done} ({frac:.0%}{eta_txt})")
    building = st.empty()
    if job.state == "running" and job.base_model == DEMO and job.step == 0:
        build = demo_build_status(session.settings())
        if build is not None:
            left = (
                f", about {_fmt_seconds(build.eta_seconds)} left"
                if build.eta_seconds is not None
                else ""
            )
            building.progress(
                min(1.0, max(0.0, build.fraction)),
                text=f"Waiting for the demo base model (first use): {build.message} "
                f"({build.fraction:.0%}{left})",
            )
    note = st.empty()
    if job.cancel_requested and job.state == "running":
        note.warning(
            "Cancel requested: the job saves a checkpoint at the current step, then stops."
        )
    elif job.state == "cancelled" and job.error:
        note.info(job.error, icon=":material/pause_circle:")
    elif job.error:
        note.error(job.error)
    elif why := waiting_reason(engine, user, job, session.settings()):
        note.warning(why, icon=":material/hourglass_top:")
    action_error = st.empty()
    if st.session_state.get("training_action_error"):
        action_error.error(st.session_state.pop("training_action_error"))
    b1, b2, _ = st.columns([1, 1, 4])
    if job.state in ("queued", "running") and b1.button("Cancel", key="training_cancel"):
        _act(cancel_job, job.id)
    if job.state in ("failed", "cancelled") and b2.button("Retry", key="training_retry"):
        _act(retry_job, job.id)
    _charts(metrics)
    last = metrics[metrics["phase"] == "train"].tail(1) if len(metrics) else metrics
    row = last.iloc[0] if len(last) else None
    m1, m2, m3 = st.columns(3)
    m1.metric("loss", f"{row['loss']:.4f}" if row is not None else "–")
    m2.metric("tokens/s", f"{row['tokens_per_second'] or 0:.0f}" if row is not None else "–")
    m3.metric("grad norm", f"{row['grad_norm'] or 0:.3f}" if row is not None else "–")
    st.markdown("**Log** (last lines)")
    st.code(job_log_tail(engine, user, job.id, 40) or "(no log yet)", language=None)


def _jobs_tab() -> None:
    """Counts and tables, then one job chosen in a box and its live view."""
    _job_tables()
    recent = list_jobs(engine, user, limit=200)
    if not recent:
        st.caption("No jobs yet.")
        return
    ids = [j.id for j in recent]
    # The job to show: one just submitted, else the one chosen before (kept aside too, as
    # the box forgets while its tab is closed), else the newest. Set on the widget's own key
    # before it exists in this run, so the choice in the box and the job shown below are
    # always the same.
    wanted = st.session_state.pop("training_selected_job", None)
    kept = st.session_state.get("training_job_kept")
    if wanted in ids:
        st.session_state["training_job_select"] = wanted
    elif st.session_state.get("training_job_select") not in ids:
        st.session_state["training_job_select"] = kept if kept in ids else ids[0]
    labels = {j.id: f"{j.id} · {j.name} · {j.state}" for j in recent}
    job_id = st.selectbox(
        "Job", ids, key="training_job_select", format_func=lambda i: labels.get(i, str(i))
    )
    st.session_state["training_job_kept"] = job_id
    _job_detail(job_id)


# Adapters ------------------------------------------------------------------------------------


def _compare(adapters: list, picked: list[str]) -> None:
    """The numeric metrics of the chosen adapters side by side, and perplexity before/after."""
    by_name = {a.name: a for a in adapters}
    keys = sorted(
        {
            k
            for n in picked
            for k, v in by_name[n].metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    table = pd.DataFrame({n: [by_name[n].metrics.get(k) for k in keys] for n in picked}, index=keys)
    st.dataframe(table, width="stretch", key="training_compare_table")
    ppl = pd.DataFrame(
        [
            {"adapter": n, "when": w, "perplexity": by_name[n].metrics.get(f"eval_perplexity_{w}")}
            for n in picked
            for w in ("before", "after")
        ]
    )
    st.plotly_chart(
        px.bar(
            ppl,
            x="adapter",
            y="perplexity",
            color="when",
            barmode="group",
            title="Eval perplexity before / after",
        ),
        width="stretch",
        key="training_compare_chart",
    )


def _lineage(names: list[str]) -> None:
    """Dataset version → job → adapter, for the chosen adapter and those it continued."""
    which = st.selectbox("Lineage of", names, key="training_lineage_of")
    try:
        lin = lineage(engine, user, which)
    except AdapterNotFound as err:
        st.error(str(err))
        return
    for step in lin["chain"]:
        v, j, a = step["dataset_version"], step["job"], step["adapter"]
        st.markdown(
            f"- dataset version **{v.get('ref') or v.get('id')}** "
            f"(sha256 `{(v.get('manifest_sha256') or '')[:12]}`) → job "
            f"**{j['id'] if j else '-'}** → adapter **{a['name']}**"
        )
    with st.expander("Lineage (JSON)"):
        st.json(lin)


def _adapters_tab() -> None:
    """The registry, a comparison of the chosen adapters, and one adapter's lineage."""
    adapters = list_adapters(engine, user) if user.can("adapters:read") else []
    if not adapters:
        st.caption("No adapters yet: a succeeded job registers one.")
        return
    rows = [
        {
            "id": a.id,
            "name": a.name,
            "method": a.method,
            "job": a.job_id,
            "dataset version": a.dataset_version_id,
            "ppl before": a.metrics.get("eval_perplexity_before"),
            "ppl after": a.metrics.get("eval_perplexity_after"),
            "created by": a.created_by,
            "created": a.created_at,
        }
        for a in adapters
    ]
    st.dataframe(
        pd.DataFrame(rows), hide_index=True, width="stretch", key="training_adapters_table"
    )
    names = [a.name for a in adapters]
    picked = st.multiselect("Compare adapters", names, default=names[:2], key="training_compare")
    if picked:
        _compare(adapters, picked)
    _lineage(names)


def _line_action(action, *args, done: str, **kwargs) -> None:
    try:
        action(engine, user, *args, **kwargs)
        st.session_state["training_flash"] = done
    except (ClaraError, PermissionDenied) as err:
        st.session_state["training_action_error"] = str(err)
    st.rerun()


def _cycles(name: str, manage: bool) -> None:
    """The line's policy (editable as YAML), its cycles with the gate's figures, a chart of
    them across cycles, and the probe answers of a cycle side by side."""
    policy = get_policy(engine, user, name)
    st.markdown(
        f"**Learning policy** · {new_samples(engine, user, name)} new accepted sample(s)"
        + (f", a cycle starts at {policy.min_new_samples}" if policy else ": none (by hand only)")
    )
    if manage:
        with st.expander("Edit the policy (YAML)"):
            text = st.text_area(
                "Policy",
                policy.to_yaml() if policy else POLICY_TEMPLATE,
                height=260,
                key=f"training_policy_{name}",
            )
            p1, p2 = st.columns(2)
            if p1.button("Save policy", key="training_policy_save"):
                _line_action(
                    lambda e, u, n, t: set_policy(e, u, n, parse_policy_text(t, "the policy")),
                    name,
                    text,
                    done=f"Policy of line {name} saved.",
                )
            if p2.button("Run a cycle now", key="training_cycle_run", disabled=policy is None):
                _line_action(start_cycle, name, done=f"Line {name}: a cycle started.")
    cycles = list_cycles(engine, user, name)
    if not cycles:
        st.caption("No learning cycles yet.")
        return
    rows = [
        {
            "cycle": c.number,
            "state": c.state,
            "trigger": c.trigger,
            "new samples": c.new_samples,
            "from": c.from_adapter,
            "candidate": c.candidate,
            "job": c.job_id,
            "regression before": c.gate.get("regression_before"),
            "regression after": c.gate.get("regression_after"),
            "new data before": c.gate.get("new_data_before"),
            "new data after": c.gate.get("new_data_after"),
            "reason": c.reason,
        }
        for c in cycles
    ]
    frame = pd.DataFrame(rows)
    st.dataframe(frame, hide_index=True, width="stretch", key="training_cycles_table")
    judged = frame.dropna(subset=["regression after"])
    if len(judged):
        long = judged.melt(
            id_vars=["cycle"],
            value_vars=[
                "regression before",
                "regression after",
                "new data before",
                "new data after",
            ],
            var_name="perplexity",
        )
        fig = px.line(
            long.sort_values("cycle"),
            x="cycle",
            y="value",
            color="perplexity",
            markers=True,
            title="Gate perplexity across cycles",
        )
        st.plotly_chart(fig, width="stretch", key="training_cycles_chart")
    probed = [c for c in cycles if c.gate.get("probes")]
    if probed:
        pick = st.selectbox(
            "Probe answers of cycle", [c.number for c in probed], key="training_cycle_probes"
        )
        chosen = next(c for c in probed if c.number == pick)
        st.dataframe(
            pd.DataFrame(chosen.gate["probes"]).rename(
                columns={"active": chosen.from_adapter, "candidate": chosen.candidate}
            ),
            hide_index=True,
            width="stretch",
            key="training_cycle_probe_table",
        )


def _lines_tab() -> None:
    """Adapter lines: what each serves as line:NAME, its history, activation and rollback."""
    if st.session_state.get("training_action_error"):
        st.error(st.session_state.pop("training_action_error"))
    lines = list_lines(engine, user) if user.can("adapters:read") else []
    manage = user.can("adapters:activate")
    adapters = [a.name for a in list_adapters(engine, user)] if user.can("adapters:read") else []
    if lines:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "line": x.name,
                        "served as": x.served_as,
                        "active adapter": x.active_adapter,
                        "base model": x.base_model,
                        "created by": x.created_by,
                    }
                    for x in lines
                ]
            ),
            hide_index=True,
            width="stretch",
            key="training_lines_table",
        )
        name = st.selectbox("Line", [x.name for x in lines], key="training_line")
        line = get_line(engine, user, name)
        st.markdown(f"**{line.served_as}** serves **{line.active_adapter}** now.")
        st.dataframe(
            pd.DataFrame([h.model_dump() for h in line.history]).reindex(
                columns=["at", "action", "adapter_name", "previous_adapter_name", "actor", "reason"]
            ),
            hide_index=True,
            width="stretch",
            key="training_line_history",
        )
        _cycles(name, manage)
        if manage:
            earlier = list(dict.fromkeys(h.adapter_name for h in line.history))
            earlier = [a for a in earlier if a != line.active_adapter and a in adapters]
            reason = st.text_input("Reason (kept in the history)", key="training_line_reason")
            c1, c2 = st.columns(2)
            back = c1.selectbox("Roll back to", earlier or ["–"], key="training_line_back")
            if c1.button("Roll back", key="training_line_rollback", disabled=not earlier):
                _line_action(rollback, name, back, reason, done=f"Line {name} serves {back} again.")
            others = [a for a in adapters if a != line.active_adapter]
            new = c2.selectbox("Activate", others or ["–"], key="training_line_new")
            if c2.button("Activate", key="training_line_activate", disabled=not others):
                _line_action(
                    activate, name, new, reason=reason, done=f"Line {name} serves {new} now."
                )
    else:
        st.caption("No adapter lines yet.")
    if manage and adapters:
        with st.form("training_line_create", clear_on_submit=True):
            st.markdown("**New line**")
            c1, c2 = st.columns(2)
            line_name = c1.text_input("Line name", key="training_line_name")
            first = c2.selectbox("First adapter", adapters, key="training_line_first")
            description = st.text_input("Description", key="training_line_description")
            if st.form_submit_button("Create line"):
                _line_action(
                    create_line,
                    line_name,
                    first,
                    description,
                    done=f"Created line {line_name}: chat serves it as line:{line_name}.",
                )


# The page ------------------------------------------------------------------------------------

st.title("Training")
st.session_state.setdefault("training_errors", {})
st.session_state.setdefault("training_flash", None)
st.session_state.setdefault("training_selected_job", None)
st.session_state.setdefault("training_goto_tab", None)
# Always present, so that the elements after it keep their place whether a message shows or
# not (a shifted element is a new element to the browser: tabs would jump back to the first).
with st.container(key="training_flash_box"):
    if st.session_state["training_flash"]:
        st.success(st.session_state["training_flash"])
        st.session_state["training_flash"] = None
st.session_state["training_signature"] = _signature()
_watch()
# A tab to open (after a submit: the job's view), set before the tabs exist in this run.
if st.session_state["training_goto_tab"] in TABS:
    st.session_state["training_tab"] = st.session_state["training_goto_tab"]
st.session_state["training_goto_tab"] = None
# Keyed and stateful: the open tab survives every rerun. The Jobs and Adapters tabs draw
# only while open, so hidden tabs neither refresh in the background nor leave stale copies.
tab_new, tab_jobs, tab_adapters, tab_lines = st.tabs(TABS, key="training_tab", on_change="rerun")
with tab_new:  # always drawn, open or not: the form's widgets keep what was typed
    _new_job_tab()
with tab_jobs:
    if tab_jobs.open:
        _jobs_tab()
with tab_adapters:
    if tab_adapters.open:
        _adapters_tab()
with tab_lines:
    if tab_lines.open:
        _lines_tab()
