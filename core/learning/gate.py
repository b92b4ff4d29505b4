"""The gate of a learning cycle: a job ("gate" kind) that decides whether the newly trained
adapter replaces the line's active one.

Both adapters are loaded on one base model (PEFT, switched with `set_adapter`) and measured
on the same texts: perplexity on the policy's fixed regression set (its eval split, or all of
it when it has none) must not get worse by more than `max_regression`, and perplexity on the
new version's eval split must go down (`require_improvement`). Both answer every probe prompt
(greedy, short) so a person can read them side by side. Pass: the new adapter becomes active
("promote" in the line's history); fail: the active adapter stays. Either way the figures,
the answers and the reason are stored on the cycle, written only while this job still holds
its lease.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select

from core.training.handlers import EXIT_OK, JobContext

MAX_EVAL_TEXTS = 200  # enough for a stable figure; a gate must not take longer than training
PROBE_TOKENS = 48


def _texts(rows: list[dict[str, Any]], tokenizer: Any) -> list[str]:
    from core.training.runner import to_trl_records

    out = []
    for r in to_trl_records(rows, tokenizer):
        if "messages" in r:
            out.append(tokenizer.apply_chat_template(r["messages"], tokenize=False))
        else:
            out.append(r["text"])
    return [t for t in out if t.strip()][:MAX_EVAL_TEXTS]


def perplexity(model: Any, tokenizer: Any, texts: list[str], max_length: int = 512) -> float:
    """Token-weighted perplexity of `model` on `texts` (each truncated to `max_length`)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            n = int(enc["input_ids"].shape[1]) - 1
            if n < 1:
                continue
            loss = model(**enc, labels=enc["input_ids"]).loss
            total += float(loss) * n
            count += n
    return math.exp(min(total / count, 50.0)) if count else float("nan")


def _answer(model: Any, tokenizer: Any, prompt: str) -> str:
    import torch

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    enc = tokenizer(text, return_tensors="pt").to(model.device)
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=PROBE_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def decide(figures: dict[str, float], max_regression: float, require_improvement: bool):
    """(passed, reason) from the four perplexities."""
    old_r, new_r = figures["regression_before"], figures["regression_after"]
    old_n, new_n = figures["new_data_before"], figures["new_data_after"]
    change = (new_r - old_r) / old_r if old_r else 0.0
    said = (
        f"regression perplexity {old_r:.3f} → {new_r:.3f} ({change:+.1%}, at most "
        f"+{max_regression:.0%}); new data {old_n:.3f} → {new_n:.3f}"
    )
    if not all(math.isfinite(v) for v in figures.values()):
        return False, f"a perplexity could not be measured ({said})"
    if change > max_regression:
        return False, f"worse on the regression set: {said}"
    if require_improvement and not new_n < old_n:
        return False, f"no better on the new data: {said}"
    return True, f"passed: {said}"


def run_gate(ctx: JobContext) -> int:
    from peft import PeftModel

    from core.datasets.versions import get_version, read_version
    from core.learning.cycles import _close
    from core.learning.lines import activate
    from core.learning.models import AdapterLine, LearningCycle
    from core.learning.policy import LearningPolicy
    from core.permissions import SYSTEM
    from core.training.adapters import get_adapter
    from core.training.base_model import load_base_model
    from core.users import principal_for

    engine, log, lease = ctx.engine, ctx.log, ctx.lease
    cycle_id = int(ctx.job.spec["cycle_id"])
    with engine.connect() as conn:
        cycle = conn.execute(select(LearningCycle).where(LearningCycle.id == cycle_id)).one()
        line = conn.execute(select(AdapterLine).where(AdapterLine.id == cycle.line_id)).one()
    policy = LearningPolicy.model_validate(line.policy)
    old = get_adapter(engine, SYSTEM, cycle.from_adapter)
    new = get_adapter(engine, SYSTEM, cycle.candidate)
    log(f"gate of line {line.name} cycle {cycle.number}: {old.name} (active) vs {new.name}")
    model, tokenizer = load_base_model(old.base_model)
    model = PeftModel.from_pretrained(model, str(old.path), adapter_name="active")
    model.load_adapter(str(new.path), adapter_name="candidate")

    def measured_on(ref: int | str) -> list[str]:
        """A version's eval split as texts, or all of it when it has none."""
        version = get_version(engine, SYSTEM, ref)
        rows = read_version(version, "eval").to_pylist() or read_version(version).to_pylist()
        return _texts(rows, tokenizer)

    reg_texts = measured_on(policy.regression)
    new_texts = measured_on(cycle.dataset_version_id)
    figures: dict[str, float] = {}
    probes: list[dict[str, str]] = [{"prompt": p} for p in policy.probes]
    for which, when in (("active", "before"), ("candidate", "after")):
        model.set_adapter(which)
        figures[f"regression_{when}"] = perplexity(model, tokenizer, reg_texts)
        figures[f"new_data_{when}"] = perplexity(model, tokenizer, new_texts)
        ctx.progress(1 if when == "before" else 2, 2)
        for probe in probes:
            probe[which] = _answer(model, tokenizer, probe["prompt"])
    passed, reason = decide(figures, policy.gate.max_regression, policy.gate.require_improvement)
    log(reason)
    gate = {
        **{k: round(v, 4) for k, v in figures.items()},
        "regression_set": policy.regression,
        "regression_texts": len(reg_texts),
        "new_data_texts": len(new_texts),
        "max_regression": policy.gate.max_regression,
        "probes": probes,
    }
    if not lease.held():
        ctx.lost()
    if passed:
        actor = principal_for(engine, cycle.started_by) or SYSTEM
        activate(
            engine,
            actor,
            line.name,
            new.name,
            reason=f"cycle {cycle.number} {reason}",
            action="promote",
        )
        _close(engine, cycle_id, "promoted", reason, gate=gate)
    else:
        _close(engine, cycle_id, "kept", f"{reason}; {old.name} stays active", gate=gate)
    lease.succeed()
    return EXIT_OK
