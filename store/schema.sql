-- The distributed path's tables. Every query is a primary-key lookup or
-- `ORDER BY id DESC LIMIT n` on todos(id) (ids are time-ordered).
-- Applied by todo-worker at start-up (idempotent: IF NOT EXISTS).
CREATE TABLE IF NOT EXISTS todos (
    id          BIGINT PRIMARY KEY,
    owner       TEXT    NOT NULL,
    title       TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    completed   BOOLEAN NOT NULL DEFAULT false,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
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
