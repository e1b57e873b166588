-- The indexes the queries need beyond primary keys and unique constraints,
-- applied by todo-worker at every start-up after schema.sql and the seed
-- (idempotent: IF NOT EXISTS). Every query is served by an index;
-- store/src/pg/list.rs names the index each list query uses, and
-- worker/tests/plans.rs checks the planner's choices.

-- The change feed: rows with version > a follower's.
CREATE INDEX IF NOT EXISTS todos_version ON todos (version);
CREATE INDEX IF NOT EXISTS users_version ON users (version);
CREATE INDEX IF NOT EXISTS categories_version ON categories (version);
CREATE INDEX IF NOT EXISTS deleted_version ON deleted (version);
-- The snapshot (the newest public todos) and the public lists in id order.
CREATE INDEX IF NOT EXISTS todos_public_id ON todos (id) WHERE public;
-- The list queries (pg/list.rs). "created_at order" is id order (ids are
-- time-ordered), served by the primary key.
--   owner [+ completed], newest first, keyset on id
CREATE INDEX IF NOT EXISTS todos_owner_completed_id ON todos (owner, completed, id);
--   one category's todos, newest first; also the foreign key's index (the
--   RESTRICT check and the category_todos count)
CREATE INDEX IF NOT EXISTS todos_category_id ON todos (category_id, id);
--   sort=-updated_at / updated_at, keyset on (updated_at, id)
CREATE INDEX IF NOT EXISTS todos_updated_at_id ON todos (updated_at, id);
--   sort=title / -title: byte order, like the read model's
CREATE INDEX IF NOT EXISTS todos_title_id ON todos (title COLLATE "C", id);
--   created_after / created_before
CREATE INDEX IF NOT EXISTS todos_created_at ON todos (created_at);
-- Pruning expired Idempotency-Key records.
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_ms);
