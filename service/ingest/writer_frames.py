"""The wire format between `labelloop serve` and its writer process (service/writer_process.py).

Both ends are our own code on one machine, over the child's stdin and stdout. A frame is one
kind byte, a 4-byte payload length, then the payload:

    server -> writer   SETTINGS  pickled Settings; the first frame, exactly once
                       EVENT     project id (or -1), action length, action, body (UTF-8)
                       WAKE      empty: events were appended by someone else; fold them
    writer -> server   STORED    event id, duplicate flag: the event is committed
                       FAILED    the name of the database error: the event is not stored
                       JOBS      empty: the fold queued training jobs

STORED and FAILED answer EVENT frames one for one, in order; JOBS may come at any time.
This module must never import torch (the webhook uses it).
"""

import pickle
import struct

from service.settings import Settings

SETTINGS, EVENT, WAKE = b"S", b"E", b"W"
STORED, FAILED, JOBS = b"A", b"F", b"J"

_HEADER = struct.Struct("<cI")
_EVENT = struct.Struct("<qH")  # project id (-1: none), action length in bytes
_STORED = struct.Struct("<q?")  # event id, duplicate


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def settings_frame(settings: Settings) -> bytes:
    # Pickle is safe here: the writer unpickles only what its own parent wrote into its stdin.
    return frame(SETTINGS, pickle.dumps(settings))


def read_settings(payload: bytes) -> Settings:
    settings = pickle.loads(payload)  # from the parent process, see above
    if not isinstance(settings, Settings):
        raise TypeError(f"expected Settings, got {type(settings).__name__}")
    return settings


def event_frame(action: str, project_id: int | None, body: str) -> bytes:
    action_bytes = action.encode()
    head = _EVENT.pack(-1 if project_id is None else project_id, len(action_bytes))
    return frame(EVENT, head + action_bytes + body.encode())


def read_event(payload: bytes) -> tuple[str, int | None, str]:
    project_id, action_length = _EVENT.unpack_from(payload)
    start = _EVENT.size
    action = payload[start : start + action_length].decode()
    body = payload[start + action_length :].decode()
    return action, None if project_id < 0 else project_id, body


def stored_frame(event_id: int, duplicate: bool) -> bytes:
    return frame(STORED, _STORED.pack(event_id, duplicate))


def read_stored(payload: bytes) -> tuple[int, bool]:
    event_id, duplicate = _STORED.unpack(payload)
    return int(event_id), bool(duplicate)


class FrameReader:
    """Cuts a byte stream into frames, whatever the chunks it arrives in."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Every (kind, payload) completed by ``data``, in order."""
        self._buffer += data
        frames, start = [], 0
        while len(self._buffer) - start >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self._buffer, start)
            end = start + _HEADER.size + length
            if end > len(self._buffer):
                break
            frames.append((kind, bytes(self._buffer[start + _HEADER.size : end])))
            start = end
        del self._buffer[:start]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)
