"""SQLite schema, as numbered migrations applied in order inside one transaction each.

`PRAGMA user_version` holds how many have run. Never edit a released migration: append.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: scopes (keys now; users, teams, orgs, providers share the shape), counters,
    #    reservations with their owner's lease, the ledger, the audit log.
    """
    CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
    INSERT INTO meta VALUES ('config_version', '0');
    CREATE TABLE scopes (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        limits TEXT NOT NULL DEFAULT '[]',
        models TEXT NOT NULL DEFAULT '[]',
        team TEXT,
        user TEXT,
        timezone TEXT NOT NULL DEFAULT 'UTC',
        expires_at REAL,
        metadata TEXT NOT NULL DEFAULT '{}',
        secret_hash BLOB,
        prefix TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (kind, id),
        UNIQUE (kind, name)
    );
    CREATE TABLE counters (
        counter TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        settled INTEGER NOT NULL DEFAULT 0,
        reserved INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (counter, window_start)
    ) WITHOUT ROWID;
    CREATE TABLE processes (id TEXT PRIMARY KEY, heartbeat_at REAL NOT NULL);
    CREATE TABLE reservations (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at REAL NOT NULL,
        charges TEXT NOT NULL,
        info TEXT NOT NULL
    );
    CREATE INDEX reservations_owner ON reservations (owner);
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        key_id TEXT,
        key_name TEXT,
        user TEXT,
        team TEXT,
        model TEXT,
        provider TEXT,
        upstream_model TEXT,
        endpoint TEXT,
        stream INTEGER NOT NULL DEFAULT 0,
        status INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        cost_nano INTEGER NOT NULL DEFAULT 0,
        latency_ms REAL,
        ttft_ms REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        refusal TEXT,
        error TEXT
    );
    CREATE INDEX requests_created ON requests (created_at);
    CREATE INDEX requests_key ON requests (key_name, id);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        before TEXT,
        after TEXT
    );
    """,
    # 2: what a key does when its budget cannot pay a request's full max_tokens.
    """
    ALTER TABLE scopes ADD COLUMN clamp INTEGER NOT NULL DEFAULT 1;
    """,
    # 3: a team belongs to at most one org.
    """
    ALTER TABLE scopes ADD COLUMN org TEXT;
    """,
    # 4: time-of-day schedules per scope.
    """
    ALTER TABLE scopes ADD COLUMN schedules TEXT NOT NULL DEFAULT '[]';
    """,
    # 5: dashboard login sessions, shared by every process on the file. Only the SHA-256
    #    of the session token is stored; `key_tag` ties a session to the admin key that
    #    opened it, so changing that key ends every session.
    """
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        actor TEXT NOT NULL,
        key_tag TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX sessions_expiry ON sessions (expires_at);
    """,
    # 6: reservations hold only the requests in flight, written and deleted in every hot
    #    transaction: keyed by id without a rowid (the rowid table had a second, automatic
    #    index on id) and without the owner index (the lease sweep's NOT IN scans them all
    #    anyway). One page written per transaction instead of three.
    """
    CREATE TABLE reservations_new (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at REAL NOT NULL,
        charges TEXT NOT NULL,
        info TEXT NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO reservations_new (id, owner, created_at, charges, info)
        SELECT id, owner, created_at, charges, info FROM reservations;
    DROP TABLE reservations;
    ALTER TABLE reservations_new RENAME TO reservations;
    """,
    # 7: what the ledger must say beyond the numbers: the max_tokens capgate lowered a
    #    request to (NULL when untouched), flags that mark an entry for a second look
    #    (comma-separated, e.g. "over_reservation,usage_unreadable"; NULL when none), and
    #    a lookup by the x-capgate-request-id a client was given.
    """
    ALTER TABLE requests ADD COLUMN max_tokens_clamped INTEGER;
    ALTER TABLE requests ADD COLUMN flags TEXT;
    CREATE INDEX requests_request_id ON requests (request_id);
    """,
    # 8: what a key holds for a request whose worst case cannot be bounded (nano-dollars;
    #    NULL: such requests are refused).
    """
    ALTER TABLE scopes ADD COLUMN unbounded_hold_nano INTEGER;
    """,
    # 9: failed dashboard logins, shared by every process (and node) so the throttle holds
    #    across them; rows older than the throttle's window are deleted as failures come.
    """
    CREATE TABLE login_failures (client TEXT NOT NULL, failed_at REAL NOT NULL);
    CREATE INDEX login_failures_client ON login_failures (client, failed_at);
    CREATE INDEX login_failures_at ON login_failures (failed_at);
    """,
    # 10: a key whose requests go through un-reserved while the store cannot be reached
    #     (1; settled when it is back) instead of being refused (0, the default).
    """
    ALTER TABLE scopes ADD COLUMN fail_open INTEGER NOT NULL DEFAULT 0;
    """,
    # 11: hook mode. Install codes (only the SHA-256 of a code is kept; single use: `used_at`
    #     and the machine's key id are set when it is redeemed), the facts of enrolled
    #     machines that change often (not in the key scope: no config bump per prompt), and
    #     the agent's session and prompt on ledger entries.
    """
    CREATE TABLE hook_codes (
        code_hash BLOB PRIMARY KEY,
        user TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL,
        machine TEXT,
        actor TEXT NOT NULL,
        agents TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE hook_machines (
        key_id TEXT PRIMARY KEY,
        last_seen REAL,
        hook_version TEXT,
        tampered_at REAL,
        tamper_files TEXT
    );
    ALTER TABLE requests ADD COLUMN session TEXT;
    ALTER TABLE requests ADD COLUMN prompt TEXT;
    """,
    # 12: alerts: each alert's claim, inserted once by whichever process fires it first
    #     (forgotten once `expires_at`, the end of its window, has passed), and the
    #     webhook deliveries queued in the same transaction, leased to one sender at a time.
    """
    CREATE TABLE alert_claims (
        key TEXT PRIMARY KEY,
        claimed_at REAL NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX alert_claims_expiry ON alert_claims (expires_at);
    CREATE TABLE alert_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        claim TEXT NOT NULL,
        webhook TEXT NOT NULL,
        body TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_at REAL NOT NULL,
        locked_by TEXT,
        locked_until REAL NOT NULL DEFAULT 0,
        last_status INTEGER,
        last_error TEXT,
        delivered_at REAL
    );
    CREATE INDEX alert_deliveries_due ON alert_deliveries (status, next_at);
    """,
    # 13: named admins (role, teams, the password's scrypt hash) and their API tokens
    #     (only a token's SHA-256; after a rotation the previous one in `old_hash`, valid
    #     until `old_until`). Sessions name the admin as their actor.
    """
    CREATE TABLE admins (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        teams TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL DEFAULT 'active',
        password_hash TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE admin_tokens (
        id TEXT PRIMARY KEY,
        admin TEXT NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        prefix TEXT NOT NULL,
        token_hash BLOB NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL,
        rotated_at REAL,
        old_hash BLOB,
        old_until REAL
    );
    CREATE INDEX admin_tokens_admin ON admin_tokens (admin);
    CREATE INDEX admin_tokens_old ON admin_tokens (old_hash);
    """,
    # 14: key rotation: when a key's secret was last replaced, its old secrets (JSON: each
    #     one's SHA-256, when it was replaced and until when it still works) and how often
    #     the key is due for rotation (seconds; null: never).
    """
    ALTER TABLE scopes ADD COLUMN rotated_at REAL;
    ALTER TABLE scopes ADD COLUMN retired_secrets TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE scopes ADD COLUMN rotate_every REAL;
    """,
    # 15: providers and routes an admin defined at runtime (store/routing_rows.py); an API
    #     key only as AES-GCM ciphertext, its nonce and the id of the key that sealed it.
    """
    CREATE TABLE runtime_providers (
        name TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        settings TEXT NOT NULL,
        secret BLOB,
        nonce BLOB,
        key_id TEXT,
        fingerprint TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE runtime_routes (
        match TEXT PRIMARY KEY,
        settings TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    INSERT INTO meta VALUES ('routing_version', '0');
    """,
    # 16: prompt and answer logging, off unless a scope opts in (`log_bodies`): the
    #     redacted bodies of a request, by its request id (store/bodies.py), deleted by
    #     age in batches. Ledger pruning: entries older than the retention summed per UTC
    #     day and group (store/ledger_daily.py).
    """
    ALTER TABLE scopes ADD COLUMN log_bodies INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE request_bodies (
        request_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        request TEXT NOT NULL,
        answer TEXT,
        request_bytes INTEGER NOT NULL,
        answer_bytes INTEGER NOT NULL,
        truncated INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX request_bodies_at ON request_bodies (created_at);
    CREATE TABLE ledger_daily (
        created_at REAL NOT NULL,
        key_id TEXT,
        key_name TEXT,
        user TEXT,
        team TEXT,
        model TEXT,
        upstream_model TEXT,
        provider TEXT,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        requests INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        cost_nano INTEGER NOT NULL
    );
    CREATE INDEX ledger_daily_at ON ledger_daily (created_at);
    """,
    # 17: the response cache (capgate.cache): a scope's opt-in (its setting as JSON, NULL:
    #     off), and the ledger's cache facts: hit | miss | NULL, and what a hit saved.
    """
    ALTER TABLE scopes ADD COLUMN cache TEXT;
    ALTER TABLE requests ADD COLUMN cache TEXT;
    ALTER TABLE requests ADD COLUMN saved_nano INTEGER NOT NULL DEFAULT 0;
    """,
    # 18: the routing rule that matched a request (docs/routing.md), on its ledger entry.
    """
    ALTER TABLE requests ADD COLUMN rule TEXT;
    """,
    # 19: what the response cache saved, kept when days are folded (store/ledger_daily.py):
    #     hits and their saved_nano. The entries of days folded before are gone: 0 there.
    """
    ALTER TABLE ledger_daily ADD COLUMN cache_hits INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ledger_daily ADD COLUMN saved_nano INTEGER NOT NULL DEFAULT 0;
    """,
)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to the newest schema; returns the version it is at."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)
