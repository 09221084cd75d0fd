//! Bearer tokens: minting, hashing, constant-time checking and metadata parsing.
//!
//! A client token is `<client_id>.<64 hex chars>`: the prefix tells the server whose token
//! it is (one hash lookup, no scan), the suffix carries 256 bits from the operating
//! system's CSPRNG. The server keeps only the SHA-256 of a token, and compares hashes in
//! constant time so response timing leaks nothing about a stored hash. The admin token is
//! held the same way ([`AdminToken`]).

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

/// Random bytes in a client token (hex-encoded to twice as many characters).
const TOKEN_RANDOM_BYTES: usize = 32;

/// Why a request's credentials were refused; each message says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error(
        "missing `authorization` metadata: send `authorization: Bearer <token>` with the token \
         returned by Enroll (or the admin token for Admin calls)"
    )]
    Missing,
    /// `authorization` is present but not `Bearer <token>`.
    #[error(
        "malformed `authorization` metadata: expected `Bearer <token>` (ASCII, one space, \
         non-empty token)"
    )]
    Malformed,
    /// The token is well formed but matches no credential.
    #[error(
        "invalid token: it matches no enrolled client of this federation (or not the admin \
         token); use the token returned by Enroll, or enroll again"
    )]
    Invalid,
    /// A valid token used to act as another client.
    #[error(
        "the token belongs to client `{actual}` but the request names client `{claimed}`: a \
         client can only act as itself"
    )]
    WrongIdentity {
        /// Client id named in the request.
        claimed: String,
        /// Client id the token was issued to.
        actual: String,
    },
}

/// Mints a fresh client token `<client_id>.<64 hex chars>`.
///
/// The random part comes from `rand::rng()` (a CSPRNG seeded by the OS). Unlike every other
/// random choice in fedval, secrets are deliberately NOT seeded: a reproducible token would
/// be a guessable token.
pub fn new_client_token(client_id: &str) -> String {
    let mut secret = [0u8; TOKEN_RANDOM_BYTES];
    rand::rng().fill(&mut secret);
    format!("{client_id}.{}", hex::encode(secret))
}

/// Lower-case hex SHA-256 of a token: the only form in which tokens are stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` hashes to `stored_hash`, compared in constant time.
pub fn token_matches(token: &str, stored_hash: &str) -> bool {
    let Ok(stored) = hex::decode(stored_hash) else {
        return false;
    };
    let actual = Sha256::digest(token.as_bytes());
    bool::from(actual.as_slice().ct_eq(&stored))
}

/// The client id a token claims (the part before the final `.`), if the token has the
/// `<client_id>.<64 hex chars>` shape. The claim is only trusted after [`token_matches`].
pub fn client_id_from_token(token: &str) -> Option<&str> {
    let (client_id, secret) = token.rsplit_once('.')?;
    let well_formed = !client_id.is_empty()
        && secret.len() == 2 * TOKEN_RANDOM_BYTES
        && secret.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then_some(client_id)
}

/// The token of an `authorization: Bearer <token>` metadata entry.
///
/// The scheme is matched case-insensitively (RFC 7235); the token must be non-empty.
pub fn bearer_from_metadata(md: &MetadataMap) -> Result<&str, AuthError> {
    let value = md.get("authorization").ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// The operator's admin token, held only as its hash.
#[derive(Clone, Debug)]
pub struct AdminToken(String);

impl AdminToken {
    /// Hashes the plain admin token; the plain text is not kept.
    pub fn new(plain: &str) -> Self {
        Self(hash_token(plain))
    }

    /// Whether `token` is the admin token (constant-time comparison).
    pub fn verify(&self, token: &str) -> bool {
        token_matches(token, &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn client_tokens_have_the_documented_shape_and_differ() {
        let a = new_client_token("c-000001");
        let b = new_client_token("c-000001");
        assert_ne!(a, b);
        let (id, secret) = a.rsplit_once('.').expect("has a dot");
        assert_eq!(id, "c-000001");
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(client_id_from_token(&a), Some("c-000001"));
    }

    #[test]
    fn hash_is_hex_sha256() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn token_matches_only_its_own_hash() {
        let t = new_client_token("x");
        let h = hash_token(&t);
        assert!(token_matches(&t, &h));
        assert!(!token_matches(&new_client_token("x"), &h));
        assert!(!token_matches(&t, "not hex"));
        assert!(!token_matches(&t, &h[..62]));
        assert!(!token_matches(&t, ""));
    }

    #[test]
    fn client_id_from_token_rejects_malformed_tokens() {
        let hex64 = "a".repeat(64);
        assert_eq!(client_id_from_token(&format!("a.b.{hex64}")), Some("a.b"));
        assert_eq!(client_id_from_token(&format!(".{hex64}")), None);
        assert_eq!(client_id_from_token(&format!("a.{}", "a".repeat(63))), None);
        assert_eq!(client_id_from_token(&format!("a.{}", "g".repeat(64))), None);
        assert_eq!(client_id_from_token(&hex64), None);
    }

    fn md(value: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert(
            "authorization",
            MetadataValue::try_from(value).expect("ascii value"),
        );
        md
    }

    #[test]
    fn bearer_is_extracted() {
        assert_eq!(bearer_from_metadata(&md("Bearer abc.def")), Ok("abc.def"));
        assert_eq!(bearer_from_metadata(&md("bearer tok")), Ok("tok"));
    }

    #[test]
    fn bearer_errors_distinguish_missing_from_malformed() {
        assert_eq!(
            bearer_from_metadata(&MetadataMap::new()),
            Err(AuthError::Missing)
        );
        for bad in [
            "Bearer",
            "Bearer ",
            "Basic abc",
            "Bearerabc",
            "Bearer a b",
            "tok",
        ] {
            assert_eq!(
                bearer_from_metadata(&md(bad)),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn error_messages_are_actionable() {
        let e = AuthError::WrongIdentity {
            claimed: "b".into(),
            actual: "a".into(),
        };
        assert_eq!(
            e.to_string(),
            "the token belongs to client `a` but the request names client `b`: a client can \
             only act as itself"
        );
        assert!(
            AuthError::Missing
                .to_string()
                .contains("authorization: Bearer <token>")
        );
    }

    #[test]
    fn admin_token_verifies_only_the_plain_token() {
        let admin = AdminToken::new("hunter2");
        assert!(admin.verify("hunter2"));
        assert!(!admin.verify("hunter3"));
        assert!(!admin.verify(""));
        assert!(!format!("{admin:?}").contains("hunter2"));
    }
}
