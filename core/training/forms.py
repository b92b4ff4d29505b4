"""The rules of the Training page's spec form, as plain functions on plain values.

The page reads its widgets and calls these: `form_defaults` fills the form from a preset,
`field_value` turns what a widget holds into a spec value, `spec_data` turns the submitted
`FormValues` into a spec dict (which sections apply to the chosen method, the extra YAML
merged in), `spec_from_form` validates the form or the YAML editor's text, and `form_errors`
says which message shows at which field (`TOP` is the one shown above the form).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.permissions import PermissionDenied
from core.training.jobs import TrainingError
from core.training.spec import (
    SpecError,
    TrainingSpec,
    merge_yaml_settings,
    parse_spec,
    preset,
    preset_yaml,
    spec_from_dict,
)

SECTIONS = ("peft", "trainer", "quantization")
METHODS = ("lora", "qlora", "continue", "dpo")
TOP = "_top"  # the key of the message shown above the form


@dataclass(frozen=True)
class FormDefaults:
    """What a preset puts into the form."""

    method: str
    values: dict[str, Any]  # "section.key" → the widget's value (lists as "a, b")
    fields: dict[str, list[str]]  # section → the keys the form shows, in order
    yaml: str  # the YAML editor's text


def form_defaults(preset_name: str) -> FormDefaults:
    """The form's values for a preset (raises SpecError for an unknown preset)."""
    data = preset(preset_name, name="", dataset_version="")
    values = {}
    for section in SECTIONS:
        for key, value in (data.get(section) or {}).items():
            if isinstance(value, list):
                value = ", ".join(map(str, value))
            values[f"{section}.{key}"] = value
    return FormDefaults(
        method=data["method"],
        values=values,
        fields={s: list((data.get(s) or {}).keys()) for s in SECTIONS},
        yaml=preset_yaml(preset_name, name="my-adapter", dataset_version=""),
    )


def field_value(section: str, key: str, value: Any) -> Any:
    """A widget's value as the spec takes it: a comma-separated `peft.target_modules` is a
    list of module names; everything else is kept as it is."""
    if section == "peft" and key == "target_modules" and "," in str(value):
        return [part.strip() for part in str(value).split(",") if part.strip()]
    return value


@dataclass(frozen=True)
class FormValues:
    """What the form holds when it is submitted (`sections`: section → key → value)."""

    name: str
    dataset_version: Any
    method: str
    base_model: str = ""
    adapter: str | None = None
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: str = ""  # more settings as YAML, merged last


class ExtraSettingsError(SpecError):
    """The extra-settings YAML is unusable; the rest of the form was not checked yet."""


def spec_data(form: FormValues) -> dict[str, Any]:
    """The spec dict a filled-in form stands for.

    An empty base model means the configured (or demo) one; the adapter counts only for
    method continue or dpo, and keeps its LoRA settings (no peft); quantization (4 or 8
    bits and the rest of its section) counts only for qlora; empty sections are left out.
    The extra YAML is merged last, section by section (ExtraSettingsError when unusable).
    """
    data: dict[str, Any] = {
        "name": form.name,
        "dataset_version": form.dataset_version,
        "method": form.method,
    }
    if form.base_model.strip():
        data["base_model"] = form.base_model.strip()
    if form.method in ("continue", "dpo") and form.adapter:
        data["adapter"] = form.adapter
    for section in SECTIONS:
        values = form.sections.get(section)
        if values and (section != "quantization" or form.method == "qlora"):
            data[section] = dict(values)
    if form.method == "continue" or data.get("adapter"):
        data.pop("peft", None)  # a further trained adapter keeps its LoRA settings
    try:
        return merge_yaml_settings(data, form.extra)
    except SpecError as err:
        raise ExtraSettingsError(err.errors[0]["message"], field="extra") from None


def spec_from_form(form: FormValues | str) -> TrainingSpec:
    """The validated spec of the form, or of the YAML editor's text (its errors name "spec")."""
    if isinstance(form, str):
        return parse_spec(form, file="spec")
    return spec_from_dict(spec_data(form))


def form_errors(err: Exception) -> dict[str, str]:
    """Field → message for a refused submission; `TOP` holds the whole message.

    Unusable extra settings show at their box alone; a SpecError shows at every field it
    names; a TrainingError at its field (if it names one); a refused permission on top.
    """
    if isinstance(err, ExtraSettingsError):
        return {"extra": err.errors[0]["message"]}
    if isinstance(err, SpecError):
        errors = {e["field"]: e["message"] for e in err.errors} or {err.field: str(err)}
        return {**errors, TOP: str(err)}
    if isinstance(err, TrainingError):
        return {getattr(err, "field", TOP): str(err).split(": ", 1)[-1], TOP: str(err)}
    if isinstance(err, PermissionDenied):
        return {TOP: str(err)}
    raise TypeError(f"not a form error: {err!r}")
