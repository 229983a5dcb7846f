"""A task's label when a project has several Choices, or one with multiple choice.

The classic project (one single-choice ``<Choices>``) labels a task with one choice, stored as
that string. Any other supported project (several Choices bound to the Image, or
``choice="multiple"``) stores one canonical string per annotation: compact JSON with sorted keys,
``{"<Choices name>": [choices in the config's order], ...}``. Equal strings mean equal labels, so
the push delta, the training snapshot and the gate compare labels as they always did.

Reading a result (``read_targets``): a single-choice Choices the annotator left empty is absent
(its head does not learn from the task); a multiple-choice Choices left empty is the empty list
(none of its labels applies: a negative for each). Choices the config does not (any longer) offer
are dropped. An annotation that answers no Choices at all, in a project without a
multiple-choice one, is no training label (None).

Nothing here imports the database, the model or HTTP: ingest reads labels with it, the jobs write
Label Studio results with it.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """One ``<Choices>`` bound to the Image: one head each."""

    from_name: str
    choices: tuple[str, ...]
    multiple: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "from_name": self.from_name,
            "choices": list(self.choices),
            "multiple": self.multiple,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Target":
        return cls(str(data["from_name"]), tuple(data["choices"]), bool(data.get("multiple")))


def targets_of(stored: Any) -> tuple[Target, ...]:
    """The targets of a ``projects.targets`` value (a JSON list; None: the classic project)."""
    if not stored:
        return ()
    return tuple(Target.from_json(t) for t in stored)


def encode(values: Mapping[str, Sequence[str]]) -> str:
    """The canonical label string of ``{from_name: [choices]}`` (choices already in order)."""
    return json.dumps(
        {k: list(v) for k, v in values.items()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def decode(label: str) -> dict[str, list[str]]:
    """``encode``'s inverse. Raises ValueError for a string that is not an encoded label."""
    data = json.loads(label)
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(c, str) for c in v) for v in data.values()
    ):
        raise ValueError(f"not an encoded label: {label!r}")
    return {str(k): list(v) for k, v in data.items()}


def read_targets(result: Any, targets: Sequence[Target]) -> str | None:
    """The canonical label of an annotation's result list under ``targets``; None when it
    carries nothing to learn from (see the module's docstring)."""
    if not targets or not isinstance(result, list):
        return None
    picked: dict[str, list[str]] = {}
    for item in result:
        if not isinstance(item, Mapping) or item.get("type") != "choices":
            continue
        value = item.get("value")
        chosen = value.get("choices") if isinstance(value, Mapping) else None
        if isinstance(chosen, list):
            picked.setdefault(str(item.get("from_name")), []).extend(str(c) for c in chosen)
    values: dict[str, list[str]] = {}
    for target in targets:
        chosen_here = set(picked.get(target.from_name, ()))
        in_order = [c for c in target.choices if c in chosen_here]
        if target.multiple:
            values[target.from_name] = in_order
        elif in_order:
            first = picked[target.from_name][0]  # the first choice, as the classic project reads
            if first in target.choices:
                values[target.from_name] = [first]
    if not values:
        return None
    return encode(values)


def result_items(label: str, to_name: str) -> list[dict[str, Any]]:
    """Label Studio result items for an encoded label: one per Choices tag, in key order (a
    multiple-choice tag with nothing chosen has none)."""
    return [
        {
            "from_name": from_name,
            "to_name": to_name,
            "type": "choices",
            "value": {"choices": chosen},
        }
        for from_name, chosen in decode(label).items()
        if chosen
    ]
