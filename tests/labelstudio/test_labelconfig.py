"""Finding the Image and its Choices in a Label Studio label config."""

import pytest

from service.labelstudio.labelconfig import ImageClassification, Unsupported, parse_label_config
from tests.payloads import LABEL_CONFIG


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
            '<Choice value="a"/><Choice value="b"/></Choices></View>',
            "multiple",
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
