//! The query string of `GET /todos` beyond `limit=N` (docs/architecture.md §9):
//! filters, sort, limit and the keyset cursor, parsed into a [`ListQuery`].
//!
//! Every parameter is checked: an unknown name, a name given twice or a bad
//! value is a 400 naming the parameter, never a silently ignored filter.
//! Values are percent-decoded (`+` is a space, as in HTML forms).
//!
//! The cursor is opaque to clients (it comes from the `Link` header): the
//! base64url of the sort it belongs to and the last row's key in that sort
//! (see [`crate::read_model`] for the orders).

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::feed::{Position, Subscription};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use todo_http::HttpError;
use todo_model::todo::OWNER_MAX_BYTES;
use todo_model::{Todo, SNAPSHOT_MAX};

/// Rows per page when `limit` is not given (`--default-limit`).
pub const DEFAULT_LIMIT: usize = 20;
/// Longest `q`, in characters.
pub const Q_MAX_CHARS: usize = 200;
/// Most words in `q`.
pub const Q_MAX_WORDS: usize = 16;

/// What stays unescaped in a value of the next page's link: RFC 3986's
/// unreserved characters.
const LINK_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Every parameter `GET /todos` takes.
pub const PARAMS: [&str; 10] = [
    "completed",
    "owner",
    "mine",
    "category",
    "created_after",
    "created_before",
    "q",
    "sort",
    "limit",
    "cursor",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    CreatedDesc,
    CreatedAsc,
    UpdatedDesc,
    UpdatedAsc,
    TitleAsc,
    TitleDesc,
}

impl Sort {
    fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "-created_at" => Sort::CreatedDesc,
            "created_at" => Sort::CreatedAsc,
            "-updated_at" => Sort::UpdatedDesc,
            "updated_at" => Sort::UpdatedAsc,
            "title" => Sort::TitleAsc,
            "-title" => Sort::TitleDesc,
            _ => return None,
        })
    }

    fn tag(self) -> u8 {
        self as u8 + 1
    }

    /// The order of two todos in this sort (every order ends in the id).
    pub fn compare(self, a: &Todo, b: &Todo) -> Ordering {
        match self {
            Sort::CreatedDesc => b.id.cmp(&a.id),
            Sort::CreatedAsc => a.id.cmp(&b.id),
            Sort::UpdatedDesc => (b.updated_at, b.id).cmp(&(a.updated_at, a.id)),
            Sort::UpdatedAsc => (a.updated_at, a.id).cmp(&(b.updated_at, b.id)),
            Sort::TitleAsc => (a.title.as_bytes(), a.id).cmp(&(b.title.as_bytes(), b.id)),
            Sort::TitleDesc => (b.title.as_bytes(), b.id).cmp(&(a.title.as_bytes(), a.id)),
        }
    }

    /// The cursor that continues after `last`.
    pub fn cursor_of(self, last: &Todo) -> Cursor {
        match self {
            Sort::CreatedDesc | Sort::CreatedAsc => Cursor::Created(last.id),
            Sort::UpdatedDesc | Sort::UpdatedAsc => Cursor::Updated(last.updated_at, last.id),
            Sort::TitleAsc | Sort::TitleDesc => Cursor::Title(last.title.clone(), last.id),
        }
    }
}

/// A keyset position: the key of the last row of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    Created(u64),
    Updated(u64, u64),
    Title(String, u64),
}

impl Cursor {
    /// The opaque form, for `sort`.
    pub fn encode(&self, sort: Sort) -> String {
        let mut raw = vec![sort.tag()];
        match self {
            Cursor::Created(id) => raw.extend_from_slice(&id.to_be_bytes()),
            Cursor::Updated(at, id) => {
                raw.extend_from_slice(&at.to_be_bytes());
                raw.extend_from_slice(&id.to_be_bytes());
            }
            Cursor::Title(title, id) => {
                raw.extend_from_slice(&id.to_be_bytes());
                raw.extend_from_slice(title.as_bytes());
            }
        }
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The default sort's cursor after `id`, written into `out` without
    /// allocating (the hot path's `Link`); returns its length.
    pub fn encode_created_desc(id: u64, out: &mut [u8; 16]) -> usize {
        let mut raw = [0u8; 9];
        raw[0] = Sort::CreatedDesc.tag();
        raw[1..].copy_from_slice(&id.to_be_bytes());
        URL_SAFE_NO_PAD
            .encode_slice(raw, out)
            .expect("9 bytes encode to 12")
    }

    fn decode(s: &str, sort: Sort) -> Result<Cursor, HttpError> {
        let bad = || bad_param("cursor", "is not a cursor from this list's Link header");
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let (&tag, rest) = raw.split_first().ok_or_else(bad)?;
        if tag != sort.tag() {
            return Err(bad_param(
                "cursor",
                "belongs to another sort; keep the sort of the page it came from",
            ));
        }
        let u64_at = |at: usize| -> Result<u64, HttpError> {
            let bytes = rest.get(at..at + 8).ok_or_else(bad)?;
            Ok(u64::from_be_bytes(bytes.try_into().expect("8 bytes")))
        };
        Ok(match sort {
            Sort::CreatedDesc | Sort::CreatedAsc if rest.len() == 8 => Cursor::Created(u64_at(0)?),
            Sort::UpdatedDesc | Sort::UpdatedAsc if rest.len() == 16 => {
                Cursor::Updated(u64_at(0)?, u64_at(8)?)
            }
            Sort::TitleAsc | Sort::TitleDesc if rest.len() >= 8 => {
                let title = std::str::from_utf8(&rest[8..]).map_err(|_| bad())?;
                Cursor::Title(title.to_string(), u64_at(0)?)
            }
            _ => return Err(bad()),
        })
    }
}

/// A parsed `GET /todos` query.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub completed: Option<bool>,
    /// `owner=`, or the token's subject once `mine=true` is resolved.
    pub owner: Option<String>,
    /// `mine=true`: the list depends on the token (and is `private`).
    pub mine: bool,
    pub category: Option<u64>,
    /// Unix milliseconds, exclusive bounds on `created_at`.
    pub created_after: Option<u64>,
    pub created_before: Option<u64>,
    /// Lowercased words, each of which must appear in title or description.
    pub words: Vec<String>,
    /// A SIMD substring finder per word, built once per query.
    finders: Vec<memchr::memmem::Finder<'static>>,
    pub sort: Sort,
    pub limit: usize,
    pub cursor: Option<Cursor>,
    /// The query string without `cursor`, for the next page's link.
    link_base: String,
}

/// 400 naming the parameter.
pub fn bad_param(name: &str, problem: &str) -> HttpError {
    HttpError::with_message(400, "invalid_parameter", format!("{name} {problem}"))
}

impl ListQuery {
    /// Parse a query string; `mine_user` is the token's subject when the
    /// caller has already verified one (tests; routes resolve `mine` after).
    pub fn parse(
        query: &str,
        mine_user: Option<&str>,
        default_limit: usize,
    ) -> Result<ListQuery, HttpError> {
        let mut q = ListQuery {
            completed: None,
            owner: None,
            mine: false,
            category: None,
            created_after: None,
            created_before: None,
            words: Vec::new(),
            finders: Vec::new(),
            sort: Sort::CreatedDesc,
            limit: default_limit,
            cursor: None,
            link_base: String::new(),
        };
        let mut cursor = None;
        each_param(query, "GET /todos", &PARAMS, |name, value| {
            if name != "cursor" {
                // Re-encoded, so the link is a valid URI-Reference whatever
                // the request's target held (RFC 8288 §3: `<` `>` delimit it).
                if !q.link_base.is_empty() {
                    q.link_base.push('&');
                }
                q.link_base.push_str(name);
                q.link_base.push('=');
                q.link_base
                    .extend(percent_encoding::utf8_percent_encode(&value, LINK_VALUE));
            }
            match name {
                "completed" => q.completed = Some(parse_bool(name, &value)?),
                "owner" => {
                    if value.is_empty() || value.len() > OWNER_MAX_BYTES {
                        return Err(bad_param(name, "must be 1 to 128 bytes"));
                    }
                    q.owner = Some(value.into_owned());
                }
                "mine" => q.mine = parse_bool(name, &value)?,
                "category" => q.category = Some(category_id(name, &value)?),
                "created_after" => q.created_after = Some(parse_time(name, &value)?),
                "created_before" => q.created_before = Some(parse_time(name, &value)?),
                "q" => {
                    q.words = parse_words(&value)?;
                    q.finders = q
                        .words
                        .iter()
                        .map(|w| memchr::memmem::Finder::new(w.as_bytes()).into_owned())
                        .collect();
                }
                "sort" => {
                    q.sort = Sort::parse(&value).ok_or_else(|| {
                        bad_param(
                            name,
                            "must be one of -created_at, created_at, -updated_at, updated_at, title, -title",
                        )
                    })?
                }
                "limit" => q.limit = parse_limit(&value)?,
                _ => cursor = Some(value.into_owned()),
            }
            Ok(())
        })?;
        if q.mine && q.owner.is_some() {
            return Err(bad_param("owner", "cannot be combined with mine=true"));
        }
        if let Some(c) = cursor {
            q.cursor = Some(Cursor::decode(&c, q.sort)?);
        }
        if q.mine {
            if let Some(user) = mine_user {
                q.owner = Some(user.to_string());
            }
        }
        Ok(q)
    }

    /// Whether `todo` (with its lowercased search `text`) passes every
    /// filter and may be shown. The cursor is the walk's business, not a filter.
    #[inline]
    pub fn matches(&self, todo: &Todo, text: &[u8]) -> bool {
        // `mine=true` is the owner's own list (`owner` is her name by now):
        // her private todos too. Every other list is public todos only,
        // whoever asks (docs/architecture.md §13).
        (todo.public || self.mine)
            && self.completed.is_none_or(|c| todo.completed == c)
            && self.owner.as_deref().is_none_or(|o| todo.owner == o)
            && self.category.is_none_or(|c| todo.category_id == Some(c))
            && self.created_after.is_none_or(|t| todo.created_at > t)
            && self.created_before.is_none_or(|t| todo.created_at < t)
            && self.text_matches(text)
    }

    /// Whether every word of `q` is in `text` (lowercased title and
    /// description).
    #[inline]
    pub fn text_matches(&self, text: &[u8]) -> bool {
        self.finders.iter().all(|f| f.find(text).is_some())
    }

    /// Whether `todo` comes after the cursor in this sort.
    pub fn after_cursor(&self, todo: &Todo) -> bool {
        let Some(cursor) = &self.cursor else {
            return true;
        };
        let key = match cursor {
            Cursor::Created(id) => (0, *id, ""),
            Cursor::Updated(at, id) => (*at, *id, ""),
            Cursor::Title(t, id) => (0, *id, t.as_str()),
        };
        let mine = match cursor {
            Cursor::Created(_) => (0, todo.id, ""),
            Cursor::Updated(..) => (todo.updated_at, todo.id, ""),
            Cursor::Title(..) => (0, todo.id, todo.title.as_str()),
        };
        // Compare (title, at, id) in the sort's direction.
        let ord = (mine.2.as_bytes(), mine.0, mine.1).cmp(&(key.2.as_bytes(), key.0, key.1));
        match self.sort {
            Sort::CreatedAsc | Sort::UpdatedAsc | Sort::TitleAsc => ord == Ordering::Greater,
            _ => ord == Ordering::Less,
        }
    }

    /// Whether this is a search (`q=`), answered off the cores.
    pub fn is_search(&self) -> bool {
        !self.words.is_empty()
    }

    /// `</todos?...&cursor=...>; rel="next"` for the page after `next`.
    pub fn next_link(&self, next: &Cursor) -> String {
        let sep = if self.link_base.is_empty() { "" } else { "&" };
        format!(
            "</todos?{}{sep}cursor={}>; rel=\"next\"",
            self.link_base,
            next.encode(self.sort)
        )
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// Percent-decode a query component, `+` being a space.
fn decode(raw: &str) -> Result<Cow<'_, str>, std::str::Utf8Error> {
    if !raw.contains(['%', '+']) {
        return Ok(Cow::Borrowed(raw));
    }
    let spaced = raw.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&spaced).decode_utf8()?;
    Ok(Cow::Owned(decoded.into_owned()))
}

fn parse_bool(name: &str, value: &str) -> Result<bool, HttpError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad_param(name, "must be true or false")),
    }
}

/// Ids are plain decimal u64s, in paths (`/todos/{id}`) as in `category=`;
/// anything else names no resource.
/// Walk a query string's `name=value` pairs, each name one of `known`
/// (`route` takes them) and given once, each value percent-decoded.
fn each_param<'q>(
    query: &'q str,
    route: &str,
    known: &[&'static str],
    mut take: impl FnMut(&'static str, Cow<'q, str>) -> Result<(), HttpError>,
) -> Result<(), HttpError> {
    let mut seen = vec![false; known.len()];
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name)
            .map_err(|_| bad_param("a parameter name", "is not valid percent-encoded UTF-8"))?;
        let Some(slot) = known.iter().position(|p| *p == name) else {
            return Err(HttpError::with_message(
                400,
                "unknown_parameter",
                format!(
                    "unknown parameter {:?}; {route} takes {}",
                    truncate(&name),
                    known.join(", ")
                ),
            ));
        };
        let name = known[slot];
        if std::mem::replace(&mut seen[slot], true) {
            return Err(bad_param(name, "is given more than once"));
        }
        let value =
            decode(raw_value).map_err(|_| bad_param(name, "is not valid percent-encoded UTF-8"))?;
        take(name, value)?;
    }
    Ok(())
}

/// The parameters of `GET /todos/changes`.
const FEED_PARAMS: [&str; 4] = ["mine", "owner", "category", "since"];

/// Parse `GET /todos/changes`'s query string: `mine`, `owner` and
/// `category` narrow the feed as they narrow a list, `since` is where it
/// resumes; anything else is refused, as for lists. `mine` is resolved to
/// the token's subject by the route.
pub fn parse_subscription(query: &str) -> Result<Subscription, HttpError> {
    let mut sub = Subscription {
        mine: false,
        owner: None,
        category: None,
        since: None,
    };
    each_param(query, "GET /todos/changes", &FEED_PARAMS, |name, value| {
        match name {
            "mine" => sub.mine = parse_bool(name, &value)?,
            "owner" => {
                if value.is_empty() || value.len() > OWNER_MAX_BYTES {
                    return Err(bad_param(name, "must be 1 to 128 bytes"));
                }
                sub.owner = Some(value.into_owned());
            }
            "category" => sub.category = Some(category_id(name, &value)?),
            _ => sub.since = Some(parse_position(name, &value)?),
        }
        Ok(())
    })?;
    if sub.mine && sub.owner.is_some() {
        return Err(bad_param("owner", "cannot be combined with mine=true"));
    }
    Ok(sub)
}

/// A change feed position (`since=`, `Last-Event-ID`): `VERSION-ID` as the
/// feed's `id:` lines give it, or `VERSION`, such as a list's `ETag`.
pub fn parse_position(name: &str, value: &str) -> Result<Position, HttpError> {
    Position::parse(value.trim()).ok_or_else(|| {
        bad_param(
            name,
            "must be a position of the change feed: an event's id (VERSION-ID) or a state version",
        )
    })
}

pub fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn category_id(name: &str, value: &str) -> Result<u64, HttpError> {
    parse_id(value).ok_or_else(|| bad_param(name, "must be a category id"))
}

fn parse_limit(value: &str) -> Result<usize, HttpError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=SNAPSHOT_MAX).contains(n) && value.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| bad_param("limit", "must be an integer from 1 to 1000"))
}

/// RFC 3339 (`2026-01-31T12:00:00Z`, fractions and `+hh:mm` offsets
/// allowed) to Unix milliseconds.
pub fn parse_time(name: &str, value: &str) -> Result<u64, HttpError> {
    let bad = || {
        bad_param(
            name,
            "must be an RFC 3339 time such as 2026-01-31T12:00:00Z",
        )
    };
    let (local, offset_secs) = split_offset(value).ok_or_else(bad)?;
    let at = humantime::parse_rfc3339(&format!("{local}Z")).map_err(|_| bad())?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_millis() as i64
        - offset_secs * 1000;
    u64::try_from(ms).map_err(|_| bad())
}

/// `value` without its zone, and the zone's offset from UTC in seconds.
fn split_offset(value: &str) -> Option<(&str, i64)> {
    if let Some(local) = value.strip_suffix(['Z', 'z']) {
        return Some((local, 0));
    }
    let at = value.len().checked_sub(6)?;
    let (local, zone) = value.split_at_checked(at)?;
    let sign = match zone.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = zone[1..].split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((local, sign * (h * 3600 + m * 60)))
}

fn parse_words(value: &str) -> Result<Vec<String>, HttpError> {
    if value.chars().count() > Q_MAX_CHARS {
        return Err(bad_param("q", "is longer than 200 characters"));
    }
    let words: Vec<String> = value.split_whitespace().map(str::to_lowercase).collect();
    if words.is_empty() {
        return Err(bad_param("q", "must contain a word"));
    }
    if words.len() > Q_MAX_WORDS {
        return Err(bad_param("q", "has more than 16 words"));
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(query: &str) -> String {
        let e = ListQuery::parse(query, None, DEFAULT_LIMIT).unwrap_err();
        assert_eq!(e.status, 400, "{query}");
        String::from_utf8(e.body()).unwrap()
    }

    #[test]
    fn every_bad_parameter_is_named() {
        for (query, names) in [
            ("completed=yes", "completed"),
            ("colour=red", "colour"),
            ("owner=", "owner"),
            ("mine=1", "mine"),
            ("category=x", "category"),
            ("created_after=yesterday", "created_after"),
            ("created_before=2026-13-01T00:00:00Z", "created_before"),
            ("q=", "q"),
            ("q=++", "q"),
            ("sort=newest", "sort"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=+5", "limit"),
            ("cursor=!!", "cursor"),
            ("limit=1&limit=2", "limit"),
            ("owner=a&mine=true", "owner"),
            ("q=%ff", "q"),
        ] {
            let body = err(query);
            assert!(body.contains(names), "{query}: {body}");
        }
    }

    #[test]
    fn values_are_decoded_and_kept_for_the_link() {
        let q = ListQuery::parse("q=Buy+Milk%21&sort=title&limit=5", None, DEFAULT_LIMIT).unwrap();
        assert_eq!(q.words, vec!["buy", "milk!"]);
        assert_eq!(q.sort, Sort::TitleAsc);
        let link = q.next_link(&Cursor::Title("x".into(), 3));
        assert!(
            link.starts_with("</todos?q=Buy%20Milk%21&sort=title&limit=5&cursor="),
            "{link}"
        );
        let odd = ListQuery::parse("q=a>b%3Cc", None, DEFAULT_LIMIT).unwrap();
        let odd_link = odd.next_link(&Cursor::Created(1));
        assert!(
            odd_link.starts_with("</todos?q=a%3Eb%3Cc&cursor="),
            "{odd_link}"
        );
        let cursor = link
            .split("cursor=")
            .nth(1)
            .unwrap()
            .split('>')
            .next()
            .unwrap();
        let again =
            ListQuery::parse(&format!("sort=title&cursor={cursor}"), None, DEFAULT_LIMIT).unwrap();
        assert_eq!(again.cursor, Some(Cursor::Title("x".into(), 3)));
        assert!(
            ListQuery::parse(&format!("sort=-title&cursor={cursor}"), None, DEFAULT_LIMIT).is_err()
        );
    }

    #[test]
    fn times_take_offsets() {
        let z = parse_time("t", "2026-01-31T12:00:00Z").unwrap();
        assert_eq!(parse_time("t", "2026-01-31T14:00:00+02:00").unwrap(), z);
        assert_eq!(parse_time("t", "2026-01-31T11:30:00.000-00:30").unwrap(), z);
    }
}
