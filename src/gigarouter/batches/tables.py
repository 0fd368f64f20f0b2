"""The batch tables (migration 0005): uploaded files, batches, and one row per finished line.

Owned by this package, on the accounts database and its migration chain (like
the web's tables, a metadata of their own). ``account_id`` is not a foreign
key: in open mode (no accounts) files and batches belong to nobody (NULL).

A line's row is written once, when the line is finished (succeeded or
failed), in the same transaction that counts it in its batch; its output line
lies in the batch's spool file at ``spool_offset`` (see files.py). A line
without a row is not finished and runs (again) when its batch is resumed.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from gigarouter.accounts.tables import NAMING, UtcDateTime

metadata = MetaData(naming_convention=NAMING)

#: Every state of a batch, as OpenAI names them.
STATUSES = ("validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
#: States a runner still has work in.
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")

batch_files = Table(
    "batch_files", metadata,
    Column("id", String(40), primary_key=True),                 # file-<hex>
    Column("account_id", String(40), nullable=True),
    Column("purpose", String(20), nullable=False),              # batch | batch_output
    Column("filename", String(255), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("lines", Integer, nullable=False),                   # non-blank lines (batch input)
    Column("path", String(255), nullable=False),                # relative to the files directory
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_batch_files_account_id_created_at", "account_id", "created_at"),
)

batches = Table(
    "batches", metadata,
    Column("id", String(40), primary_key=True),                 # batch_<hex>
    Column("account_id", String(40), nullable=True),
    Column("key_id", String(40), nullable=True),                # the key that created it (for usage records)
    Column("input_file_id", String(40), nullable=False),
    Column("endpoint", String(40), nullable=False),
    Column("completion_window", String(10), nullable=False),
    Column("status", String(16), nullable=False),
    Column("metadata_json", Text, nullable=True),
    Column("total", Integer, nullable=False),
    Column("completed", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("tokens", BigInteger, nullable=False, server_default="0"),
    Column("cost_micro", BigInteger, nullable=False, server_default="0"),
    Column("output_file_id", String(40), nullable=True),
    Column("error_file_id", String(40), nullable=True),
    Column("errors_json", Text, nullable=True),                 # batch-level errors (status failed)
    Column("runner", Integer, nullable=True),                   # the owner id of the process running it
    Column("created_at", UtcDateTime, nullable=False),
    Column("in_progress_at", UtcDateTime, nullable=True),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("finalizing_at", UtcDateTime, nullable=True),
    Column("completed_at", UtcDateTime, nullable=True),
    Column("failed_at", UtcDateTime, nullable=True),
    Column("expired_at", UtcDateTime, nullable=True),
    Column("cancelling_at", UtcDateTime, nullable=True),
    Column("cancelled_at", UtcDateTime, nullable=True),
    CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")", name="status"),
    Index("ix_batches_account_id_created_at", "account_id", "created_at"),
    Index("ix_batches_status", "status"),
)

batch_lines = Table(
    "batch_lines", metadata,
    Column("batch_id", String(40), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("line", Integer, primary_key=True),                  # 0-based, counting non-blank lines
    Column("ok", Boolean, nullable=False),                      # output file (true) or error file (false)
    Column("tokens", Integer, nullable=False),
    Column("cost_micro", BigInteger, nullable=False),
    Column("spool_offset", BigInteger, nullable=False),
    Column("spool_length", Integer, nullable=False),
)
