"""Learning cycles end to end (issue 15, items 1, 2, 4 and 6) on the tiny demo model with a
real `clara worker` process: chat answers from a line are rated with corrections, the
corrections are accepted in review, the worker's scheduler sees enough new samples and starts
a cycle, the job trains from the active adapter, the gate job measures both adapters and
promotes the new one, and the chat answers from it. A gate that fails keeps the active
adapter; a rollback brings back an earlier one; a cancelled cycle leaves the adapter and the
samples as they were; only one cycle of a line can be open.
"""

from __future__ import annotations

import pytest

from core.datasets.review import bulk_decide, list_samples
from core.errors import Conflict, NotFound
from core.learning.cycles import (
    get_cycle,
    list_cycles,
    new_samples,
    scheduler_tick,
    set_policy,
    start_cycle,
)
from core.learning.lines import create_line, get_line
from core.training.adapters import get_adapter
from core.training.jobs import cancel_job, get_job, submit_job
from core.training.spec import SpecError
from tests.api_training import (
    TRAINING_ENV,
    frozen_version,
    run_worker_once,
    running_worker,
    short_spec,
)
from tests.chat_process import chat_process, free_port
from tests.cli_run import clara, cli_env
from tests.conftest import link_demo_model
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

QUESTIONS = [f"Wie hoch ist die Hundesteuer für {k} Hunde?" for k in (3, 5, 7, 9)]
POLICY = {
    "regression": "faq@v1",
    "min_new_samples": 4,
    "eval_ratio": 0.25,
    "trainer": {
        "max_steps": 6,
        "learning_rate": 0.01,
        "per_device_train_batch_size": 4,
        "max_length": 64,
        "logging_steps": 2,
        "save_steps": 100,
    },
    "gate": {"max_regression": 0.5},
    "probes": ["Wie hoch ist die Hundesteuer für 2 Hunde?"],
}


def _decided(engine, admin, number: int):
    """Cycle `number` of line faq once it has ended (the scheduler may not have started it
    yet when the wait begins)."""

    def ended():
        found = [c for c in list_cycles(engine, admin, "faq") if c.number == number]
        return found and found[0].state not in ("training", "gating") and found[0]

    return wait_until(ended, f"cycle {number} to end", limit=300)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_feedback_retrains_the_line_behind_the_gate(
    db_engine, admin, settings, shared_demo_model, monkeypatch
):
    import secrets

    from core.config import get_settings
    from core.db import reading
    from core.serving.models import ChatAnswer

    # The tiny demo model for the workers and the chat server alike.
    for key, value in TRAINING_ENV.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    settings = get_settings()
    link_demo_model(shared_demo_model, settings.data_path)
    first = frozen_version(db_engine, n=24, actor=admin)
    submit_job(db_engine, admin, short_spec("hund", first.id))
    run_worker_once(settings)
    create_line(db_engine, admin, "faq", "hund")

    # What would train the line on the wrong thing is refused, naming it.
    with pytest.raises(NotFound, match="nope"):
        set_policy(db_engine, admin, "faq", {**POLICY, "regression": "nope@v1"})
    with pytest.raises(SpecError, match="learnig_rate"):
        set_policy(db_engine, admin, "faq", {**POLICY, "trainer": {"learnig_rate": 0.1}})
    set_policy(db_engine, admin, "faq", POLICY)

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    chat_env = {
        **cli_env(settings),
        **TRAINING_ENV,
        "CLARA_CHAT_PORT": str(port),
        "CLARA_AUTH_SECRET": secrets.token_urlsafe(32),
    }
    # Greedy; the penalty keeps the tiny model from answering only blank lines.
    greedy = ("", 0.0, 0.95, 8, 1.5)  # system, temperature, top_p, max tokens, penalty

    def ask(chat, question: str) -> tuple[str, str]:
        """The answer id and the adapter that gave the answer (as the chat stored it)."""
        _text, _note, answer_id = chat.predict(
            question, "line:faq", "[]", *greedy, api_name="/generate"
        )
        with reading(db_engine) as s:
            return answer_id, s.get(ChatAnswer, answer_id).adapter_name

    with chat_process(chat_env, settings.data_path / "chat.log", url):
        from gradio_client import Client

        chat = Client(url, auth=("admin", "adminpass1"), verbose=False)
        # People chat with the line and correct its answers; a reviewer accepts them.
        for k, question in zip((3, 5, 7, 9), QUESTIONS, strict=True):
            answer_id, adapter = ask(chat, question)
            assert adapter == "hund"
            correction = f"Für {k} Hunde beträgt die Hundesteuer {90 * k} Euro im Jahr."
            chat.predict(answer_id, "down", correction, "", api_name="/feedback")
        assert new_samples(db_engine, admin, "faq") == 0  # pending in review: not yet
        assert bulk_decide(db_engine, admin, "feedback-hund", "accepted") == 4
        assert new_samples(db_engine, admin, "faq") == 4

        # Two workers (two machines' worth): their schedulers start the one due cycle.
        with running_worker(settings), running_worker(settings):
            promoted = _decided(db_engine, admin, 1)
            assert promoted.state == "promoted", promoted.reason
            assert promoted.trigger == "schedule" and promoted.new_samples == 4
            assert [c.number for c in list_cycles(db_engine, admin, "faq")] == [1]
            gate = promoted.gate
            assert gate["new_data_after"] < gate["new_data_before"]
            assert gate["regression_set"] == "faq@v1" and gate["regression_texts"] > 0
            assert [p["prompt"] for p in gate["probes"]] == POLICY["probes"]
            assert {"active", "candidate"} <= set(gate["probes"][0])
            line = get_line(db_engine, admin, "faq")
            assert line.active_adapter == promoted.candidate == "faq-c1"
            assert line.history[0].action == "promote"
            assert "cycle 1 passed" in line.history[0].reason
            assert new_samples(db_engine, admin, "faq") == 0  # used by a decided cycle
            # The running chat server answers from the promoted adapter (no reload).
            assert ask(chat, QUESTIONS[0])[1] == "faq-c1"

            # A gate that fails keeps the active adapter. Forced: a learning rate of 0 leaves
            # the new adapter equal to the active one, so the new data cannot get better.
            set_policy(
                db_engine,
                admin,
                "faq",
                {**POLICY, "trainer": {**POLICY["trainer"], "learning_rate": 0.0}},
            )
            run = clara(settings, "learn", "run", "faq", "--json")
            assert run.returncode == 0, run.stdout + run.stderr
            kept = _decided(db_engine, admin, 2)
            assert kept.state == "kept" and kept.trigger == "manual"
            assert (
                kept.reason.startswith("no better on the new data")
                and "faq-c1 stays active" in kept.reason
            )
            assert get_line(db_engine, admin, "faq").active_adapter == "faq-c1"

            # Preference training: each correction also made a preference pair (the correction
            # chosen over the answer it corrects); accepted, they train a DPO cycle.
            pairs = list_samples(db_engine, admin, "preferences-hund")
            assert pairs.total == 4
            first_pair = pairs.items[0]
            assert first_pair.kind == "pref" and first_pair.status == "pending"
            assert first_pair.provenance["pair"] == "correction"
            assert first_pair.messages[-1]["content"].startswith("Für ")  # the correction
            assert bulk_decide(db_engine, admin, "preferences-hund", "accepted") == 4
            dpo_trainer = {**POLICY["trainer"], "beta": 0.1}
            dpo_trainer.pop("learning_rate")
            # min_new_samples out of reach: this cycle starts by hand, not by the scheduler.
            dpo = {**POLICY, "method": "dpo", "trainer": dpo_trainer, "min_new_samples": 100}
            set_policy(db_engine, admin, "faq", dpo)
            assert new_samples(db_engine, admin, "faq") == 4  # the pairs, not the SFT samples
            start_cycle(db_engine, admin, "faq")
            preferred = _decided(db_engine, admin, 3)
            assert preferred.state in ("promoted", "kept"), preferred.reason
            assert get_adapter(db_engine, admin, preferred.candidate).method == "dpo"
            dpo_job = get_job(db_engine, admin, preferred.job_id)
            assert dpo_job.state == "succeeded" and dpo_job.method == "dpo"
            if preferred.state == "kept":
                assert get_line(db_engine, admin, "faq").active_adapter == "faq-c1"
            set_policy(db_engine, admin, "faq", POLICY)

    # Only one open cycle per line; a cancelled one leaves the adapter and the samples be.
    active_before = get_line(db_engine, admin, "faq").active_adapter
    third = start_cycle(db_engine, admin, "faq")
    with pytest.raises(Conflict, match="under way already"):
        start_cycle(db_engine, admin, "faq")
    cancel_job(db_engine, admin, third.job_id)
    assert get_job(db_engine, admin, third.job_id).state == "cancelled"
    scheduler_tick(db_engine, say=lambda _m: None)
    cancelled = get_cycle(db_engine, admin, "faq", 4)
    assert cancelled.state == "cancelled" and "the active adapter stays" in cancelled.reason
    assert get_line(db_engine, admin, "faq").active_adapter == active_before

    # Rollback, by hand: the line serves the first adapter again.
    back = clara(
        settings, "learn", "rollback", "faq", "hund", "--reason", "probe answers got worse"
    )
    assert back.returncode == 0, back.stdout + back.stderr
    assert get_line(db_engine, admin, "faq").active_adapter == "hund"
    listed = clara(settings, "learn", "cycles", "faq")
    assert listed.returncode == 0 and "promoted" in listed.stdout and "kept" in listed.stdout
    states = [c.state for c in list_cycles(db_engine, admin, "faq")]
    assert states[0] == "cancelled" and states[2:] == ["kept", "promoted"]


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_two_schedulers_and_one_due_cycle_make_one_cycle(db_engine, admin, settings, tmp_path):
    """Two workers' schedulers at the same moment (threads here, each with its own
    connections): the line's one open cycle is a unique row, so exactly one cycle starts.
    Feedback on an adapter of another base never becomes a source of the line."""
    import threading

    from core.datasets.service import SampleIn, add_samples, get_or_create_dataset
    from core.learning.lines import LineError
    from core.training.adapters import delete_adapter, register_adapter
    from tests.integration.test_training_page_app import _peft_folder

    files = _peft_folder(tmp_path)
    # faq-c1 is taken already (by hand): the first cycle's adapter gets another name.
    for name, fingerprint in (("hund", "a" * 64), ("fremd", "b" * 64), ("faq-c1", "a" * 64)):
        register_adapter(
            db_engine,
            admin,
            name=name,
            files_dir=files,
            base_model="demo",
            base_model_fingerprint=fingerprint,
            method="lora",
        )
    first = frozen_version(db_engine, n=8, actor=admin)
    create_line(db_engine, admin, "faq", "hund")
    get_or_create_dataset(db_engine, admin, "feedback-fremd", kind="feedback")  # as the chat
    delete_adapter(db_engine, admin, "fremd")  # its feedback is kept, and stays foreign
    with pytest.raises(LineError, match="feedback-fremd holds chat feedback on an adapter"):
        set_policy(db_engine, admin, "faq", {**POLICY, "sources": ["feedback-fremd"]})
    set_policy(db_engine, admin, "faq", {**POLICY, "regression": f"faq@v{first.number}"})
    feedback = get_or_create_dataset(db_engine, admin, "feedback-hund")
    add_samples(
        db_engine,
        admin,
        feedback.id,
        [
            SampleIn(
                kind="chat",
                status="accepted",
                messages=[
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": f"Antwort {i}."},
                ],
            )
            for i, q in enumerate(QUESTIONS)
        ],
    )
    said: list[str] = []
    go = threading.Barrier(2)

    def worker() -> None:
        go.wait()
        scheduler_tick(db_engine, said.append)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    cycles = list_cycles(db_engine, admin, "faq")
    assert [(c.number, c.state, c.trigger) for c in cycles] == [(1, "training", "schedule")]
    assert cycles[0].candidate == "faq-c1-2"
    assert sum("cycle 1 started" in m for m in said) == 1, said
    assert get_job(db_engine, admin, cycles[0].job_id).state == "queued"
