"""The Data Manager tab client (service/labelstudio/views.py) against the fake Label Studio."""

import json

import httpx
import pytest

from service.labelstudio.client import LabelStudio
from service.labelstudio.errors import LabelStudioHTTPError
from service.labelstudio.views import REVIEW_TAB, review_filters
from tests.fake_labelstudio import TOKEN, FakeLabelStudio

pytestmark = pytest.mark.anyio


def client(fake: FakeLabelStudio) -> LabelStudio:
    return LabelStudio("http://ls.test", TOKEN, transport=fake.transport(), retries=0)


def test_the_review_filter_selects_tasks_by_annotation_id() -> None:
    [item] = review_filters([12, 7, 30])["items"]
    assert item == {
        "filter": "filter:tasks:annotations_ids",
        "operator": "contains",
        "type": "String",
        "value": "12,7,30",
    }
    assert review_filters([])["items"][0]["value"] == ""  # Label Studio: no task at all


async def test_the_tab_is_created_once_then_updated_keeping_what_users_set() -> None:
    fake = FakeLabelStudio()
    fake.views[1] = {"id": 1, "project": 1, "data": {"title": "Default"}}
    async with client(fake) as ls:
        view, created = await ls.ensure_view(1, REVIEW_TAB, review_filters([5, 6]))
        assert created and view["id"] == 2
        assert fake.views[2]["data"]["filters"]["items"][0]["value"] == "5,6"
        assert fake.views[2]["data"]["title"] == REVIEW_TAB
        fake.views[2]["data"]["hiddenColumns"] = {"explore": ["tasks:data.image"]}

        view, created = await ls.ensure_view(1, REVIEW_TAB, review_filters([9]))
    assert not created and view["id"] == 2
    assert sorted(fake.views) == [1, 2]  # the user's own tab is left alone
    data = fake.views[2]["data"]
    assert data["filters"]["items"][0]["value"] == "9"
    assert data["hiddenColumns"] == {"explore": ["tasks:data.image"]}
    assert fake.views[1]["data"] == {"title": "Default"}
    patches = [c for c in fake.calls if c.startswith("PATCH")]
    assert patches == ["PATCH /api/dm/views/2/"]


async def test_duplicate_review_tabs_are_merged_into_the_oldest() -> None:
    fake = FakeLabelStudio()
    for view_id in (4, 3):
        fake.views[view_id] = {"id": view_id, "project": 1, "data": {"title": REVIEW_TAB}}
    fake.views[8] = {"id": 8, "project": 2, "data": {"title": REVIEW_TAB}}  # another project
    async with client(fake) as ls:
        view, created = await ls.ensure_view(1, REVIEW_TAB, review_filters([1]))
    assert (view["id"], created) == (3, False)
    assert sorted(fake.views) == [3, 8]


async def test_a_refusal_is_an_http_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"detail": "You do not have permission"})

    async with LabelStudio("http://ls.test", TOKEN, transport=httpx.MockTransport(refuse)) as ls:
        with pytest.raises(LabelStudioHTTPError) as caught:
            await ls.ensure_view(1, REVIEW_TAB, review_filters([1]))
    assert caught.value.status_code == 403


async def test_a_paginated_listing_is_read_too() -> None:
    def paginated(request: httpx.Request) -> httpx.Response:
        assert request.url.params["project"] == "1"
        body = {"results": [{"id": 1, "project": 1, "data": {"title": REVIEW_TAB}}]}
        return httpx.Response(200, content=json.dumps(body))

    async with LabelStudio("http://ls.test", TOKEN, transport=httpx.MockTransport(paginated)) as ls:
        assert [v["id"] for v in await ls.list_views(1)] == [1]
