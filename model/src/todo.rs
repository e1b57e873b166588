//! The stored todo and its field rules.

use serde::{Deserialize, Serialize};

/// Longest accepted title, in characters.
pub const TITLE_MAX_CHARS: usize = 200;
/// Longest accepted description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 2000;
/// Longest accepted owner name (a token's `sub`), in bytes.
pub const OWNER_MAX_BYTES: usize = 128;

/// One todo as stored. Timestamps are milliseconds since the Unix epoch; the
/// renderer turns them into RFC 3339 strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    pub id: u64,
    pub owner: String,
    pub title: String,
    pub description: String,
    pub completed: bool,
    pub created_at: u64,
    pub updated_at: u64,
    /// One of the owner's categories, or none. Absent in rows written before
    /// categories existed, which read back as none.
    #[serde(default)]
    pub category_id: Option<u64>,
    /// Whether readers other than the owner see it (docs/architecture.md
    /// §13). Absent in rows written before visibility existed: those were
    /// published under the old rules, and read back as public.
    #[serde(default = "published_before_visibility")]
    pub public: bool,
}

fn published_before_visibility() -> bool {
    true
}

impl Todo {
    /// Whether `viewer` (a verified token's subject; `None` for anonymous
    /// readers and tokens that do not verify) may see this todo: a public
    /// one, or her own. The one visibility rule every read surface asks.
    #[inline]
    pub fn visible_to(&self, viewer: Option<&str>) -> bool {
        self.public || viewer == Some(self.owner.as_str())
    }
}

/// A field that breaks its rule; the server answers it with 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("title is required")]
    TitleMissing,
    #[error("title must not be blank")]
    TitleBlank,
    #[error("title is longer than {TITLE_MAX_CHARS} characters")]
    TitleTooLong,
    #[error("description is longer than {DESCRIPTION_MAX_CHARS} characters")]
    DescriptionTooLong,
    #[error("no field to change: give title, description, completed, category_id or public")]
    NothingToChange,
    #[error("text must not contain control characters")]
    ControlCharacter,
}

pub(crate) fn check_title(title: &str) -> Result<(), FieldError> {
    if title.trim().is_empty() {
        return Err(FieldError::TitleBlank);
    }
    if title.chars().count() > TITLE_MAX_CHARS {
        return Err(FieldError::TitleTooLong);
    }
    check_text(title)
}

pub(crate) fn check_description(description: &str) -> Result<(), FieldError> {
    if description.chars().count() > DESCRIPTION_MAX_CHARS {
        return Err(FieldError::DescriptionTooLong);
    }
    check_text(description)
}

/// Tabs and newlines are allowed in text; other C0/C1 controls are not.
fn check_text(text: &str) -> Result<(), FieldError> {
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(FieldError::ControlCharacter);
    }
    Ok(())
}
