"""Read a Label Studio ``label_config``: which Image tag to classify and which Choices name it.

labelloop trains a single-label image classifier, so a project is supported when its config has
an ``<Image value="$key">`` and a single-choice ``<Choices toName="...">`` bound to it.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree


@dataclass(frozen=True)
class ImageClassification:
    image_key: str  # the task data key holding the image URL ("image" for value="$image")
    from_name: str  # the Choices tag's name: results carry it as from_name
    to_name: str  # the Image tag's name
    choices: tuple[str, ...]


@dataclass(frozen=True)
class Unsupported:
    reason: str


def parse_label_config(xml: str) -> ImageClassification | Unsupported:
    if not xml or not xml.strip():
        return Unsupported("the project has no label config")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        return Unsupported(f"the label config is not valid XML: {exc}")
    images = {el.get("name", ""): el.get("value", "") for el in root.iter() if _tag(el) == "image"}
    if not images:
        return Unsupported("no <Image> tag in the label config")
    for choices in (el for el in root.iter() if _tag(el) == "choices"):
        to_name = choices.get("toName", "")
        value = images.get(to_name)
        if value is None:
            continue
        if choices.get("choice", "single").lower() == "multiple":
            return Unsupported(
                f'<Choices name="{choices.get("name")}"> allows multiple choices; '
                "labelloop trains single-label classifiers"
            )
        if not value.startswith("$") or len(value) < 2:
            return Unsupported(f'<Image name="{to_name}"> value must be a $variable')
        names = tuple(
            name
            for c in choices.iter()
            if _tag(c) == "choice" and (name := c.get("alias") or c.get("value") or "")
        )
        if len(names) < 2:
            return Unsupported(f'<Choices name="{choices.get("name")}"> needs at least 2 choices')
        return ImageClassification(
            image_key=value[1:],
            from_name=choices.get("name", ""),
            to_name=to_name,
            choices=names,
        )
    return Unsupported("no <Choices> tag bound to an <Image> (toName must name the Image)")


def _tag(element: ElementTree.Element) -> str:
    return element.tag.lower() if isinstance(element.tag, str) else ""


def project_row(project: Mapping[str, Any]) -> dict[str, Any]:
    """Columns of the ``projects`` row for a Label Studio project object."""
    config = parse_label_config(str(project.get("label_config") or ""))
    if isinstance(config, ImageClassification):
        parsed: dict[str, Any] = {
            "image_key": config.image_key,
            "from_name": config.from_name,
            "to_name": config.to_name,
            "choices": list(config.choices),
            "unsupported_reason": None,
        }
    else:
        parsed = dict.fromkeys(("image_key", "from_name", "to_name", "choices"))
        parsed["unsupported_reason"] = config.reason
    return {
        "title": str(project.get("title") or ""),
        "label_config": str(project.get("label_config") or ""),
        **parsed,
    }
