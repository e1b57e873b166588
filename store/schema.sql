-- The distributed path's tables, applied by todo-worker at every start-up
-- (idempotent: IF NOT EXISTS throughout, so an existing database migrates:
-- new tables are created, new columns added).
--
-- Every write stamps the rows it changed with the snapshot version of its
-- transaction (`version`), and a delete leaves a tombstone in `deleted`:
-- that is the change feed a follower reads (todo_store::pg::changes_since).
-- The indexes beyond primary keys and unique constraints are in indexes.sql,
-- applied after the seed (building them over loaded rows is faster than
-- maintaining them row by row: 1,000,000 seeded todos take ~7 s, not ~14 s).
CREATE TABLE IF NOT EXISTS todos (
    id          BIGINT PRIMARY KEY,
    owner       TEXT    NOT NULL,
    title       TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    completed   BOOLEAN NOT NULL DEFAULT false,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    -- Seen by readers other than the owner (docs/architecture.md §13).
    -- Every insert says which; one that does not makes a private todo.
    public      BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS users (
    id            BIGINT PRIMARY KEY,
    username      TEXT   NOT NULL UNIQUE,
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    version       BIGINT NOT NULL DEFAULT 0
);
-- UNIQUE (owner, name) also serves "does this owner have a category of that
-- name" (the name_taken fact) and an owner's categories by name.
CREATE TABLE IF NOT EXISTS categories (
    id         BIGINT PRIMARY KEY,
    owner      TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version    BIGINT NOT NULL DEFAULT 0,
    UNIQUE (owner, name)
);
-- Columns added to todos since it was first created. ALTER TABLE takes an
-- ACCESS EXCLUSIVE lock even when IF NOT EXISTS then finds the column, and
-- waiting for it would stall every reader queued behind (a follower's
-- load_all can take seconds): only a database that lacks a column is altered.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'todos'::regclass AND attname = 'category_id' AND NOT attisdropped) THEN
        -- A category that holds todos cannot be deleted, even by a statement
        -- that bypassed todo_model::decide (RESTRICT: checked at once).
        ALTER TABLE todos ADD COLUMN IF NOT EXISTS category_id BIGINT NULL
            REFERENCES categories (id) ON DELETE RESTRICT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'todos'::regclass AND attname = 'version' AND NOT attisdropped) THEN
        -- Rows written before versions existed read as version 0: a follower
        -- gets them from its initial load (pg::load_all), never from the feed.
        ALTER TABLE todos ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 0;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'todos'::regclass AND attname = 'public' AND NOT attisdropped) THEN
        -- Rows written before visibility existed were published under the
        -- rules of their time (every reader saw every todo): they stay
        -- public. Rows written from now on say which they are, and one
        -- that does not is private.
        ALTER TABLE todos ADD COLUMN IF NOT EXISTS public BOOLEAN NOT NULL DEFAULT true;
        ALTER TABLE todos ALTER COLUMN public SET DEFAULT false;
    END IF;
END
$$;
-- Tombstones: a follower sees deletes in the feed. One per (kind, id); a row
-- put again under the same id removes its tombstone in the same transaction.
CREATE TABLE IF NOT EXISTS deleted (
    kind    TEXT   NOT NULL CHECK (kind IN ('todo', 'category')),
    id      BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS processed_commands (
    command_id   BIGINT PRIMARY KEY,
    todo_id      BIGINT NOT NULL,
    op           TEXT   NOT NULL,
    user_name    TEXT   NOT NULL,
    outcome      TEXT   NOT NULL,
    reason       TEXT,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS snapshot_version (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    version   BIGINT NOT NULL
);
INSERT INTO snapshot_version (singleton, version) VALUES (true, 0) ON CONFLICT DO NOTHING;
-- Idempotency-Key records: the first command a (user, key) was used for,
-- with the request's fingerprint; live for 24 h from created_ms (Unix ms),
-- then replaced by the next use and pruned by the servers.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    user_name   TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    fingerprint TEXT   NOT NULL,
    command_id  BIGINT NOT NULL,
    todo_id     BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (user_name, key)
);
