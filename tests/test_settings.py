"""Settings: defaults, file, environment overrides, and errors that name the key."""

import re
import tomllib
from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, load_settings, parse_schedule

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_documented_file_equals_built_in_defaults() -> None:
    assert load_settings(ROOT / "settings.toml", environ={}) == Settings()


def test_every_setting_is_documented_in_settings_toml_and_readme() -> None:
    documented = tomllib.loads((ROOT / "settings.toml").read_text())
    readme = (ROOT / "README.md").read_text()
    for section, table in documented.items():
        for key in table:
            assert f"{section}.{key}" in readme, f"{section}.{key} missing from README"
    for section in (
        "server",
        "database",
        "label_studio",
        "webhook",
        "images",
        "worker",
        "training",
    ):
        defaults = getattr(Settings(), section)
        for key in vars(defaults):
            if key != "max_body_bytes":
                assert key in documented[section], f"{section}.{key} not in settings.toml"
    assert "webhook.max_body_bytes" in readme


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[training]\nthreshold = 10\n[label_studio]\napi_key = "file"\n')
    env = {
        "LABELLOOP_TRAINING__THRESHOLD": "25",
        "LABELLOOP_LABEL_STUDIO__API_KEY": "from-env",
        "LABELLOOP_PROJECTS__3__SCHEDULE": "30m",
    }
    settings = load_settings(path, environ=env)
    assert settings.training.threshold == 25
    assert settings.label_studio.api_key == "from-env"
    assert settings.training_for(3).schedule == "30m"
    assert settings.training_for(3).threshold == 25  # inherits [training]
    assert settings.training_for(4) is settings.training


def test_config_chosen_by_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9999\n")
    assert load_settings(environ={"LABELLOOP_CONFIG": str(path)}).server.port == 9999


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("[training]\nthreshold = 0\n", {}, "training.threshold"),
        ('[training]\nthreshold = "many"\n', {}, "training.threshold"),
        ("", {"LABELLOOP_SERVER__PORT": "http"}, "server.port"),
        ('[training]\narchitecture = "vgg16"\n', {}, "training.architecture"),
        ('[training]\ndevice = "tpu"\n', {}, "training.device"),
        ('[training]\nschedule = "sometimes"\n', {}, "training.schedule"),
        ('[training]\nmode = "fast"\n', {}, "training.mode"),
        ('[training]\nschedule_mode = "fast"\n', {}, "training.schedule_mode"),
        ("[training]\nfinetune_epochs = 0\n", {}, "training.finetune_epochs"),
        ('[training]\npromotion_margin = "a lot"\n', {}, "training.promotion_margin"),
        ("[training]\nkeep_versions = 0\n", {}, "training.keep_versions"),
        ("[server]\ncolour = 1\n", {}, "server.colour"),
        ('[server]\nlog_format = "xml"\n', {}, "server.log_format"),
        ("[nonsense]\n", {}, "[nonsense]"),
        ("[projects.abc]\n", {}, "projects.abc"),
        ("[projects.2]\nimage_size = 8\n", {}, "projects.2.image_size"),
        ("[training]\nmax_image_pixels = 100\n", {}, "training.max_image_pixels"),
        ('[training]\nmax_image_pixels = "big"\n', {}, "training.max_image_pixels"),
        ("[server\n", {}, "invalid TOML"),
        ('[images]\nallow_private = "maybe"\n', {}, "images.allow_private"),
        ("", {"LABELLOOP_IMAGES__ALLOW_PRIVATE": "sure"}, "images.allow_private"),
        ("[images]\ntimeout = 0\n", {}, "images.timeout"),
        ('[server]\nforwarded_allow_ips = "10.0.0.1, proxy"\n', {}, "server.forwarded_allow_ips"),
    ],
)
def test_invalid_settings_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], key: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(key)):
        load_settings(write(tmp_path, text), environ=env)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize(("value", "parsed"), [("true", True), ("0", False), ("No", False)])
def test_booleans_from_the_environment(value: str, parsed: bool) -> None:
    settings = load_settings(environ={"LABELLOOP_IMAGES__ALLOW_PRIVATE": value})
    assert settings.images.allow_private is parsed


def test_every_configured_secret_is_known_for_redaction() -> None:
    settings = load_settings(
        environ={
            "LABELLOOP_SERVER__API_TOKEN": "tok-123456",
            "LABELLOOP_SERVER__METRICS_TOKEN": "met-123456",
            "LABELLOOP_LABEL_STUDIO__API_KEY": "key-123456",
            "LABELLOOP_WEBHOOK__SECRET": "sec-123456",
            "LABELLOOP_DATABASE__URL": "postgresql+psycopg://me:p%40ss-123456@db/labelloop",
        }
    )
    assert set(settings.secrets()) == {
        "tok-123456", "met-123456", "key-123456", "sec-123456", "p%40ss-123456", "p@ss-123456"
    }  # fmt: skip


def test_secrets_stay_out_of_repr() -> None:
    settings = load_settings(
        environ={
            "LABELLOOP_SERVER__API_TOKEN": "tok-123456",
            "LABELLOOP_LABEL_STUDIO__API_KEY": "key-123456",
            "LABELLOOP_WEBHOOK__SECRET": "sec-123456",
            "LABELLOOP_SERVER__METRICS_TOKEN": "met-123456",
            "LABELLOOP_CONFIG": str(ROOT / "settings.toml"),
        }
    )
    text = repr(settings)
    assert "123456" not in text


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("", None),
        ("90s", ("interval", 90)),
        ("30m", ("interval", 1800)),
        ("2h", ("interval", 7200)),
        ("0 3 * * *", ("cron", "0 3 * * *")),
    ],
)
def test_parse_schedule(value: str, parsed: object) -> None:
    assert parse_schedule(value) == parsed


def test_max_image_pixels_takes_100_mp_photos_and_is_per_project() -> None:
    assert Settings().training.max_image_pixels == 150_000_000
    env = {
        "LABELLOOP_TRAINING__MAX_IMAGE_PIXELS": "50000000",
        "LABELLOOP_PROJECTS__3__MAX_IMAGE_PIXELS": "200000000",
    }
    settings = load_settings(ROOT / "settings.toml", environ=env)
    assert settings.training.max_image_pixels == 50_000_000
    assert settings.training_for(3).max_image_pixels == 200_000_000
