"""Chat: the Gradio chat server embedded for the logged-in user, adapters and lineage beside it.

The iframe URL carries a single-use sign-in token issued for this user's web session, so the
chat server knows who is chatting without a second login (and refuses anyone without one).
The URL is kept in st.session_state and reused on every rerun: a new one would reload the
iframe and lose the conversation.
While the chat server is not up yet because the demo model is being built, the page shows
the build's progress and an estimate, and opens the chat by itself once it answers.
"""

import pandas as pd
import streamlit as st

from core.serving.adapters import adapter_lineage, chat_adapters
from core.serving.feedback import list_feedback
from core.serving.iframe import ChatEmbed, chat_embed
from ui import session

user = session.require_principal()
engine = session.engine()

st.title("Chat")
st.caption("Talk to the base model and the trained adapters; rate answers to improve them.")


def _embed() -> ChatEmbed:
    """Where the iframe points: the URL this page got before for this user and web session
    (kept across reruns, so the iframe is not reloaded), else a new one."""
    owner = (user.username, session.current_session_id())
    kept = st.session_state.get("chat_embed_url")
    known = kept[1] if isinstance(kept, tuple) and kept[0] == owner else ""
    embed = chat_embed(user, session.settings(), db=engine, parent_id=owner[1], known_url=known)
    if embed.url:
        st.session_state["chat_embed_url"] = (owner, embed.url)
    return embed


def _demo_build():
    from core.training import demo_model

    status_of = getattr(demo_model, "demo_build_status", None)
    return status_of(session.settings()) if status_of is not None else None


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating the time left…"
    if seconds < 60:
        return f"about {max(1, round(seconds))} s left"
    return f"about {round(seconds / 60)} min left"


@st.fragment(run_every=3)
def _waiting_for_chat() -> None:
    """While the chat server is down: the demo model build's progress, re-checked every 3 s;
    a full rerun (which embeds the chat) as soon as the server answers."""
    embed = _embed()
    if embed.server_up:
        st.rerun()
    build = _demo_build()
    if build is not None:
        st.info(
            "The chat server starts once the demo base model is built (first start "
            "only). This page opens the chat by itself when it is ready.",
            icon=":material/hourglass_top:",
        )
        fraction = min(1.0, max(0.0, float(build.fraction)))
        st.progress(
            fraction, text=f"{build.phase}: {round(fraction * 100)} % · {_eta(build.eta_seconds)}"
        )
        if build.message:
            st.caption(build.message)
    else:
        st.error(embed.problem, icon=":material/cloud_off:")


embed = _embed()
left, right = st.columns([3, 1], gap="medium")

with left:
    if embed.server_up:
        st.iframe(embed.url, height=900)
        st.caption(f"Chat server: [{embed.base_url}]({embed.base_url}) (opens its own login)")
    else:
        _waiting_for_chat()

with right:
    st.subheader("Adapters")
    adapters = chat_adapters(engine, user)
    if not adapters:
        st.info(
            "No adapters yet: only the base model is available. Train one on the Training page."
        )
    else:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "name": a.name,
                        "method": a.method,
                        "created": a.created_at.strftime("%Y-%m-%d %H:%M"),
                        "by": a.created_by,
                    }
                    for a in adapters
                ]
            ),
            hide_index=True,
            key="chat_adapters_table",
        )
        picked = st.selectbox("Lineage of", [a.name for a in adapters], key="chat_lineage_pick")
        if picked and user.can("adapters:read"):
            lineage = adapter_lineage(engine, user, picked)
            for step in lineage.get("chain", []):
                a, job, ver = step.get("adapter", {}), step.get("job"), step.get("dataset_version")
                st.markdown(f"**{a.get('name')}** · {a.get('method')} · by {a.get('created_by')}")
                if ver:
                    st.markdown(f"- data: `{ver.get('ref') or ver.get('id') or '-'}`")
                if job:
                    st.markdown(f"- job #{job.get('id')} ({job.get('state')})")
                st.markdown(f"- base: `{a.get('base_model')}`")
                if a.get("metrics"):
                    with st.expander("metrics"):
                        st.json(a["metrics"])
    st.subheader("Your recent feedback")
    rows, total = list_feedback(engine, user, username=user.username, limit=10)
    if rows:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "when": r.created_at.strftime("%m-%d %H:%M"),
                        "adapter": r.adapter_name,
                        "rating": "👍" if r.rating == "up" else "👎",
                        "prompt": r.prompt[:40],
                        "corrected": bool(r.correction),
                    }
                    for r in rows
                ]
            ),
            hide_index=True,
            key="chat_feedback_table",
        )
        st.caption(f"{total} in all; they wait for review in the feedback-<adapter> datasets.")
    else:
        st.caption("Rate answers with 👍 / 👎 in the chat; your feedback appears here.")
