"""Backbone embeddings keyed by (image content hash, backbone identity), shared by all workers."""

from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.db import upsert, utcnow
from storage.tables import embeddings


def get_many(conn: Connection, hashes: Iterable[str], backbone: str) -> dict[str, bytes]:
    """Cached vectors (float32 bytes) for those of ``hashes`` that have one."""
    wanted = sorted(set(hashes))
    found: dict[str, bytes] = {}
    for start in range(0, len(wanted), 500):  # stay under SQLite's bound-parameter limit
        chunk = wanted[start : start + 500]
        stmt = sa.select(embeddings.c.image_hash, embeddings.c.vector).where(
            embeddings.c.backbone == backbone, embeddings.c.image_hash.in_(chunk)
        )
        found.update({row.image_hash: bytes(row.vector) for row in conn.execute(stmt)})
    return found


def put_many(conn: Connection, vectors: Mapping[str, bytes], backbone: str, dim: int) -> None:
    now = utcnow()
    rows = [
        {"image_hash": h, "backbone": backbone, "dim": dim, "vector": v, "created_at": now}
        for h, v in vectors.items()
    ]
    for start in range(0, len(rows), 200):
        upsert(conn, embeddings, rows[start : start + 200], ["image_hash", "backbone"])


def count(conn: Connection, backbone: str | None = None) -> int:
    stmt = sa.select(sa.func.count()).select_from(embeddings)
    if backbone is not None:
        stmt = stmt.where(embeddings.c.backbone == backbone)
    return int(conn.execute(stmt).scalar_one())
