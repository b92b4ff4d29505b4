"""A line's learning policy: where its training data comes from, when a cycle starts, how it
trains, and the gate a new adapter must pass to be served."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.training.spec import reject_unknown_keys

# One epoch at a low learning rate: a cycle refines the active adapter, it does not retrain.
DEFAULT_TRAINER: dict[str, Any] = {
    "num_train_epochs": 1,
    "learning_rate": 1e-4,
    "per_device_train_batch_size": 4,
    "max_length": 256,
    "logging_steps": 5,
    "save_steps": 50,
}


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_regression: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="how much worse the regression perplexity may get (0.02: 2 %)",
    )
    require_improvement: bool = Field(
        default=True, description="the new data's eval perplexity must go down"
    )

    @model_validator(mode="before")
    @classmethod
    def _closest_key(cls, data: Any) -> Any:
        return reject_unknown_keys(data, cls, "gate")


class LearningPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(
        default_factory=list,
        description="datasets whose accepted samples train the line, besides the feedback "
        "datasets of its adapters (feedback-<adapter>)",
    )
    regression: str = Field(
        description="the fixed regression set: a frozen dataset version NAME@vN or id"
    )
    min_new_samples: int = Field(
        default=20, ge=1, description="a cycle starts once this many accepted samples are new"
    )
    interval_hours: float | None = Field(
        default=None,
        gt=0,
        description="and at most once per this many hours (none: as soon as enough are new)",
    )
    retry_after_hours: float = Field(
        default=1.0, ge=0, description="after a failed cycle, wait this long before the next"
    )
    # continue: SFT on the accepted samples; dpo: DPO on the accepted preference pairs
    # (from chat feedback: preferences-<adapter>). Both train the active adapter further.
    method: Literal["continue", "dpo"] = "continue"
    trainer: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_TRAINER))
    eval_ratio: float = Field(default=0.2, ge=0, lt=1)
    gate: GatePolicy = Field(default_factory=GatePolicy)
    probes: list[str] = Field(
        default_factory=list, description="prompts answered by both adapters at every gate"
    )
    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _closest_top_level(cls, data: Any) -> Any:
        return reject_unknown_keys(data, cls)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# What the policy editor starts from when a line has none yet.
POLICY_TEMPLATE = """\
regression: NAME@v1      # a frozen dataset version: the fixed regression set (required)
sources: []              # more datasets besides the feedback of the line's adapters
min_new_samples: 20      # a cycle starts once this many accepted samples are new
trainer: {num_train_epochs: 1, learning_rate: 0.0001}
gate: {max_regression: 0.02, require_improvement: true}
probes: []               # prompts both adapters answer at every gate
"""


def parse_policy_text(text: str, source: str = "policy") -> LearningPolicy:
    """The policy a YAML text holds (the page's editor, `clara learn policy set`); every
    error names `source`, the line and the field, with the closest key for a typo."""
    import yaml

    from core.training.spec import SpecError, validated

    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", err)
        raise SpecError(
            f"not valid YAML ({problem})", file=source, line=mark.line + 1 if mark else None
        ) from None
    if not isinstance(data, dict):
        raise SpecError("a policy is a mapping of keys (regression, sources, …)", file=source)
    return validated(LearningPolicy, data, file=source, root=root)


def policy_from_dict(data: dict[str, Any] | LearningPolicy) -> LearningPolicy:
    from core.training.spec import validated

    return data if isinstance(data, LearningPolicy) else validated(LearningPolicy, data)
