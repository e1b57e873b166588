//! Accounts and categories (docs/architecture.md §9): the stored [`User`] and
//! [`Category`], their field rules, and how they are rendered.
//!
//! A user owns todos and categories by username: a todo's `owner` is the
//! token's `sub`, which for a registered user is their username. Operators'
//! tokens (`todo-server token --sub NAME`) name owners that need not be
//! registered, so owning a todo never requires an account.

use serde::{Deserialize, Serialize};

/// Shortest and longest username, in bytes (all ASCII).
pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
/// Shortest and longest password, in characters.
pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;
/// Longest category name, in characters.
pub const CATEGORY_NAME_MAX_CHARS: usize = 100;

/// A registered user. `password_hash` is an argon2id PHC string; it never
/// leaves the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub password_hash: String,
    pub created_at: u64,
}

/// One user's category. Names are unique per owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub id: u64,
    pub owner: String,
    pub name: String,
    pub created_at: u64,
    pub updated_at: u64,
}

/// A username, password or category name that breaks its rule (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("username must be {USERNAME_MIN} to {USERNAME_MAX} characters of a-z, 0-9, '_', '.' and '-'")]
    Username,
    #[error("password must be {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters")]
    Password,
    #[error("name must be 1 to {CATEGORY_NAME_MAX_CHARS} characters, not blank, without control characters")]
    CategoryName,
}

pub fn check_username(name: &str) -> Result<(), AccountError> {
    let ok = (USERNAME_MIN..=USERNAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
    ok.then_some(()).ok_or(AccountError::Username)
}

pub fn check_password(password: &str) -> Result<(), AccountError> {
    let n = password.chars().count();
    (PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS)
        .contains(&n)
        .then_some(())
        .ok_or(AccountError::Password)
}

pub fn check_category_name(name: &str) -> Result<(), AccountError> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= CATEGORY_NAME_MAX_CHARS
        && !name.chars().any(char::is_control);
    ok.then_some(()).ok_or(AccountError::CategoryName)
}

#[derive(Serialize)]
struct UserJson<'a> {
    id: u64,
    username: &'a str,
}

#[derive(Serialize)]
struct CategoryJson<'a> {
    id: u64,
    name: &'a str,
    #[serde(serialize_with = "crate::snapshot::rfc3339")]
    created_at: u64,
    #[serde(serialize_with = "crate::snapshot::rfc3339")]
    updated_at: u64,
}

/// `{"id","username"}`: what `POST /users` and `GET /users/me` answer.
pub fn render_user(id: u64, username: &str, out: &mut Vec<u8>) {
    sonic_rs::to_writer(&mut *out, &UserJson { id, username })
        .expect("rendering into memory cannot fail");
}

/// `{"id","name","created_at","updated_at"}`.
pub fn render_category(c: &Category, out: &mut Vec<u8>) {
    let json = CategoryJson {
        id: c.id,
        name: &c.name,
        created_at: c.created_at,
        updated_at: c.updated_at,
    };
    sonic_rs::to_writer(&mut *out, &json).expect("rendering into memory cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules() {
        for good in ["abc", "a.b-c_9", &"x".repeat(32)] {
            assert_eq!(check_username(good), Ok(()), "{good}");
        }
        for bad in ["ab", "Abc", "a b", "añb", &"x".repeat(33), "", "a/bc"] {
            assert_eq!(check_username(bad), Err(AccountError::Username), "{bad}");
        }
    }

    #[test]
    fn password_and_name_rules() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"é".repeat(128)).is_ok());
        assert!(check_password(&"é".repeat(129)).is_err());
        assert!(check_category_name("Work").is_ok());
        assert!(check_category_name(" ").is_err());
        assert!(check_category_name("a\u{1}").is_err());
        assert!(check_category_name(&"n".repeat(101)).is_err());
    }
}
