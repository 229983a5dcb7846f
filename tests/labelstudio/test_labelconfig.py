"""Finding the Image and its Choices in a Label Studio label config."""

import pytest

from service.labelstudio.labelconfig import (
    ImageClassification,
    Unsupported,
    parse_label_config,
    project_row,
)
from service.labelstudio.targets import Target
from tests.payloads import LABEL_CONFIG

TWO = '<Choice value="a"/><Choice value="b"/>'


def test_image_with_choices() -> None:
    assert parse_label_config(LABEL_CONFIG) == ImageClassification(
        image_key="image", from_name="label", to_name="image", choices=("red", "blue")
    )


def test_nested_views_aliases_and_other_tags() -> None:
    config = """
    <View>
      <Header value="Pick one"/>
      <View style="display:flex">
        <Image name="img" value="$photo" zoom="true"/>
        <Text name="caption" value="$caption"/>
      </View>
      <Choices name="mood" toName="caption"><Choice value="x"/><Choice value="y"/></Choices>
      <Choices name="species" toName="img" choice="single-radio">
        <Choice value="Cat" alias="cat"/><Choice value="Dog"/>
      </Choices>
    </View>"""
    assert parse_label_config(config) == ImageClassification(
        image_key="photo", from_name="species", to_name="img", choices=("cat", "Dog")
    )


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ("", "no label config"),
        ("<View><Image", "not valid XML"),
        ('<View><Text name="t" value="$t"/></View>', "no <Image>"),
        ('<View><Image name="i" value="$i"/></View>', "no <Choices>"),
        (
            '<View><Image name="i" value="$i"/><Choices name="c" toName="other">'
            '<Choice value="a"/><Choice value="b"/></Choices></View>',
            "no <Choices>",
        ),
        (
            '<View><Image name="i" value="$i"/><Choices name="c" toName="i" choice="multiple">'
            "</Choices></View>",
            '<Choices name="c"> needs at least 1 choice',
        ),
        (
            '<View><Image name="i" value="$i"/><Choices name="c" toName="i">'
            '<Choice value="a"/></Choices></View>',
            "at least 2",
        ),
        (
            '<View><Image name="i" value="http://x/a.png"/><Choices name="c" toName="i">'
            '<Choice value="a"/><Choice value="b"/></Choices></View>',
            "$variable",
        ),
    ],
)
def test_unsupported_configs_say_why(config: str, reason: str) -> None:
    result = parse_label_config(config)
    assert isinstance(result, Unsupported)
    assert reason in result.reason


def test_multiple_choice_is_one_multi_label_target() -> None:
    config = (
        '<View><Image name="i" value="$img"/><Choices name="tags" toName="i" choice="multiple">'
        '<Choice value="even"/><Choice value="five+"/><Choice value="loop"/></Choices></View>'
    )
    parsed = parse_label_config(config)
    assert isinstance(parsed, ImageClassification) and not parsed.classic
    assert parsed.targets == (Target("tags", ("even", "five+", "loop"), multiple=True),)
    row = project_row({"title": "t", "label_config": config})
    assert (row["from_name"], row["choices"], row["unsupported_reason"]) == (None, None, None)
    assert row["targets"] == [
        {"from_name": "tags", "choices": ["even", "five+", "loop"], "multiple": True}
    ]


def test_several_choices_on_one_image_are_all_targets_in_config_order() -> None:
    config = (
        '<View><Image name="i" value="$img"/>'
        f'<Choices name="digit" toName="i">{TWO}</Choices>'
        '<Choices name="style" toName="i" choice="multiple"><Choice value="bold"/></Choices>'
        "</View>"
    )
    parsed = parse_label_config(config)
    assert isinstance(parsed, ImageClassification)
    assert parsed.targets == (
        Target("digit", ("a", "b")),
        Target("style", ("bold",), multiple=True),
    )
    assert project_row({"label_config": config})["targets"][0]["from_name"] == "digit"


def test_the_classic_project_row_is_unchanged() -> None:
    row = project_row({"title": "t", "label_config": LABEL_CONFIG})
    assert row["from_name"] == "label" and row["choices"] == ["red", "blue"]
    assert row["targets"] is None


def test_a_nested_data_key_is_the_dotted_path() -> None:
    config = (
        '<View><Image name="i" value="$item.img"/>'
        f'<Choices name="c" toName="i">{TWO}</Choices></View>'
    )
    parsed = parse_label_config(config)
    assert isinstance(parsed, ImageClassification) and parsed.image_key == "item.img"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (
            f'<Choices name="region" toName="i" perRegion="true">{TWO}</Choices>',
            '<Choices name="region" perRegion="true"> labels regions, not the whole image',
        ),
        (
            '<Taxonomy name="tax" toName="i"><Choice value="a"/></Taxonomy>',
            '<Taxonomy name="tax"> is not supported',
        ),
        (
            '<RectangleLabels name="boxes" toName="i"><Label value="a"/></RectangleLabels>',
            '<RectangleLabels name="boxes"> is not supported',
        ),
        ('<TextArea name="notes" toName="i"/>', '<TextArea name="notes"> is not supported'),
        ('<Rating name="stars" toName="i"/>', '<Rating name="stars"> is not supported'),
        (
            f'<Image name="j" value="$other"/><Choices name="d" toName="j">{TWO}</Choices>',
            "one image per task",
        ),
    ],
)
def test_every_refusal_names_the_tag(extra: str, reason: str) -> None:
    config = (
        f'<View><Image name="i" value="$img"/><Choices name="c" toName="i">{TWO}</Choices>'
        f"{extra}</View>"
    )
    result = parse_label_config(config)
    assert isinstance(result, Unsupported)
    assert reason in result.reason
    assert project_row({"label_config": config})["unsupported_reason"] == result.reason


def test_layout_and_object_tags_are_fine() -> None:
    config = (
        '<View><Header value="h"/><Style>.x{}</Style><View><Image name="i" value="$img"/>'
        f'<Text name="t" value="$t"/></View><Choices name="c" toName="i">{TWO}</Choices></View>'
    )
    assert isinstance(parse_label_config(config), ImageClassification)
