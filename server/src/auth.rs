//! Bearer tokens: HS256 JWTs (write path).
//!
//! Verification pins the algorithm to HS256 (so `alg: none` and every other
//! algorithm are refused), requires `exp`, checks `nbf` when present, and
//! checks `iss`/`aud` when configured. Secrets shorter than
//! [`MIN_SECRET_BYTES`] are refused at start-up (RFC 7518 §3.2: the key must be
//! at least as long as the hash output).

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use todo_model::todo::OWNER_MAX_BYTES;

/// Shortest accepted HS256 secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// File in the data directory holding the embedded default's secret.
pub const SECRET_FILE: &str = "jwt.secret";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("JWT secret is {0} bytes; at least {MIN_SECRET_BYTES} are required")]
    SecretTooShort(usize),
    #[error("cannot read or create the JWT secret at {path}: {source}")]
    SecretFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot sign token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// Why a request's token was refused (answered 401 with this message).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed Authorization header")]
    NotUtf8,
    #[error("Authorization must be 'Bearer <token>'")]
    NotBearer,
    #[error("invalid token: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    #[error("token sub must be 1 to {OWNER_MAX_BYTES} bytes")]
    BadSubject,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Issuer and audience rules, shared by signing and verifying.
#[derive(Debug, Clone, Default)]
pub struct TokenRules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// A verifier, one per core (cheap to build; holds no shared state).
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(secret: &[u8], rules: &TokenRules) -> Result<Self, AuthError> {
        check_secret(secret)?;
        let mut validation = Validation::new(Algorithm::HS256);
        // A configured iss/aud must also be present, not only right when given.
        let mut required = vec!["exp", "sub"];
        required.extend(rules.issuer.as_ref().map(|_| "iss"));
        required.extend(rules.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 5;
        match &rules.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &rules.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// The token's subject, from an `Authorization` header value.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<String, TokenError> {
        self.verify_claims(authorization).map(|(sub, _)| sub)
    }

    /// The token's subject and expiry (Unix seconds).
    pub fn verify_claims(&self, authorization: Option<&[u8]>) -> Result<(String, u64), TokenError> {
        let value = authorization.ok_or(TokenError::Missing)?;
        let value = std::str::from_utf8(value).map_err(|_| TokenError::NotUtf8)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(TokenError::NotBearer)?
            .trim();
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(TokenError::Invalid)?;
        let sub = data.claims.sub;
        if sub.is_empty() || sub.len() > OWNER_MAX_BYTES {
            return Err(TokenError::BadSubject);
        }
        Ok((sub, data.claims.exp))
    }
}

fn check_secret(secret: &[u8]) -> Result<(), AuthError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthError::SecretTooShort(secret.len()));
    }
    Ok(())
}

/// Sign a token for `sub`, valid for `ttl`.
pub fn issue(
    secret: &[u8],
    rules: &TokenRules,
    sub: &str,
    ttl: Duration,
) -> Result<String, AuthError> {
    check_secret(secret)?;
    let now = todo_model::now_ms() / 1000;
    let claims = Claims {
        sub: sub.to_string(),
        exp: now + ttl.as_secs().max(1),
        iat: Some(now),
        iss: rules.issuer.clone(),
        aud: rules.audience.clone(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(AuthError::Sign)
}

/// The secret: `configured` (JWT_SECRET) when given, else the one kept in
/// `data_dir`, created on first use from 32 random bytes (hex, 64 bytes).
pub fn load_secret(configured: Option<&str>, data_dir: &Path) -> Result<Vec<u8>, AuthError> {
    if let Some(s) = configured {
        check_secret(s.as_bytes())?;
        return Ok(s.as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
    let io = |source| AuthError::SecretFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let trimmed = bytes.trim_ascii().to_vec();
            check_secret(&trimmed)?;
            Ok(trimmed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let mut raw = [0u8; 32];
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut raw))
                .map_err(io)?;
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            // Written to a temporary name first so a crash never leaves a
            // half-written secret that later tokens would not match.
            let tmp = data_dir.join(format!("{SECRET_FILE}.tmp"));
            {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                use std::io::Write;
                f.write_all(hex.as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(io)?;
            }
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(hex.into_bytes())
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    fn sign(claims: &sonic_rs::Value, alg: Algorithm, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn claims(extra: &str) -> sonic_rs::Value {
        let now = todo_model::now_ms() / 1000;
        sonic_rs::from_str(&format!(r#"{{"sub":"alice","exp":{}{extra}}}"#, now + 600)).unwrap()
    }

    #[test]
    fn token_table() {
        let rules = TokenRules::default();
        let v = Verifier::new(SECRET, &rules).unwrap();
        let good = issue(SECRET, &rules, "alice", Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(Some(&bearer(&good))).unwrap(), "alice");

        let now = todo_model::now_ms() / 1000;
        let expired: sonic_rs::Value =
            sonic_rs::from_str(&format!(r#"{{"sub":"a","exp":{}}}"#, now - 600)).unwrap();
        let no_exp: sonic_rs::Value = sonic_rs::from_str(r#"{"sub":"a"}"#).unwrap();
        let not_yet = claims(&format!(r#","nbf":{}"#, now + 300));
        let other_secret = b"ffffffffffffffffffffffffffffffff";
        // alg: none, hand-made: header {"alg":"none","typ":"JWT"}.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            good.split('.').nth(1).unwrap()
        );
        let bad: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"Basic abc".to_vec(),
            bearer("not.a.token"),
            bearer(&sign(&claims(""), Algorithm::HS256, other_secret)),
            bearer(&sign(&claims(""), Algorithm::HS384, SECRET)),
            bearer(&sign(&claims(""), Algorithm::HS512, SECRET)),
            bearer(&none),
            bearer(&sign(&expired, Algorithm::HS256, SECRET)),
            bearer(&sign(&no_exp, Algorithm::HS256, SECRET)),
            bearer(&sign(&not_yet, Algorithm::HS256, SECRET)),
        ];
        for h in &bad {
            assert!(
                v.verify(Some(h)).is_err(),
                "{:?}",
                String::from_utf8_lossy(h)
            );
        }
        assert!(v.verify(None).is_err());
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let rules = TokenRules {
            issuer: Some("todo".into()),
            audience: Some("api".into()),
        };
        let v = Verifier::new(SECRET, &rules).unwrap();
        let good = issue(SECRET, &rules, "bob", Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(Some(&bearer(&good))).unwrap(), "bob");
        let wrong_iss = sign(
            &claims(r#","iss":"evil","aud":"api""#),
            Algorithm::HS256,
            SECRET,
        );
        let wrong_aud = sign(
            &claims(r#","iss":"todo","aud":"web""#),
            Algorithm::HS256,
            SECRET,
        );
        let neither = sign(&claims(""), Algorithm::HS256, SECRET);
        for t in [wrong_iss, wrong_aud, neither] {
            assert!(v.verify(Some(&bearer(&t))).is_err());
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            Verifier::new(b"short", &TokenRules::default()),
            Err(AuthError::SecretTooShort(5))
        ));
    }

    #[test]
    fn the_data_dir_secret_is_created_once() {
        let dir = std::env::temp_dir().join(format!("todo-auth-{}", std::process::id()));
        let a = load_secret(None, &dir).unwrap();
        let b = load_secret(None, &dir).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
