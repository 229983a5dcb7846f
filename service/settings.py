"""Settings: one TOML file plus ``LABELLOOP_<SECTION>__<KEY>`` overrides, into frozen dataclasses.

Precedence, lowest first: the built-in defaults (identical to ``settings.toml``), the file
(``--config PATH``, else ``LABELLOOP_CONFIG``, else ``./settings.toml`` when present), then the
environment. Every problem is reported as a ``SettingsError`` that names the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ENV_PREFIX = "LABELLOOP_"
ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
SAMPLING_RULES = ("least_confidence", "margin", "entropy")  # service/vision/ranking.py
MODES = ("head", "finetune")
_INTERVAL = re.compile(r"^(\d+)\s*([smhd])$")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class SettingsError(ValueError):
    """A setting is missing, of the wrong type, or out of range; the message names the key."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 9090
    api_token: str = field(default="", repr=False)
    log_format: str = "text"  # or "json": one object per line
    # Bearer token for GET /metrics; empty = open (Prometheus' habit; it holds no secrets).
    metrics_token: str = field(default="", repr=False)
    # Proxies (comma-separated IPs, or "*") whose X-Forwarded-Proto/-For are believed: behind a
    # TLS-terminating proxy the status page's cookie is then marked Secure.
    forwarded_allow_ips: str = "127.0.0.1"


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///./data/labelloop.db"


@dataclass(frozen=True)
class LabelStudioSettings:
    url: str = "http://localhost:8080"
    api_key: str = field(default="", repr=False)
    # How often to fold in what webhooks missed (also done at start); empty = only at start.
    catch_up: str = "10m"


@dataclass(frozen=True)
class WebhookSettings:
    url: str = "http://localhost:9090/webhook"
    secret: str = field(default="", repr=False)
    max_body_bytes: int = 5 * 2**20


@dataclass(frozen=True)
class ImagesSettings:
    # Seconds one image may take in all (every redirect, every byte), not per read.
    timeout: float = 30.0
    # Fetch images from loopback and private addresses other than Label Studio's own. Off:
    # whoever can import tasks could otherwise make labelloop GET internal services.
    allow_private: bool = False


@dataclass(frozen=True)
class WorkerSettings:
    # A running job whose heartbeat is older than this is taken to be orphaned (its process
    # died) and is requeued; heartbeats are sent at a third of it.
    stale_after: int = 60
    # A job orphaned this many times fails, with the error kept.
    max_attempts: int = 3


@dataclass(frozen=True)
class TrainingSettings:
    threshold: int = 50
    schedule: str = ""
    mode: str = "head"
    # The mode of scheduled runs; empty = `mode`. E.g. head on threshold, finetune nightly.
    schedule_mode: str = ""
    finetune_epochs: int = 10
    architecture: str = "resnet18"
    weights: str = "imagenet"
    device: str = "auto"
    image_size: int = 224
    # A new version is promoted unless its macro-F1 on the same held-out tasks is worse than
    # the active one's by more than this plus the noise of the difference (service/jobs/promotion).
    promotion_margin: float = 0.02
    # Versions that keep a fine-tuned network (45-94 MB each in the database): the active one
    # and the newest this many; older ones keep their row and head, and cannot be activated.
    keep_versions: int = 5
    # Images whose header declares more pixels are refused before decoding (decompression
    # bombs). 150 MP takes 100 MP photos; JPEGs are decoded at reduced scale whatever their size.
    max_image_pixels: int = 150_000_000
    # The pushed score (Label Studio sorts by it; low = look first): "least_confidence" (the
    # top probability), "margin" (top minus runner-up) or "entropy" (service/vision/ranking).
    sampling: str = "margin"
    # Move near-duplicates among the 200 most uncertain tasks behind the first of them.
    diverse: bool = True
    # Cosine similarity of standardised embeddings above which two images are near-duplicates:
    # a group stays on one side of the held-out split, and `diverse` spreads them out.
    near_duplicate: float = 0.95


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    label_studio: LabelStudioSettings = LabelStudioSettings()
    webhook: WebhookSettings = WebhookSettings()
    images: ImagesSettings = ImagesSettings()
    worker: WorkerSettings = WorkerSettings()
    training: TrainingSettings = TrainingSettings()
    # Per-project overrides of [training], keyed by Label Studio project id.
    projects: Mapping[int, TrainingSettings] = field(default_factory=dict)

    def training_for(self, project_id: int) -> TrainingSettings:
        return self.projects.get(project_id, self.training)

    def secrets(self) -> tuple[str, ...]:
        """Every configured secret value (what logs must never show)."""
        values = (
            self.label_studio.api_key,
            self.server.api_token,
            self.server.metrics_token,
            self.webhook.secret,
            *_url_passwords(self.database.url),
        )
        return tuple(v for v in values if v)


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "label_studio": LabelStudioSettings,
    "webhook": WebhookSettings,
    "images": ImagesSettings,
    "worker": WorkerSettings,
    "training": TrainingSettings,
}


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the file and the environment; raise SettingsError naming the first bad key."""
    environ = os.environ if environ is None else environ
    raw = _read_file(path, environ)
    _apply_env(raw, environ)
    return _build(raw)


def parse_schedule(value: str) -> tuple[str, int | str] | None:
    """``"30m"`` -> ("interval", 1800); ``"0 3 * * *"`` -> ("cron", expr); ``""`` -> None."""
    value = value.strip()
    if not value:
        return None
    if match := _INTERVAL.match(value):
        seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        if seconds <= 0:
            raise ValueError("interval must be positive")
        return ("interval", seconds)
    if len(value.split()) == 5:
        return ("cron", value)
    raise ValueError('expected an interval like "30m"/"2h" or a 5-field cron expression')


def _read_file(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> dict[str, Any]:
    chosen = path or environ.get(ENV_PREFIX + "CONFIG")
    candidate = Path(chosen) if chosen else Path("settings.toml")
    if not candidate.exists():
        if chosen:
            raise SettingsError(f"config file not found: {candidate}")
        return {}
    try:
        with candidate.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{candidate}: invalid TOML: {exc}") from None


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) < 2 or not all(parts):
            continue
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"{name}: {'.'.join(parts[:-1])} is not a section")
        # Environment values are strings; _coerce turns them into the declared type.
        node[parts[-1]] = value


def _build(raw: dict[str, Any]) -> Settings:
    sections: dict[str, Any] = {}
    for key in raw:
        if key not in _SECTIONS and key != "projects":
            raise SettingsError(f"unknown section [{key}]")
    for name, cls in _SECTIONS.items():
        sections[name] = _section(name, cls, raw.get(name, {}), cls())
    training: TrainingSettings = sections["training"]
    projects: dict[int, TrainingSettings] = {}
    for key, table in (raw.get("projects") or {}).items():
        if not (str(key).isascii() and str(key).isdigit()):
            raise SettingsError(f"projects.{key}: project ids are integers")
        projects[int(key)] = _section(f"projects.{key}", TrainingSettings, table, training)
    for pid, project_training in [(None, training), *projects.items()]:
        _validate_training("training" if pid is None else f"projects.{pid}", project_training)
    if sections["server"].log_format not in ("text", "json"):
        raise SettingsError('server.log_format: expected "text" or "json"')
    if not 0 < sections["server"].port < 65536:
        raise SettingsError("server.port: must be between 1 and 65535")
    try:
        parse_schedule(sections["label_studio"].catch_up)
    except ValueError as exc:
        raise SettingsError(f"label_studio.catch_up: {exc}") from None
    if not 3 <= sections["worker"].stale_after <= 86400:
        raise SettingsError("worker.stale_after: must be between 3 and 86400 seconds")
    if not 1 <= sections["worker"].max_attempts <= 100:
        raise SettingsError("worker.max_attempts: must be between 1 and 100")
    if not sections["database"].url:
        raise SettingsError("database.url: must not be empty")
    if not 0.1 <= sections["images"].timeout <= 3600:
        raise SettingsError("images.timeout: must be between 0.1 and 3600 seconds")
    try:
        trusted_proxies(sections["server"].forwarded_allow_ips)
    except ValueError as exc:
        raise SettingsError(f"server.forwarded_allow_ips: {exc}") from None
    return Settings(**sections, projects=projects)


def _section(name: str, cls: type[Any], table: Any, base: Any) -> Any:
    if not isinstance(table, dict):
        raise SettingsError(f"{name}: expected a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise SettingsError(f"{name}.{key}: unknown key")
        values[key] = _coerce(f"{name}.{key}", value, type(getattr(base, key)))
    return dataclasses.replace(base, **values)


def _coerce(key: str, value: Any, kind: type[Any]) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
            return _BOOLEANS[value.strip().lower()]
        raise SettingsError(f"{key}: expected true or false, got {_describe(value)}")
    if kind is int:
        if isinstance(value, bool):
            raise SettingsError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            return int(value)
        raise SettingsError(f"{key}: expected an integer, got {_describe(value)}")
    if kind is float:
        if isinstance(value, bool):
            raise SettingsError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{key}: expected a number, got {_describe(value)}") from None
    if kind is str:
        if isinstance(value, str):
            return value
        raise SettingsError(f"{key}: expected a string, got {_describe(value)}")
    raise SettingsError(f"{key}: unsupported type")  # pragma: no cover - known types only


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def trusted_proxies(value: str) -> frozenset[str] | None:
    """``forwarded_allow_ips`` as a set of addresses; None means every address ("*")."""
    items = {item.strip() for item in value.split(",") if item.strip()}
    if "*" in items:
        return None
    for item in items:
        ipaddress.ip_address(item)  # ValueError names the bad one
    return frozenset(items)


def _url_passwords(url: str) -> tuple[str, ...]:
    """The password in a database URL (``postgresql://user:secret@host/db``), as written and
    decoded; empty when there is none."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    return (password, unquote(password)) if password else ()


def _describe(value: Any) -> str:
    return f"{type(value).__name__}"


def _validate_training(name: str, training: TrainingSettings) -> None:
    if training.threshold < 1:
        raise SettingsError(f"{name}.threshold: must be at least 1")
    if training.mode not in MODES:
        raise SettingsError(f"{name}.mode: expected one of {', '.join(MODES)}")
    if training.schedule_mode and training.schedule_mode not in MODES:
        raise SettingsError(f"{name}.schedule_mode: expected one of {', '.join(MODES)} or empty")
    if not 1 <= training.finetune_epochs <= 1000:
        raise SettingsError(f"{name}.finetune_epochs: must be between 1 and 1000")
    if training.architecture not in ARCHITECTURES:
        raise SettingsError(f"{name}.architecture: expected one of {', '.join(ARCHITECTURES)}")
    if not training.weights:
        raise SettingsError(f'{name}.weights: "imagenet", "none" or a path to a state dict')
    if not _DEVICE.match(training.device):
        raise SettingsError(f"{name}.device: expected auto, cpu, cuda or cuda:N")
    if not 0.0 <= training.promotion_margin <= 1.0:
        raise SettingsError(f"{name}.promotion_margin: must be between 0 and 1")
    if not 1 <= training.keep_versions <= 1000:
        raise SettingsError(f"{name}.keep_versions: must be between 1 and 1000")
    if not 32 <= training.image_size <= 1024:
        raise SettingsError(f"{name}.image_size: must be between 32 and 1024")
    if not 1_000_000 <= training.max_image_pixels <= 2_000_000_000:
        raise SettingsError(f"{name}.max_image_pixels: must be between 1000000 and 2000000000")
    if training.sampling not in SAMPLING_RULES:
        raise SettingsError(f"{name}.sampling: expected one of {', '.join(SAMPLING_RULES)}")
    if not 0.5 <= training.near_duplicate <= 1.0:
        raise SettingsError(f"{name}.near_duplicate: must be between 0.5 and 1")
    try:
        parse_schedule(training.schedule)
    except ValueError as exc:
        raise SettingsError(f"{name}.schedule: {exc}") from None
