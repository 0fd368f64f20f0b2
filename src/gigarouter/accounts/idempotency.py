"""``Idempotency-Key``: a retried request returns the first result and is charged once.

Records are per account. The first request with a key claims it (a row
``in_flight``, unique on (account, key)); its reservation is linked to the
claim, and settlement stores the response in the same transaction, so
"charged" and "result stored" commit together. A failure (refund, or any
error before the charge) deletes the claim: nothing was charged, so a retry
runs afresh. Concurrent duplicates wait for the first (see service.py) and
then replay its response; a key reused with a different body is refused.
Completed records are kept for ``RETENTION`` and then purged.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, exc, select, update

from gigarouter.accounts.db import transaction
from gigarouter.accounts.gate import StoredResponse
from gigarouter.accounts.tables import IdempotencyRecord, utcnow
from gigarouter.errors import Conflict, InvalidRequest

MAX_KEY_CHARS = 255
RETENTION = timedelta(hours=24)
#: Larger responses are charged once all the same, but a replay gets 409 instead of the body.
MAX_STORED_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Existing:
    """Someone already holds or used this key."""

    state: str                       # in_flight | done
    fingerprint: str
    status: int | None
    body: bytes | None


def fingerprint(payload: bytes | str | Any) -> str:
    """SHA-256 of the request: raw bytes as given, anything else as canonical JSON."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    elif not isinstance(payload, bytes | bytearray):
        payload = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable characters",
                             param="Idempotency-Key", code="invalid_idempotency_key")
    return key


def try_claim(engine: Engine, *, account_id: str, key: str, fingerprint: str, owner: int) -> str | Existing | None:
    """A new claim id; or the record that holds the key; or None when it vanished meanwhile (try again)."""
    claim_id = f"idem_{uuid.uuid4().hex}"
    try:
        with transaction(engine) as conn:
            conn.execute(IdempotencyRecord.__table__.insert().values(
                id=claim_id, account_id=account_id, key=key, fingerprint=fingerprint, state="in_flight",
                owner=owner, created_at=utcnow()))
        return claim_id
    except exc.IntegrityError:
        pass  # the key is taken: look at who has it
    with transaction(engine) as conn:
        record = conn.execute(select(IdempotencyRecord.__table__).where(
            IdempotencyRecord.account_id == account_id, IdempotencyRecord.key == key)).one_or_none()
        if record is None:
            return None
        if record.state == "done" and _expired(record.completed_at):
            conn.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record.id))
            return None
        return Existing(state=record.state, fingerprint=record.fingerprint, status=record.status,
                        body=record.response)


def replay_of(existing: Existing, fingerprint: str) -> StoredResponse | None:
    """The stored response to return, None while the first request is still running, or an error."""
    if existing.fingerprint != fingerprint:
        raise InvalidRequest("this Idempotency-Key was already used with a different request body",
                             param="Idempotency-Key", code="idempotency_key_reused")
    if existing.state != "done":
        return None
    if existing.body is None:
        raise Conflict("the request with this Idempotency-Key completed and was charged, but its response was "
                       "too large to store for replay", code="idempotency_response_not_stored")
    return StoredResponse(status=existing.status or 200, body=existing.body)


def _expired(completed_at: datetime | None) -> bool:
    return completed_at is not None and completed_at < utcnow() - RETENTION


# -- steps run inside the ledger's transactions ---------------------------------------------------

def link(conn: Connection, *, claim_id: str, reservation_id: str) -> None:
    linked = conn.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.id == claim_id, IdempotencyRecord.state == "in_flight",
               IdempotencyRecord.reservation_id.is_(None))
        .values(reservation_id=reservation_id)
    ).rowcount
    if linked != 1:  # raising rolls the reservation back with the transaction
        raise Conflict("the Idempotency-Key claim for this request is no longer held; retry the request",
                       code="idempotency_claim_lost")


def complete(conn: Connection, *, reservation_id: str, status: int, response: bytes | None) -> str | None:
    """Store the response of a settled reservation; the key it was sent under, if any."""
    if response is not None and len(response) > MAX_STORED_BYTES:
        response = None
    return conn.execute(
        update(IdempotencyRecord).where(IdempotencyRecord.reservation_id == reservation_id)
        .values(state="done", status=status, response=response, completed_at=utcnow())
        .returning(IdempotencyRecord.key)
    ).scalar_one_or_none()


def release_reservation(conn: Connection, *, reservation_id: str) -> str | None:
    """Forget the claim of a refunded reservation so that a retry runs; its key, if any."""
    return conn.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.reservation_id == reservation_id)
        .returning(IdempotencyRecord.key)
    ).scalar_one_or_none()


def abandon(conn: Connection, *, claim_id: str) -> None:
    """Drop a claim that never reached a charge (the request failed before or without settling)."""
    conn.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == claim_id,
                                                 IdempotencyRecord.state == "in_flight"))


def release_owner(conn: Connection, *, owner: int) -> int:
    """Recovery: drop the in-flight claims of a dead gateway process."""
    return conn.execute(delete(IdempotencyRecord).where(IdempotencyRecord.owner == owner,
                                                        IdempotencyRecord.state == "in_flight")).rowcount


def purge_expired(conn: Connection) -> int:
    return conn.execute(delete(IdempotencyRecord).where(IdempotencyRecord.state == "done",
                                                        IdempotencyRecord.completed_at < utcnow() - RETENTION)
                        ).rowcount
