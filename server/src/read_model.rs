//! The read model: every todo, user and category in memory, indexed for the
//! product API's queries (docs/architecture.md §9), in both modes.
//!
//! ```text
//! embedded:     apply thread --Change--> ReadModel (it is the store)
//! distributed:  worker -> PostgreSQL --changes_since--> follower --Change--> ReadModel
//! both:         core: GET /todos?filters -> ReadModel::page (read lock) -> page cache
//! ```
//!
//! One model per process, behind a `RwLock` ([`Shared`]): the writer (the
//! apply thread or the follower) holds it while it applies a batch, cores
//! hold it while they compute a page that their page cache does not have.
//! This is the one place cores share mutable state, because a model per core
//! would hold every todo once per core. The read hot path
//! (`GET /todos?limit=N`) never touches it.
//!
//! Orders: "created" is id order (ids are time-ordered, made from the same
//! clock reading as `created_at`), "updated" is `(updated_at, id)`, "title"
//! is `(title bytes, id)`. Every order ends in the id, so it is total and a
//! keyset cursor (the last row's key) names one position exactly: a page
//! never repeats or skips a row, whatever was written meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use todo_model::{Category, Change, Facts, Todo, TodoCommand, User};

use crate::query::{Cursor, ListQuery, Sort};

/// An owner or category with at most this many todos is collected and
/// sorted when the order is not id order; a larger one is found by walking
/// the global index of the order and filtering.
const SMALL_SET: usize = 4096;
/// A search in id order first walks this many todos in that order: common
/// words fill a page long before; rarer ones are then found by the scan.
const SEARCH_WALK: usize = 4096;

/// One stored todo.
struct Row {
    todo: Todo,
    /// Its place in the slot arrays ([`ReadModel::signatures`]).
    slot: u32,
}

/// A 128-bit Bloom signature of a text's byte trigrams: a text that
/// contains a word has every bit of the word's signature. Scanning 16 bytes
/// per todo in one array rules out nearly every todo a rare word is not in
/// before any text is read (with ~50 trigrams a todo, about a third of the
/// bits are set, so a 6-letter word lets through ~0.3^4 of the rest).
fn signature(text: &[u8]) -> u128 {
    text.windows(3).fold(0u128, |sig, t| {
        let x = u32::from_le_bytes([t[0], t[1], t[2], 0]);
        sig | 1u128 << (x.wrapping_mul(0x9E37_79B1) >> 25)
    })
}

/// The signature every todo matching `query`'s words has; `None` when it
/// is not a search.
fn words_signature(query: &ListQuery) -> Option<u128> {
    query.is_search().then(|| {
        query
            .words
            .iter()
            .fold(0, |sig, w| sig | signature(w.as_bytes()))
    })
}

#[derive(Default)]
pub struct ReadModel {
    version: u64,
    /// Keyed by id, so iteration is the "created" order.
    todos: BTreeMap<u64, Row>,
    by_updated: BTreeSet<(u64, u64)>,
    by_title: BTreeSet<(Box<str>, u64)>,
    by_owner: HashMap<String, BTreeSet<u64>>,
    by_category: HashMap<u64, BTreeSet<u64>>,
    /// The public todos' ids: the snapshot's rows and every list a reader
    /// sees without `mine=true` come from these (docs/architecture.md §13).
    public: BTreeSet<u64>,
    users: HashMap<String, User>,
    categories: BTreeMap<u64, Category>,
    /// (owner, name) -> id: names are unique per owner.
    category_names: HashMap<(String, String), u64>,
    /// Per slot: the trigram signature of a todo's text, its id (0: a free
    /// slot, listed in `free_slots`), and where its text is in `texts`.
    /// Arrays, so a search scans them in order.
    signatures: Vec<u128>,
    slot_ids: Vec<u64>,
    spans: Vec<(usize, u32)>,
    free_slots: Vec<u32>,
    /// Every todo's text, `title + "\n" + description` lowercased (what `q=`
    /// words are found in), back to back in one buffer: a search reads it
    /// front to back instead of chasing one allocation per todo. Texts of
    /// changed or deleted todos stay behind as `garbage` bytes until they
    /// outweigh the rest, and the buffer is compacted.
    texts: Vec<u8>,
    garbage: usize,
}

/// A page of a list: the rows and, when more rows match, the cursor of the
/// next page.
pub struct Page<'a> {
    pub rows: Vec<&'a Todo>,
    pub next: Option<Cursor>,
}

impl ReadModel {
    pub fn new(version: u64) -> Self {
        ReadModel {
            version,
            ..ReadModel::default()
        }
    }

    /// A model of a whole state at `version` (a state file, PostgreSQL).
    pub fn from_rows(
        version: u64,
        categories: impl IntoIterator<Item = Category>,
        users: impl IntoIterator<Item = User>,
        todos: impl IntoIterator<Item = Todo>,
    ) -> Self {
        let mut model = ReadModel::new(version);
        model.put_rows(categories, users, todos);
        model
    }

    /// Put whole rows, each an insert or a replacement; categories first,
    /// since todos name them.
    pub fn put_rows(
        &mut self,
        categories: impl IntoIterator<Item = Category>,
        users: impl IntoIterator<Item = User>,
        todos: impl IntoIterator<Item = Todo>,
    ) {
        for c in categories {
            self.apply(Change::PutCategory(c));
        }
        for u in users {
            self.apply(Change::InsertUser(u));
        }
        for t in todos {
            self.apply(Change::Update(t));
        }
    }

    /// The version of the state this model holds (the snapshot's numbering).
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    pub fn len(&self) -> usize {
        self.todos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.todos.is_empty()
    }

    pub fn todo(&self, id: u64) -> Option<&Todo> {
        self.todos.get(&id).map(|r| &r.todo)
    }

    /// The public todos, newest first: what the snapshot renders.
    pub fn newest_public(&self) -> impl Iterator<Item = &Todo> {
        self.public.iter().rev().map(|id| &self.todos[id].todo)
    }

    pub fn todos(&self) -> impl Iterator<Item = &Todo> {
        self.todos.values().map(|r| &r.todo)
    }

    pub fn user(&self, username: &str) -> Option<&User> {
        self.users.get(username)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn category(&self, id: u64) -> Option<&Category> {
        self.categories.get(&id)
    }

    pub fn categories(&self) -> impl Iterator<Item = &Category> {
        self.categories.values()
    }

    /// `owner`'s categories, oldest first.
    pub fn categories_of<'a>(&'a self, owner: &'a str) -> impl Iterator<Item = &'a Category> {
        self.categories.values().filter(move |c| c.owner == owner)
    }

    /// How many todos are in category `id`.
    pub fn category_todos(&self, id: u64) -> usize {
        self.by_category.get(&id).map_or(0, BTreeSet::len)
    }

    /// The facts [`todo_model::decide`] needs for `cmd`, from this model.
    pub fn facts(&self, cmd: &TodoCommand) -> Facts<'_> {
        let needs = cmd.needs();
        Facts {
            todo: needs.todo.and_then(|id| self.todo(id)),
            category: needs.category.and_then(|id| self.category(id)),
            name_taken: needs.category_name.is_some_and(|(owner, name, except)| {
                self.category_names
                    .get(&(owner.to_string(), name.to_string()))
                    .is_some_and(|&id| id != except)
            }),
            username_taken: needs.username.is_some_and(|u| self.users.contains_key(u)),
            category_todos: needs
                .category_todos
                .map_or(0, |id| self.category_todos(id) as u64),
        }
    }

    /// Apply one change (from [`todo_model::decide`], or read back from
    /// PostgreSQL by the follower, where a put may be an insert or an update).
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Insert(todo) | Change::Update(todo) => self.put_todo(todo),
            Change::Delete(id) => self.remove_todo(id),
            Change::InsertUser(user) => {
                self.users.insert(user.username.clone(), user);
            }
            Change::PutCategory(category) => self.put_category(category),
            Change::DeleteCategory(id) => {
                if let Some(c) = self.categories.remove(&id) {
                    self.category_names.remove(&(c.owner, c.name));
                }
            }
        }
    }

    fn put_todo(&mut self, todo: Todo) {
        self.remove_todo(todo.id);
        let id = todo.id;
        self.by_updated.insert((todo.updated_at, id));
        self.by_title.insert((todo.title.as_str().into(), id));
        self.by_owner
            .entry(todo.owner.clone())
            .or_default()
            .insert(id);
        if let Some(c) = todo.category_id {
            self.by_category.entry(c).or_default().insert(id);
        }
        if todo.public {
            self.public.insert(id);
        }
        let text = format!("{}\n{}", todo.title, todo.description).to_lowercase();
        let sig = signature(text.as_bytes());
        let span = (self.texts.len(), text.len() as u32);
        self.texts.extend_from_slice(text.as_bytes());
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.signatures[slot as usize] = sig;
                self.slot_ids[slot as usize] = id;
                self.spans[slot as usize] = span;
                slot
            }
            None => {
                self.signatures.push(sig);
                self.slot_ids.push(id);
                self.spans.push(span);
                (self.slot_ids.len() - 1) as u32
            }
        };
        self.todos.insert(id, Row { todo, slot });
    }

    fn remove_todo(&mut self, id: u64) {
        let Some(Row { todo, slot, .. }) = self.todos.remove(&id) else {
            return;
        };
        self.signatures[slot as usize] = 0;
        self.slot_ids[slot as usize] = 0;
        self.garbage += self.spans[slot as usize].1 as usize;
        self.spans[slot as usize] = (0, 0);
        self.free_slots.push(slot);
        if self.garbage > self.texts.len() / 2 && self.texts.len() > 1 << 20 {
            self.compact_texts();
        }
        self.by_updated.remove(&(todo.updated_at, id));
        self.public.remove(&id);
        self.by_title.remove(&(Box::from(todo.title.as_str()), id));
        if let Some(set) = self.by_owner.get_mut(&todo.owner) {
            set.remove(&id);
            if set.is_empty() {
                self.by_owner.remove(&todo.owner);
            }
        }
        if let Some(c) = todo.category_id {
            if let Some(set) = self.by_category.get_mut(&c) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_category.remove(&c);
                }
            }
        }
    }

    fn put_category(&mut self, category: Category) {
        if let Some(old) = self.categories.remove(&category.id) {
            self.category_names.remove(&(old.owner, old.name));
        }
        self.category_names
            .insert((category.owner.clone(), category.name.clone()), category.id);
        self.categories.insert(category.id, category);
    }

    /// One page of `query`: the rows that match every filter, in the sort's
    /// order, after the cursor, at most `limit`.
    pub fn page(&self, query: &ListQuery) -> Page<'_> {
        let matches = |id: &u64| {
            self.todos
                .get(id)
                .filter(|r| query.matches(&r.todo, self.text(r)))
        };
        // The smallest set that must hold every match. A list without
        // `mine=true` holds public todos only (`matches` checks each row), so
        // with no owner or category its set is the public todos.
        let owner = query.owner.as_deref().map(|o| self.by_owner.get(o));
        let category = query.category.map(|c| self.by_category.get(&c));
        let set = match (owner, category) {
            (Some(None), _) | (_, Some(None)) => return Page::empty(),
            (Some(Some(a)), Some(Some(b))) => Some(if a.len() <= b.len() { a } else { b }),
            (Some(Some(a)), None) | (None, Some(Some(a))) => Some(a),
            (None, None) if !query.mine => Some(&self.public),
            (None, None) => None,
        };
        let limit = query.limit;
        if let Some(page) = self.search(query, set) {
            return page;
        }
        let mut rows: Vec<&Row> = Vec::with_capacity(limit + 1);
        match (query.sort, set) {
            // Id order: walk the set (or every todo) from the cursor.
            (Sort::CreatedDesc | Sort::CreatedAsc, Some(set)) => {
                let ids = id_range(set, query);
                rows.extend(ids.filter_map(|id| matches(&id)).take(limit + 1));
            }
            (Sort::CreatedDesc | Sort::CreatedAsc, None) => {
                let bounds = id_bounds(query);
                let it: Box<dyn Iterator<Item = &Row>> = if query.sort == Sort::CreatedDesc {
                    Box::new(self.todos.range(bounds).rev().map(|(_, r)| r))
                } else {
                    Box::new(self.todos.range(bounds).map(|(_, r)| r))
                };
                rows.extend(
                    it.filter(|r| query.matches(&r.todo, self.text(r)))
                        .take(limit + 1),
                );
            }
            // Another order over a small set: collect, sort, cut.
            (_, Some(set)) if set.len() <= SMALL_SET => {
                let mut all: Vec<&Row> = set
                    .iter()
                    .filter_map(matches)
                    .filter(|r| query.after_cursor(&r.todo))
                    .collect();
                all.sort_unstable_by(|a, b| query.sort.compare(&a.todo, &b.todo));
                all.truncate(limit + 1);
                rows = all;
            }
            // Another order over many rows: walk that order's index.
            (Sort::UpdatedDesc | Sort::UpdatedAsc, _) => {
                let bounds = updated_bounds(query);
                let range = self.by_updated.range(bounds);
                let it: Box<dyn Iterator<Item = &(u64, u64)>> = if query.sort == Sort::UpdatedDesc {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                rows.extend(it.filter_map(|(_, id)| matches(id)).take(limit + 1));
            }
            (Sort::TitleAsc | Sort::TitleDesc, _) => {
                let bounds = title_bounds(query);
                let range = self
                    .by_title
                    .range::<(Box<str>, u64), _>((bounds.0.as_ref(), bounds.1.as_ref()));
                let it: Box<dyn Iterator<Item = &(Box<str>, u64)>> =
                    if query.sort == Sort::TitleDesc {
                        Box::new(range.rev())
                    } else {
                        Box::new(range)
                    };
                rows.extend(it.filter_map(|(_, id)| matches(id)).take(limit + 1));
            }
        }
        Page::cut(rows, query)
    }

    fn text(&self, row: &Row) -> &[u8] {
        self.slot_text(row.slot as usize)
    }

    #[inline]
    fn slot_text(&self, slot: usize) -> &[u8] {
        let (start, len) = self.spans[slot];
        &self.texts[start..start + len as usize]
    }

    /// Copy the live texts into a new buffer, in slot order.
    fn compact_texts(&mut self) {
        let mut texts = Vec::with_capacity(self.texts.len() - self.garbage);
        for (slot, span) in self.spans.iter_mut().enumerate() {
            if self.slot_ids[slot] != 0 {
                let (start, len) = *span;
                *span = (texts.len(), len);
                texts.extend_from_slice(&self.texts[start..start + len as usize]);
            }
        }
        self.texts = texts;
        self.garbage = 0;
    }

    /// A search (`q=`) over more todos than an owner's or a category's
    /// small set: in id order, a short walk first (common words fill the
    /// page at once); then a scan of the slot arrays, reading a todo's text
    /// only when its signature has every bit of the words', and its row
    /// only when the text has every word. `None` when not a search.
    fn search(&self, query: &ListQuery, set: Option<&BTreeSet<u64>>) -> Option<Page<'_>> {
        let want = words_signature(query)?;
        if set.is_some_and(|s| s.len() <= SMALL_SET) {
            return None; // the set's own walk reads fewer todos
        }
        let limit = query.limit;
        if set.is_none() && matches!(query.sort, Sort::CreatedDesc | Sort::CreatedAsc) {
            let range = self.todos.range(id_bounds(query));
            let it: Box<dyn Iterator<Item = (&u64, &Row)>> = if query.sort == Sort::CreatedDesc {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            let mut rows = Vec::with_capacity(limit + 1);
            let mut walked = 0;
            for (_, r) in it {
                walked += 1;
                if query.matches(&r.todo, self.text(r)) {
                    rows.push(r);
                    if rows.len() > limit {
                        return Some(Page::cut(rows, query));
                    }
                }
                if walked == SEARCH_WALK {
                    break;
                }
            }
            if walked < SEARCH_WALK {
                return Some(Page::cut(rows, query)); // walked them all
            }
        }
        let mut rows: Vec<&Row> = Vec::new();
        for (i, &sig) in self.signatures.iter().enumerate() {
            if sig & want != want || self.slot_ids[i] == 0 || !query.text_matches(self.slot_text(i))
            {
                continue;
            }
            if let Some(r) = self.todos.get(&self.slot_ids[i]) {
                if query.matches(&r.todo, self.text(r)) && query.after_cursor(&r.todo) {
                    rows.push(r);
                }
            }
        }
        rows.sort_unstable_by(|a, b| query.sort.compare(&a.todo, &b.todo));
        rows.truncate(limit + 1);
        Some(Page::cut(rows, query))
    }
}

impl<'a> Page<'a> {
    fn empty() -> Self {
        Page {
            rows: Vec::new(),
            next: None,
        }
    }

    /// `rows` holds up to `limit + 1` matches in order: the page is the
    /// first `limit`, and one more means a next page.
    fn cut(mut rows: Vec<&'a Row>, query: &ListQuery) -> Self {
        let limit = query.limit;
        let next = (rows.len() > limit).then(|| {
            rows.truncate(limit);
            query.sort.cursor_of(&rows[limit - 1].todo)
        });
        Page {
            rows: rows.into_iter().map(|r| &r.todo).collect(),
            next,
        }
    }
}

/// The ids of `set` after the cursor, in the query's id order.
fn id_range<'a>(set: &'a BTreeSet<u64>, query: &ListQuery) -> Box<dyn Iterator<Item = u64> + 'a> {
    let range = set.range(id_bounds(query));
    if query.sort == Sort::CreatedDesc {
        Box::new(range.rev().copied())
    } else {
        Box::new(range.copied())
    }
}

fn id_bounds(query: &ListQuery) -> (Bound<u64>, Bound<u64>) {
    match (query.sort, &query.cursor) {
        (Sort::CreatedDesc, Some(Cursor::Created(id))) => (Bound::Unbounded, Bound::Excluded(*id)),
        (Sort::CreatedAsc, Some(Cursor::Created(id))) => (Bound::Excluded(*id), Bound::Unbounded),
        _ => (Bound::Unbounded, Bound::Unbounded),
    }
}

type UpdatedBound = Bound<(u64, u64)>;

fn updated_bounds(query: &ListQuery) -> (UpdatedBound, UpdatedBound) {
    match (query.sort, &query.cursor) {
        (Sort::UpdatedDesc, Some(Cursor::Updated(at, id))) => {
            (Bound::Unbounded, Bound::Excluded((*at, *id)))
        }
        (Sort::UpdatedAsc, Some(Cursor::Updated(at, id))) => {
            (Bound::Excluded((*at, *id)), Bound::Unbounded)
        }
        _ => (Bound::Unbounded, Bound::Unbounded),
    }
}

type TitleBound = Bound<(Box<str>, u64)>;

fn title_bounds(query: &ListQuery) -> (TitleBound, TitleBound) {
    match (query.sort, &query.cursor) {
        (Sort::TitleDesc, Some(Cursor::Title(t, id))) => {
            (Bound::Unbounded, Bound::Excluded((t.as_str().into(), *id)))
        }
        (Sort::TitleAsc, Some(Cursor::Title(t, id))) => {
            (Bound::Excluded((t.as_str().into(), *id)), Bound::Unbounded)
        }
        _ => (Bound::Unbounded, Bound::Unbounded),
    }
}

/// The process's one read model and its version, shared by the cores, the
/// writer (apply thread or follower) and the search thread.
#[derive(Clone)]
pub struct Shared {
    model: Arc<RwLock<ReadModel>>,
    /// The model's version, readable without the lock: a core's page cache
    /// checks it on every query to know whether a cached page is current.
    version: Arc<AtomicU64>,
    /// False until the model holds a whole state (the distributed path
    /// loads it from PostgreSQL after start-up).
    loaded: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    pub fn new(model: ReadModel, loaded: bool) -> Self {
        Shared {
            version: Arc::new(AtomicU64::new(model.version())),
            model: Arc::new(RwLock::new(model)),
            loaded: Arc::new(std::sync::atomic::AtomicBool::new(loaded)),
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, ReadModel> {
        // A writer that panicked left a model that is at worst one change
        // behind: keep serving it rather than failing every read.
        self.model.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Write access; the version readers see is published when the guard
    /// is dropped through [`Writer`].
    pub fn write(&self) -> Writer<'_> {
        Writer {
            guard: self.model.write().unwrap_or_else(|e| e.into_inner()),
            version: &self.version,
        }
    }

    /// Replace the whole model (the follower's first load or a reload).
    pub fn replace(&self, model: ReadModel) {
        let mut w = self.write();
        *w.guard = model;
        drop(w);
        self.loaded.store(true, Ordering::Release);
    }

    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }
}

/// Write access to the model; publishes the model's version when dropped.
pub struct Writer<'a> {
    guard: RwLockWriteGuard<'a, ReadModel>,
    version: &'a AtomicU64,
}

impl std::ops::Deref for Writer<'_> {
    type Target = ReadModel;
    fn deref(&self) -> &ReadModel {
        &self.guard
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut ReadModel {
        &mut self.guard
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        self.version.store(self.guard.version(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::ListQuery;

    fn todo(id: u64, owner: &str, title: &str, updated_at: u64, completed: bool) -> Todo {
        Todo {
            id,
            owner: owner.into(),
            title: title.into(),
            description: String::new(),
            completed,
            created_at: id,
            updated_at,
            category_id: None,
            public: true,
        }
    }

    fn model(n: u64) -> ReadModel {
        let mut m = ReadModel::new(1);
        for id in 1..=n {
            let owner = if id % 2 == 0 { "alice" } else { "bob" };
            let title = format!("t{:03}", (id * 7919) % 1000);
            m.apply(Change::Insert(todo(
                id,
                owner,
                &title,
                id % 17,
                id % 3 == 0,
            )));
        }
        m
    }

    fn walk(m: &ReadModel, query: &str) -> Vec<u64> {
        let mut q = ListQuery::parse(query, None, 20).unwrap();
        let mut seen = Vec::new();
        loop {
            let page = m.page(&q);
            seen.extend(page.rows.iter().map(|t| t.id));
            match page.next {
                Some(c) => q.cursor = Some(c),
                None => return seen,
            }
        }
    }

    /// Every order, with and without filters: walking the pages gives each
    /// match once, in the order a full sort gives.
    #[test]
    fn pages_walk_every_match_once_in_order() {
        let m = model(300);
        for sort in [
            "-created_at",
            "created_at",
            "-updated_at",
            "updated_at",
            "title",
            "-title",
        ] {
            for filter in [
                "",
                "&owner=alice",
                "&completed=false",
                "&owner=bob&completed=true",
            ] {
                let query = format!("sort={sort}&limit=7{filter}");
                let got = walk(&m, &query);
                let q = ListQuery::parse(&query, None, 20).unwrap();
                let mut want: Vec<&Todo> = m
                    .todos()
                    .filter(|t| q.matches(t, t.title.to_lowercase().as_bytes()))
                    .collect();
                want.sort_by(|a, b| q.sort.compare(a, b));
                let want: Vec<u64> = want.iter().map(|t| t.id).collect();
                assert_eq!(got, want, "{query}");
            }
        }
    }

    /// Searches give what checking every todo gives, with few candidates
    /// (signature scan) and with many (ordered walk), after deletes reuse
    /// slots.
    #[test]
    fn searches_find_what_a_full_check_finds() {
        let mut m = ReadModel::new(1);
        let words = ["milk", "bread", "report", "Garden", "tax"];
        // More todos than a search walks before it scans.
        for id in 1..=SEARCH_WALK as u64 + 3000 {
            let title = format!("{} {}", words[(id % 5) as usize], id);
            m.apply(Change::Insert(todo(id, "alice", &title, id, false)));
        }
        for id in (1..=3000u64).step_by(7) {
            m.apply(Change::Delete(id));
        }
        for id in 8001..=8100u64 {
            m.apply(Change::Insert(todo(
                id,
                "bob",
                &format!("garden {id}"),
                id,
                true,
            )));
        }
        for query in [
            "q=garden",
            "q=1234",
            "q=milk+12",
            "q=xyz",
            "q=garden&sort=title",
            "q=30&completed=true",
        ] {
            let got = walk(&m, &format!("{query}&limit=50"));
            let q = ListQuery::parse(query, None, 20).unwrap();
            let want: Vec<u64> = {
                let mut all: Vec<&Todo> = m
                    .todos()
                    .filter(|t| {
                        q.matches(
                            t,
                            format!("{}\n{}", t.title, t.description)
                                .to_lowercase()
                                .as_bytes(),
                        )
                    })
                    .collect();
                all.sort_by(|a, b| q.sort.compare(a, b));
                all.iter().map(|t| t.id).collect()
            };
            assert_eq!(got, want, "{query}");
        }
    }

    /// Deletes and edits leave texts behind until they outweigh the live
    /// ones; compacting keeps every live text where its slot says.
    #[test]
    fn texts_survive_compaction() {
        let mut m = ReadModel::new(1);
        let n = 40_000u64;
        for id in 1..=n {
            let title = format!("a fairly long title to fill the buffer, number {id:06}");
            m.apply(Change::Insert(todo(id, "alice", &title, id, false)));
        }
        let before = m.texts.len();
        for id in 1..=n {
            if id % 3 != 0 {
                m.apply(Change::Delete(id));
            }
        }
        assert!(m.texts.len() < before, "compacted");
        for id in [3, 3000, 39_999] {
            let page = m.page(&ListQuery::parse(&format!("q=number+{id:06}"), None, 20).unwrap());
            assert_eq!(page.rows.iter().map(|t| t.id).collect::<Vec<_>>(), vec![id]);
        }
        assert!(m
            .page(&ListQuery::parse("q=number+000001", None, 20).unwrap())
            .rows
            .is_empty());
        let mut edited = m.todo(30).unwrap().clone();
        edited.title = "renamed".into();
        m.apply(Change::Update(edited));
        assert_eq!(walk(&m, "q=renamed"), vec![30]);
    }

    #[test]
    fn facts_and_safe_delete() {
        let mut m = ReadModel::new(1);
        m.apply(Change::PutCategory(Category {
            id: 9,
            owner: "alice".into(),
            name: "work".into(),
            created_at: 1,
            updated_at: 1,
        }));
        let mut t = todo(1, "alice", "a", 1, false);
        t.category_id = Some(9);
        m.apply(Change::Insert(t));
        assert_eq!(m.category_todos(9), 1);
        let page = m.page(&ListQuery::parse("category=9", None, 20).unwrap());
        assert_eq!(page.rows.len(), 1);
        m.apply(Change::Delete(1));
        assert_eq!(m.category_todos(9), 0);
        m.apply(Change::DeleteCategory(9));
        assert!(m.category(9).is_none());
    }
}
