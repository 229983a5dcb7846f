"""Read a Label Studio ``label_config``: which Image tag to classify and which Choices label it.

A project is supported when its config has one ``<Image value="$key">`` (``$item.img``: a
nested key, read as Label Studio reads it) and one or more whole-image ``<Choices>`` bound to
it, single or multiple choice: one head each. Other control tags (``<Taxonomy>``,
``<RectangleLabels>``, ``<TextArea>``...) and ``perRegion`` Choices are refused up front, with a
reason that names the tag. Layout and object tags (``<View>``, ``<Header>``, ``<Text>``...) are
fine, and so are Choices bound to another object than an Image (they label something else).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

from service.labelstudio.targets import Target

# Label Studio's control tags (lowercase) other than Choices: none of them is a whole-image
# class label, so a config holding one is refused rather than half-trained.
_OTHER_CONTROLS = frozenset(
    {
        "taxonomy",
        "labels",
        "rectanglelabels",
        "rectangle",
        "polygonlabels",
        "polygon",
        "keypointlabels",
        "keypoint",
        "brushlabels",
        "brush",
        "bitmasklabels",
        "bitmask",
        "ellipselabels",
        "ellipse",
        "magicwand",
        "vectorlabels",
        "vector",
        "textarea",
        "rating",
        "number",
        "datetime",
        "ranker",
        "pairwise",
        "relations",
        "hypertextlabels",
        "paragraphlabels",
        "timeserieslabels",
        "timelinelabels",
        "videorectangle",
    }
)
_IMAGE_OBJECTS = frozenset({"image"})


@dataclass(frozen=True)
class ImageClassification:
    image_key: str  # the task data key (path) holding the image URL ("image" for value="$image")
    from_name: str  # the first Choices tag's name: results carry it as from_name
    to_name: str  # the Image tag's name
    choices: tuple[str, ...]
    multiple: bool = False  # the first Choices allows several choices
    others: tuple[Target, ...] = ()  # further Choices bound to the same Image, in config order

    @property
    def targets(self) -> tuple[Target, ...]:
        return (Target(self.from_name, self.choices, self.multiple), *self.others)

    @property
    def classic(self) -> bool:
        """One single-choice Choices: labels are plain choice strings."""
        return not self.multiple and not self.others


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
    elements = list(root.iter())
    images = {el.get("name", ""): el.get("value", "") for el in elements if _tag(el) == "image"}
    if not images:
        return Unsupported("no <Image> tag in the label config")
    for el in elements:
        if _tag(el) in _OTHER_CONTROLS:
            return Unsupported(
                f"{_named(el)} is not supported: labelloop trains whole-image Choices"
            )
    bound = [el for el in elements if _tag(el) == "choices" and el.get("toName", "") in images]
    if not bound:
        return Unsupported("no <Choices> tag bound to an <Image> (toName must name the Image)")
    to_name = bound[0].get("toName", "")
    targets: list[Target] = []
    for choices in bound:
        name = choices.get("name", "")
        if choices.get("toName", "") != to_name:
            return Unsupported(
                f'<Choices name="{name}"> labels <Image name="{choices.get("toName")}"> and '
                f'<Choices name="{bound[0].get("name", "")}"> labels <Image name="{to_name}">: '
                "labelloop classifies one image per task"
            )
        if (choices.get("perRegion") or "").lower() == "true":
            return Unsupported(
                f'<Choices name="{name}" perRegion="true"> labels regions, not the whole image'
            )
        multiple = (choices.get("choice") or "single").lower() == "multiple"
        names = tuple(
            value
            for c in choices.iter()
            if _tag(c) == "choice" and (value := c.get("alias") or c.get("value") or "")
        )
        if len(names) < (1 if multiple else 2):
            need = "1 choice" if multiple else "2 choices"
            return Unsupported(f'<Choices name="{name}"> needs at least {need}')
        targets.append(Target(name, names, multiple))
    value = images[to_name]
    if not value.startswith("$") or len(value) < 2:
        return Unsupported(f'<Image name="{to_name}"> value must be a $variable')
    first = targets[0]
    return ImageClassification(
        image_key=value[1:],
        from_name=first.from_name,
        to_name=to_name,
        choices=first.choices,
        multiple=first.multiple,
        others=tuple(targets[1:]),
    )


def _tag(element: ElementTree.Element) -> str:
    return element.tag.lower() if isinstance(element.tag, str) else ""


def _named(element: ElementTree.Element) -> str:
    name = element.get("name")
    return f'<{element.tag} name="{name}">' if name is not None else f"<{element.tag}>"


def project_row(project: Mapping[str, Any]) -> dict[str, Any]:
    """Columns of the ``projects`` row for a Label Studio project object.

    The classic project keeps ``from_name``/``choices`` and ``targets`` NULL, as it always was
    stored; any other supported project has ``targets`` (a list of ``Target.to_json()``) and no
    ``from_name``/``choices``: its labels are encoded (service/labelstudio/targets.py).
    """
    config = parse_label_config(str(project.get("label_config") or ""))
    if isinstance(config, ImageClassification) and config.classic:
        parsed: dict[str, Any] = {
            "image_key": config.image_key,
            "from_name": config.from_name,
            "to_name": config.to_name,
            "choices": list(config.choices),
            "targets": None,
            "unsupported_reason": None,
        }
    elif isinstance(config, ImageClassification):
        parsed = {
            "image_key": config.image_key,
            "from_name": None,
            "to_name": config.to_name,
            "choices": None,
            "targets": [t.to_json() for t in config.targets],
            "unsupported_reason": None,
        }
    else:
        parsed = dict.fromkeys(("image_key", "from_name", "to_name", "choices", "targets"))
        parsed["unsupported_reason"] = config.reason
    return {
        "title": str(project.get("title") or ""),
        "label_config": str(project.get("label_config") or ""),
        **parsed,
    }
