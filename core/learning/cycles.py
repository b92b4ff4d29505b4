"""Learning cycles: a line retrains from its active adapter on its accepted samples, and the
result is served only when it passes the gate.

A cycle, start to end:

1. `start_cycle` claims the line (one open cycle per line: a unique column, so two workers
   never start the same cycle), copies the accepted samples of the line's sources that are
   not in its learning dataset yet (`learn-<line>`, with their origin in the provenance),
   freezes a new version of it and submits a `continue` job from the active adapter.
2. `advance_cycles` (the scheduler in `clara worker`, every few seconds) follows the job:
   when it succeeded, it queues the gate as a job of its own (core.learning.gate); when it
   failed or was cancelled, the cycle ends so and the active adapter stays.
3. The gate job measures perplexity of the active and the new adapter on the fixed
   regression set and on the new version's eval split, answers the probe prompts with both,
   and promotes the new adapter or keeps the old one, recording why.

Samples count as used once a cycle ended with a decision (promoted or kept); a cycle whose
job failed or was cancelled leaves them new, and the next cycle waits `retry_after_hours`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError

from core.audit import audited
from core.db import reading, writing
from core.db.base import utcnow
from core.errors import Conflict
from core.learning.lines import LineError, _line
from core.learning.models import AdapterLine, LearningCycle, LineActivation
from core.learning.policy import LearningPolicy, policy_from_dict
from core.permissions import SYSTEM, Principal, require

log = logging.getLogger(__name__)

OPEN_STATES = ("training", "gating")
DECIDED = ("promoted", "kept")


class CycleInfo(BaseModel):
    id: int
    line: str
    number: int
    state: str
    trigger: str
    started_by: str
    dataset_version_id: int | None
    new_samples: int
    from_adapter: str
    candidate: str
    job_id: int | None
    gate_job_id: int | None
    gate: dict[str, Any]
    reason: str
    started_at: datetime
    finished_at: datetime | None


def _cycle_info(c: LearningCycle, line: str) -> CycleInfo:
    return CycleInfo(line=line, **{f: getattr(c, f) for f in CycleInfo.model_fields if f != "line"})


def learn_dataset_name(line: str, method: str = "continue") -> str:
    """The dataset a line's cycles freeze: its SFT samples, or (dpo) its preference pairs."""
    return f"learn-{line}" + ("-dpo" if method == "dpo" else "")


# The policy ----------------------------------------------------------------------------------


def set_policy(
    engine: Engine, actor: Principal, line_name: str, policy: dict[str, Any] | LearningPolicy
) -> LearningPolicy:
    """Validate and store the line's policy; refused when the regression set or a source
    dataset is missing, a source holds feedback on an adapter the line never served, or the
    training settings would not make a valid job."""
    from core.datasets.service import get_dataset
    from core.datasets.versions import get_version
    from core.training.spec import spec_from_dict

    with audited(engine, actor, "learning.policy.set", target=line_name) as ctx:
        require(actor, "adapters:activate")
        p = policy_from_dict(policy)
        get_version(engine, actor, p.regression)  # frozen versions are never empty
        for name in p.sources:
            get_dataset(engine, actor, name)  # a missing one is named by its NotFound
        with writing(engine) as s:
            line = _line(s, line_name)
            _refuse_foreign_feedback(s, line, p.sources)
            active = _active_name(s, line)
            # Checks the trainer keys as a cycle's job spec will use them.
            spec_from_dict(_job_spec(f"{line.name}-c1"[:64], active, 1, p, line.name, 1))
            line.policy = p.model_dump(mode="json")
        ctx.detail.update(regression=p.regression, min_new_samples=p.min_new_samples)
        return p


def _refuse_foreign_feedback(s, line: AdapterLine, sources: list[str]) -> None:
    """Chat feedback trains only a line that served the adapter it is about: the answers in
    `feedback-<adapter>` came from that adapter's base model (also after the adapter was
    deleted), which another line's base may not be."""
    from core.datasets.models import Dataset
    from core.serving.feedback import feedback_dataset_name, preference_dataset_name

    served = s.scalars(
        select(LineActivation.adapter_name).where(LineActivation.line_id == line.id)
    ).all()
    own = {f(a) for a in served for f in (feedback_dataset_name, preference_dataset_name)}
    for name, kind in s.execute(
        select(Dataset.name, Dataset.kind).where(Dataset.name.in_(sources))
    ):
        if kind == "feedback" and name not in own:
            raise LineError(
                f"source {name} holds chat feedback on an adapter line {line.name!r} never "
                "served (perhaps of another base model): feedback trains only the lines "
                "that served its adapter"
            )


def get_policy(engine: Engine, actor: Principal, line_name: str) -> LearningPolicy | None:
    require(actor, "adapters:read")
    with reading(engine) as s:
        line = _line(s, line_name)
        return LearningPolicy.model_validate(line.policy) if line.policy else None


def _free_name(s, wanted: str) -> str:
    """`wanted` (an adapter name), or with a suffix when an adapter or a job has it already
    (a line deleted and made again, a name taken by hand)."""
    from core.training.models import Adapter, TrainingJob

    taken = set(s.scalars(select(Adapter.name).where(Adapter.name.like(f"{wanted}%"))))
    taken |= set(s.scalars(select(TrainingJob.name).where(TrainingJob.name.like(f"{wanted}%"))))
    name, n = wanted[:64], 1
    while name in taken:
        n += 1
        name = f"{wanted[:58]}-{n}"
    return name


def _job_spec(
    name: str, adapter: str, version_id: int, p: LearningPolicy, line: str, number: int
) -> dict:
    return {
        "name": name,
        "dataset_version": version_id,
        "method": p.method,
        "adapter": adapter,
        "trainer": dict(p.trainer),
        "description": f"learning cycle {number} of line {line}",
    }


def _active_name(s, line: AdapterLine) -> str:
    from core.training.models import Adapter

    active = s.get(Adapter, line.active_adapter_id)
    if active is None:
        raise LineError(f"line {line.name!r} has no active adapter")
    return active.name


# Samples -------------------------------------------------------------------------------------


def _source_ids(s, line: AdapterLine, p: LearningPolicy) -> list[int]:
    """The line's feedback datasets (of every adapter it served: all on its base model) or,
    for dpo, their preference pairs; and the policy's sources."""
    from core.datasets.models import Dataset
    from core.serving.feedback import feedback_dataset_name, preference_dataset_name

    named = preference_dataset_name if p.method == "dpo" else feedback_dataset_name
    served = s.scalars(
        select(LineActivation.adapter_name).where(LineActivation.line_id == line.id)
    ).all()
    names = {named(a) for a in served} | set(p.sources)
    return list(s.scalars(select(Dataset.id).where(Dataset.name.in_(names))))


def _learn_dataset_id(s, line: AdapterLine, p: LearningPolicy) -> int | None:
    from core.datasets.models import Dataset

    name = learn_dataset_name(line.name, p.method)
    return s.scalar(select(Dataset.id).where(Dataset.name == name))


def _uncopied(s, line: AdapterLine, p: LearningPolicy) -> list[Any]:
    """Accepted samples of the sources that the learning dataset does not hold yet."""
    from core.datasets.models import DatasetSample

    learn_id = _learn_dataset_id(s, line, p)
    copied: set[tuple[int, int]] = set()
    if learn_id is not None:
        for prov in s.scalars(
            select(DatasetSample.provenance).where(DatasetSample.dataset_id == learn_id)
        ):
            origin = (prov or {}).get("learned_from") or {}
            if origin:
                copied.add((int(origin["dataset_id"]), int(origin["sample_id"])))
    sources = _source_ids(s, line, p)
    if not sources:
        return []
    q = select(DatasetSample).where(
        DatasetSample.dataset_id.in_(sources), DatasetSample.status == "accepted"
    )
    if p.method == "dpo":
        q = q.where(DatasetSample.kind == "pref")
    rows = s.scalars(q.order_by(DatasetSample.id)).all()
    return [r for r in rows if (r.dataset_id, r.id) not in copied]


def _learned(s, line: AdapterLine, p: LearningPolicy) -> int:
    """Accepted samples already in the line's learning dataset."""
    from core.datasets.models import DatasetSample

    learn_id = _learn_dataset_id(s, line, p)
    if learn_id is None:
        return 0
    return int(
        s.scalar(
            select(func.count()).where(
                DatasetSample.dataset_id == learn_id, DatasetSample.status == "accepted"
            )
        )
        or 0
    )


def _last_decided(s, line_id: int) -> LearningCycle | None:
    return s.scalar(
        select(LearningCycle)
        .where(LearningCycle.line_id == line_id, LearningCycle.state.in_(DECIDED))
        .order_by(LearningCycle.number.desc())
        .limit(1)
    )


def new_samples(engine: Engine, actor: Principal, line_name: str) -> int:
    """Accepted samples no decided cycle of the line has trained on yet."""
    require(actor, "adapters:read")
    with reading(engine) as s:
        line = _line(s, line_name)
        if not line.policy:
            return 0
        return _new_count(s, line, LearningPolicy.model_validate(line.policy))


def _new_count(s, line: AdapterLine, p: LearningPolicy, uncopied: list | None = None) -> int:
    """Uncopied accepted source samples (`uncopied`, when read already) plus those in the
    learning dataset that no decided cycle trained on."""
    from core.datasets.models import DatasetSample

    pending_copy = len(_uncopied(s, line, p) if uncopied is None else uncopied)
    learn_id = _learn_dataset_id(s, line, p)
    if learn_id is None:
        return pending_copy
    last = _last_decided(s, line.id)
    since = last.samples_through if last else 0
    copied_new = s.scalar(
        select(func.count()).where(
            DatasetSample.dataset_id == learn_id,
            DatasetSample.status == "accepted",
            DatasetSample.id > since,
        )
    )
    return pending_copy + int(copied_new or 0)


# Starting and following a cycle ----------------------------------------------------------------


def start_cycle(
    engine: Engine, actor: Principal, line_name: str, trigger: str = "manual"
) -> CycleInfo:
    """Start a cycle now (`clara learn run`, the scheduler): claim the line, freeze the
    accepted samples, submit the training job. Refused while another cycle is open."""
    from core.datasets.service import SampleIn, add_samples, get_or_create_dataset
    from core.datasets.versions import freeze
    from core.training.jobs import submit_job

    with audited(engine, actor, "learning.cycle.start", target=line_name) as ctx:
        require(actor, "adapters:activate")
        require(actor, "training:create")
        with reading(engine) as s:
            line = _line(s, line_name)
            if not line.policy:
                raise LineError(
                    f"line {line_name!r} has no learning policy: set one first "
                    f"(`clara learn policy set {line_name} POLICY.yaml`)"
                )
            policy = LearningPolicy.model_validate(line.policy)
            active = _active_name(s, line)
            number = 1 + (
                s.scalar(
                    select(func.max(LearningCycle.number)).where(LearningCycle.line_id == line.id)
                )
                or 0
            )
            line_id = line.id
            uncopied = _uncopied(s, line, policy)
            new = _new_count(s, line, policy, uncopied)
            # Copies made while the rows are bound to this session.
            fresh = [
                SampleIn(
                    kind=r.kind,
                    text=r.text,
                    messages=r.messages,
                    system=r.system,
                    status="accepted",
                    provenance={
                        "source": "learning",
                        "learned_from": {"dataset_id": r.dataset_id, "sample_id": r.id},
                        "origin": r.provenance or {},
                    },
                )
                for r in uncopied
            ]
            if not uncopied and not _learned(s, line, policy):
                raise LineError(
                    f"line {line_name!r} has nothing to train on: no accepted "
                    f"{'preference pairs' if policy.method == 'dpo' else 'samples'} in its "
                    "sources yet (accept chat feedback on the Review page, or name source "
                    "datasets in its policy)"
                )
        try:
            with writing(engine) as s:
                cycle = LearningCycle(
                    line_id=line_id,
                    number=number,
                    open_line=line_id,
                    state="training",
                    trigger=trigger,
                    started_by=actor.username,
                    from_adapter=active,
                    candidate=_free_name(s, f"{line_name}-c{number}"),
                    gate={},
                )
                s.add(cycle)
                s.flush()
                cycle_id, candidate = cycle.id, cycle.candidate
        except IntegrityError:
            raise Conflict(f"a learning cycle of line {line_name!r} is under way already") from None
        ctx.detail["cycle"] = number
        try:
            learn = get_or_create_dataset(
                engine,
                actor,
                learn_dataset_name(line_name, policy.method),
                f"training data of line {line_name} ({policy.method})",
            )
            if fresh:
                add_samples(engine, actor, learn.id, fresh)
            version = freeze(engine, actor, learn.id, eval_ratio=policy.eval_ratio)
            with reading(engine) as s:
                from core.datasets.models import DatasetSample

                through = s.scalar(
                    select(func.max(DatasetSample.id)).where(DatasetSample.dataset_id == learn.id)
                )
            job = submit_job(
                engine, actor, _job_spec(candidate, active, version.id, policy, line_name, number)
            )
            with writing(engine) as s:
                s.execute(
                    update(LearningCycle)
                    .where(LearningCycle.id == cycle_id)
                    .values(
                        dataset_version_id=version.id,
                        samples_through=through or 0,
                        new_samples=new,
                        job_id=job.id,
                        candidate=job.name,
                    )
                )
        except Exception as err:
            _close(engine, cycle_id, "failed", f"the cycle could not start: {err}")
            raise
        return get_cycle(engine, actor, line_name, number)


def _close(engine: Engine, cycle_id: int, state: str, reason: str, **values: Any) -> bool:
    """End an open cycle (only once: the update matches only while it is open)."""
    with writing(engine) as s:
        res = s.execute(
            update(LearningCycle)
            .where(LearningCycle.id == cycle_id, LearningCycle.open_line.is_not(None))
            .values(state=state, reason=reason, open_line=None, finished_at=utcnow(), **values)
        )
        return bool(res.rowcount)


def advance_cycles(engine: Engine) -> list[str]:
    """Move every open cycle on by what its job did; returns what happened, in words."""
    from core.training.jobs import load_job
    from core.training.queue import enqueue_job

    said = []
    with reading(engine) as s:
        open_ = [
            (c.id, c.number, c.state, c.job_id, c.gate_job_id, c.started_by, line.name)
            for c, line in s.execute(
                select(LearningCycle, AdapterLine)
                .join(AdapterLine, AdapterLine.id == LearningCycle.line_id)
                .where(LearningCycle.open_line.is_not(None))
            )
        ]
    for cycle_id, number, state, job_id, gate_id, owner, line in open_:
        what = f"line {line} cycle {number}"
        if state == "training" and job_id is not None:
            job = load_job(engine, job_id)
            if job is None or job.state in ("failed", "cancelled"):
                why = f"training job {job_id} {job.state if job else 'was deleted'}"
                if job is not None and job.error:
                    why += f": {job.error}"
                if _close(
                    engine,
                    cycle_id,
                    "cancelled" if job and job.state == "cancelled" else "failed",
                    why + "; the active adapter stays",
                ):
                    said.append(f"{what}: {why}")
            elif job.state == "succeeded":
                with writing(engine) as s:
                    claimed = s.execute(
                        update(LearningCycle)
                        .where(LearningCycle.id == cycle_id, LearningCycle.state == "training")
                        .values(state="gating")
                    ).rowcount
                if claimed:
                    gate = enqueue_job(
                        engine,
                        kind="gate",
                        name=f"gate-{line}-c{number}",
                        owner=owner,
                        spec={"cycle_id": cycle_id},
                        method="gate",
                        max_attempts=2,
                        output_dir=lambda i: str(_gate_dir(i)),
                        log_path=lambda i: str(_gate_log(i)),
                    )
                    with writing(engine) as s:
                        s.execute(
                            update(LearningCycle)
                            .where(LearningCycle.id == cycle_id)
                            .values(gate_job_id=gate)
                        )
                    said.append(f"{what}: trained; gate job {gate} queued")
        elif state == "gating" and gate_id is not None:
            job = load_job(engine, gate_id)
            if job is None or job.state in ("failed", "cancelled", "succeeded"):
                why = (
                    "the gate finished without a decision"
                    if job is not None and job.state == "succeeded"
                    else f"gate job {gate_id} {job.state if job else 'was deleted'}"
                    + (f": {job.error}" if job is not None and job.error else "")
                )
                if _close(engine, cycle_id, "failed", why + "; the active adapter stays"):
                    said.append(f"{what}: {why}")
    return said


def _gate_dir(job_id: int):
    from core.training.jobs import jobs_root

    return jobs_root() / str(job_id)


def _gate_log(job_id: int):
    from core.training.jobs import job_log_path

    return job_log_path(None, job_id)


def due_lines(engine: Engine, now: datetime | None = None) -> list[str]:
    """Lines whose policy wants a cycle now: enabled, none open, enough new samples, the
    interval and the wait after a failure respected."""
    now = now or utcnow()
    out = []
    with reading(engine) as s:
        for line in s.scalars(select(AdapterLine).where(AdapterLine.policy.is_not(None))):
            p = LearningPolicy.model_validate(line.policy)
            if not p.enabled:
                continue
            last = s.scalar(
                select(LearningCycle)
                .where(LearningCycle.line_id == line.id)
                .order_by(LearningCycle.number.desc())
                .limit(1)
            )
            if last is not None:
                if last.open_line is not None:
                    continue
                ended = last.finished_at or last.started_at
                if last.state in ("failed", "cancelled") and now - ended < timedelta(
                    hours=p.retry_after_hours
                ):
                    continue
                decided = _last_decided(s, line.id)
                if (
                    p.interval_hours
                    and decided is not None
                    and now - decided.started_at < timedelta(hours=p.interval_hours)
                ):
                    continue
            if _new_count(s, line, p) >= p.min_new_samples:
                out.append(line.name)
    return out


def scheduler_tick(
    engine: Engine, say: Callable[[str], None] = log.info, *, start_due: bool = True
) -> None:
    """One round of the scheduler in `clara worker`: follow open cycles and (`start_due`)
    start due ones. A scheduled cycle acts as the user who created the line."""
    from core.users import principal_for

    for line in due_lines(engine) if start_due else []:
        with reading(engine) as s:
            owner = _line(s, line).created_by
        actor = principal_for(engine, owner) or SYSTEM
        try:
            c = start_cycle(engine, actor, line, trigger="schedule")
            say(
                f"line {line}: cycle {c.number} started ({c.new_samples} new samples, "
                f"job {c.job_id})"
            )
        except Conflict:
            pass  # another worker started it a moment ago
        except Exception as err:  # the next round tries again; the cycle row says why
            say(f"line {line}: the cycle could not start: {err}")
    for what in advance_cycles(engine):
        say(what)


# Reading ---------------------------------------------------------------------------------------


def list_cycles(engine: Engine, actor: Principal, line_name: str) -> list[CycleInfo]:
    require(actor, "adapters:read")
    with reading(engine) as s:
        line = _line(s, line_name)
        rows = s.scalars(
            select(LearningCycle)
            .where(LearningCycle.line_id == line.id)
            .order_by(LearningCycle.number.desc())
        )
        return [_cycle_info(c, line.name) for c in rows]


def get_cycle(engine: Engine, actor: Principal, line_name: str, number: int) -> CycleInfo:
    from core.errors import NotFound

    require(actor, "adapters:read")
    with reading(engine) as s:
        line = _line(s, line_name)
        c = s.scalar(
            select(LearningCycle).where(
                LearningCycle.line_id == line.id, LearningCycle.number == number
            )
        )
        if c is None:
            raise NotFound(f"line {line_name!r} has no cycle {number}")
        return _cycle_info(c, line.name)
