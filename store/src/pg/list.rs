//! `GET /todos` as PostgreSQL answers it (docs/architecture.md §9): the filters,
//! the six sorts and keyset pages, as one SQL statement per query.
//!
//! The read model answers the common queries from memory; this is for the
//! rest (deep pages, rare sorts) and for comparing with PostgreSQL itself
//! (todo-bench's pgbench run, the worker's `tests/plans.rs`). Each shape has
//! its index (`indexes.sql`), so every page is an index scan that stops after
//! `limit` rows:
//!
//! ```text
//! public todos (every list but `mine=true`)        todos_public_id, or the
//!                                                  shape's index, filtered
//! owner = $ [AND completed = $], id order          todos_owner_completed_id
//! category_id = $, id order                        todos_category_id
//! sort=-created_at / created_at (id order)         todos_pkey
//! sort=-updated_at / updated_at                    todos_updated_at_id
//! sort=title / -title (byte order, COLLATE "C")    todos_title_id
//! created_after / created_before                   todos_created_at (or the
//!                                                  order's index, filtered)
//! ```
//!
//! A page continues after the previous page's last row by comparing the
//! whole sort key, id last (`(updated_at, id) < ($1, $2)`), so a page never
//! repeats or skips a row while writes happen. `q=` (search) is not here:
//! no index serves substring matches without an extension (pg_trgm).

use deadpool_postgres::GenericClient;
use todo_model::Todo;
use tokio_postgres::types::ToSql;

use super::{todo_from, COLUMNS};
use crate::StoreError;

/// One `GET /todos` page: filters, order and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListTodos<'a> {
    /// Public todos only: every list but the owner's own (`mine=true`,
    /// docs/architecture.md §13).
    pub public_only: bool,
    pub owner: Option<&'a str>,
    pub completed: Option<bool>,
    pub category_id: Option<u64>,
    /// Exclusive bounds on `created_at`, Unix milliseconds.
    pub created_after: Option<u64>,
    pub created_before: Option<u64>,
    pub order: ListOrder<'a>,
    /// Rows in the page (the API allows 1..=1000).
    pub limit: u32,
}

impl Default for ListTodos<'_> {
    /// Everyone's public todos, newest first, 20 (the API's defaults).
    fn default() -> Self {
        ListTodos {
            public_only: true,
            owner: None,
            completed: None,
            category_id: None,
            created_after: None,
            created_before: None,
            order: ListOrder::Created {
                desc: true,
                after: None,
            },
            limit: 20,
        }
    }
}

/// The sort, and where the page starts: after the key of the previous page's
/// last row (`None`: the first page). Every order ends in the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOrder<'a> {
    /// `sort=-created_at` (`desc`) or `created_at`: id order, since ids are
    /// time-ordered. Key: the id.
    Created { desc: bool, after: Option<u64> },
    /// `sort=-updated_at` or `updated_at`. Key: `(updated_at, id)`.
    Updated {
        desc: bool,
        after: Option<(u64, u64)>,
    },
    /// `sort=-title` or `title`, titles compared as bytes (as the read model
    /// does). Key: `(title, id)`.
    Title {
        desc: bool,
        after: Option<(&'a str, u64)>,
    },
}

/// A parameter of a [`ListSql`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param<'a> {
    Text(&'a str),
    Int(i64),
    Bool(bool),
}

/// A list query as SQL: `text` with `$1`... and their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSql<'a> {
    pub text: String,
    params: Vec<Param<'a>>,
}

impl ListSql<'_> {
    /// The values of `$1`..., for `client.query(&sql.text, &sql.params())`.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| match p {
                Param::Text(s) => s as &(dyn ToSql + Sync),
                Param::Int(i) => i,
                Param::Bool(b) => b,
            })
            .collect()
    }

    /// The statement with its values written in as SQL literals, for tools
    /// that take plain SQL (psql, pgbench scripts, EXPLAIN in a test). The
    /// server runs `text` with [`ListSql::params`].
    pub fn inline(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        let mut rest = self.text.as_str();
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - at - 1);
            let n: usize = rest[at + 1..at + 1 + digits]
                .parse()
                .expect("a parameter number follows every $");
            match self.params[n - 1] {
                // standard_conforming_strings (on since PostgreSQL 9.1):
                // only the quote is special.
                Param::Text(s) => {
                    out.push('\'');
                    out.push_str(&s.replace('\'', "''"));
                    out.push('\'');
                }
                Param::Int(i) => out.push_str(&i.to_string()),
                Param::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            }
            rest = &rest[at + 1 + digits..];
        }
        out.push_str(rest);
        out
    }
}

/// The SQL for one page of `q`.
pub fn list_todos_sql<'a>(q: &ListTodos<'a>) -> ListSql<'a> {
    let mut params = Vec::new();
    let mut conds: Vec<String> = Vec::new();
    let mut param = |p: Param<'a>| {
        params.push(p);
        params.len()
    };
    if let Some(owner) = q.owner {
        conds.push(format!("owner = ${}", param(Param::Text(owner))));
    }
    if q.public_only {
        conds.push("public".to_string());
    }
    if let Some(completed) = q.completed {
        conds.push(format!("completed = ${}", param(Param::Bool(completed))));
    }
    if let Some(category) = q.category_id {
        conds.push(format!(
            "category_id = ${}",
            param(Param::Int(category as i64))
        ));
    }
    if let Some(t) = q.created_after {
        conds.push(format!("created_at > ${}", param(Param::Int(t as i64))));
    }
    if let Some(t) = q.created_before {
        conds.push(format!("created_at < ${}", param(Param::Int(t as i64))));
    }
    let (desc, key) = match q.order {
        ListOrder::Created { desc, .. } => (desc, "id"),
        ListOrder::Updated { desc, .. } => (desc, "updated_at, id"),
        ListOrder::Title { desc, .. } => (desc, r#"title COLLATE "C", id"#),
    };
    let cmp = if desc { "<" } else { ">" };
    match q.order {
        ListOrder::Created {
            after: Some(id), ..
        } => {
            conds.push(format!("id {cmp} ${}", param(Param::Int(id as i64))));
        }
        ListOrder::Updated {
            after: Some((at, id)),
            ..
        } => {
            let a = param(Param::Int(at as i64));
            let b = param(Param::Int(id as i64));
            conds.push(format!("(updated_at, id) {cmp} (${a}, ${b})"));
        }
        ListOrder::Title {
            after: Some((title, id)),
            ..
        } => {
            let a = param(Param::Text(title));
            let b = param(Param::Int(id as i64));
            conds.push(format!(r#"(title COLLATE "C", id) {cmp} (${a}, ${b})"#));
        }
        _ => {}
    }
    let order = if desc {
        key.split(", ")
            .map(|k| format!("{k} DESC"))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        key.to_string()
    };
    let limit = param(Param::Int(i64::from(q.limit)));
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    ListSql {
        text: format!("SELECT {COLUMNS} FROM todos{filter} ORDER BY {order} LIMIT ${limit}"),
        params,
    }
}

/// One page of `q`, in its order.
pub async fn list_todos(
    client: &impl GenericClient,
    q: &ListTodos<'_>,
) -> Result<Vec<Todo>, StoreError> {
    let sql = list_todos_sql(q);
    let stmt = client.prepare_cached(&sql.text).await?;
    let rows = client.query(&stmt, &sql.params()).await?;
    Ok(rows.iter().map(todo_from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        // The owner's own list (`mine=true`): her private todos too.
        let first = list_todos_sql(&ListTodos {
            owner: Some("alice"),
            completed: Some(false),
            public_only: false,
            ..ListTodos::default()
        });
        assert_eq!(
            first.text,
            format!("SELECT {COLUMNS} FROM todos WHERE owner = $1 AND completed = $2 ORDER BY id DESC LIMIT $3")
        );
        let public = list_todos_sql(&ListTodos {
            owner: Some("alice"),
            ..ListTodos::default()
        });
        assert_eq!(
            public.text,
            format!(
                "SELECT {COLUMNS} FROM todos WHERE owner = $1 AND public ORDER BY id DESC LIMIT $2"
            )
        );
        assert_eq!(first.params().len(), 3);
        let title = list_todos_sql(&ListTodos {
            order: ListOrder::Title {
                desc: false,
                after: Some(("it's", 7)),
            },
            ..ListTodos::default()
        });
        assert_eq!(
            title.inline(),
            format!(
                r#"SELECT {COLUMNS} FROM todos WHERE public AND (title COLLATE "C", id) > ('it''s', 7) ORDER BY title COLLATE "C", id LIMIT 20"#
            )
        );
        let updated = list_todos_sql(&ListTodos {
            order: ListOrder::Updated {
                desc: true,
                after: Some((5, 6)),
            },
            ..ListTodos::default()
        });
        assert!(updated.text.ends_with(
            "WHERE public AND (updated_at, id) < ($1, $2) ORDER BY updated_at DESC, id DESC LIMIT $3"
        ));
    }

    #[test]
    fn inline_numbers_past_nine() {
        let sql = ListSql {
            text: "$1 $10 $2".into(),
            params: (1..=10).map(Param::Int).collect(),
        };
        assert_eq!(sql.inline(), "1 10 2");
    }
}
