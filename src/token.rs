//! Client tokens (the only user of jsonwebtoken): EdDSA-signed JWTs carrying a subject,
//! an id and a list of permissions. Nodes hold only the public key ([`Verifier`]);
//! `kvs token issue` signs with the private one ([`issue`]).
//!
//! A permission is `ACTION:SCOPE`: ACTION is `read`, `write`, `delete`, `admin` or
//! `metrics`; SCOPE is `todos`, `kv/<prefix>` (every key starting with the prefix; `kv/`
//! alone is every key) or `*`. `admin` and `metrics` are node-wide and take `*` only.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The audience every kvs token names, so a token made for another system with the
/// same key is refused.
const AUDIENCE: &str = "kvs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
    Delete,
    Admin,
    Metrics,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Admin => "admin",
            Action::Metrics => "metrics",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Todos,
    /// Keys starting with this prefix.
    Kv(String),
    All,
}

/// What a request touches, for [`Grants::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    Todos,
    Kv(&'a str),
    /// Node-wide: node information, metrics, administration.
    Node,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub action: Action,
    pub scope: Scope,
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(text: &str) -> Result<Permission, String> {
        let bad = |why: &str| format!("{text:?} is not a permission: {why}");
        let (action, scope) = text
            .split_once(':')
            .ok_or_else(|| bad("write ACTION:SCOPE, e.g. read:todos or write:kv/users/"))?;
        let action = match action {
            "read" => Action::Read,
            "write" => Action::Write,
            "delete" => Action::Delete,
            "admin" => Action::Admin,
            "metrics" => Action::Metrics,
            _ => return Err(bad("the action is read, write, delete, admin or metrics")),
        };
        let scope = match scope {
            "*" => Scope::All,
            "todos" => Scope::Todos,
            "kv" => Scope::Kv(String::new()),
            _ => match scope.strip_prefix("kv/") {
                Some(prefix) => Scope::Kv(prefix.to_owned()),
                None => return Err(bad("the scope is todos, kv/<prefix> or *")),
            },
        };
        if matches!(action, Action::Admin | Action::Metrics) && scope != Scope::All {
            return Err(bad("admin and metrics are node-wide: write admin:* or metrics:*"));
        }
        Ok(Permission { action, scope })
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = self.action.as_str();
        match &self.scope {
            Scope::Todos => write!(f, "{action}:todos"),
            Scope::Kv(prefix) => write!(f, "{action}:kv/{prefix}"),
            Scope::All => write!(f, "{action}:*"),
        }
    }
}

impl Permission {
    fn allows(&self, action: Action, resource: Resource<'_>) -> bool {
        self.action == action
            && match (&self.scope, resource) {
                (Scope::All, _) => true,
                (Scope::Todos, Resource::Todos) => true,
                (Scope::Kv(prefix), Resource::Kv(key)) => key.starts_with(prefix.as_str()),
                _ => false,
            }
    }
}

/// What one client may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(pub Vec<Permission>);

impl Grants {
    pub fn allows(&self, action: Action, resource: Resource<'_>) -> bool {
        self.0.iter().any(|p| p.allows(action, resource))
    }

    /// Whether any key under `prefix` could be readable: a listing of `prefix` is
    /// refused (403) when none is, and filtered key by key otherwise.
    pub fn may_read_under(&self, prefix: &str) -> bool {
        self.0.iter().any(|p| {
            p.action == Action::Read
                && match &p.scope {
                    Scope::All => true,
                    Scope::Kv(granted) => {
                        granted.starts_with(prefix) || prefix.starts_with(granted.as_str())
                    }
                    Scope::Todos => false,
                }
        })
    }

    /// Whether the client may read anything at all (the API documentation is for them).
    pub fn reads_anything(&self) -> bool {
        self.0.iter().any(|p| p.action == Action::Read)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
    /// The token id, what a revocation names.
    jti: String,
    allow: Vec<String>,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub subject: String,
    pub token_id: String,
    pub grants: Grants,
    /// When the token expires (seconds since the epoch).
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the key is not an Ed25519 PEM key: {0}")]
    Key(String),
    /// Why a token was refused (said to the client: it holds the token already).
    #[error("{0}")]
    Invalid(String),
}

/// Checks tokens against the public key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    pub fn new(public_key_pem: &[u8]) -> Result<Verifier, TokenError> {
        let key = DecodingKey::from_ed_pem(public_key_pem)
            .map_err(|error| TokenError::Key(error.to_string()))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.leeway = 5;
        Ok(Verifier { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Client, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |error| {
                use jsonwebtoken::errors::ErrorKind;
                TokenError::Invalid(match error.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired".into(),
                    ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
                    ErrorKind::InvalidAudience => "the token is not for kvs".into(),
                    ErrorKind::InvalidAlgorithm => "the token is not signed with EdDSA".into(),
                    _ => "the token is malformed".into(),
                })
            },
        )?;
        let claims = data.claims;
        let grants = claims
            .allow
            .iter()
            .map(|text| text.parse::<Permission>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(TokenError::Invalid)?;
        Ok(Client {
            subject: claims.sub,
            token_id: claims.jti,
            grants: Grants(grants),
            expires_at: claims.exp,
        })
    }
}

/// Signs a token for `subject` with `allow`, valid for `ttl` from `now_secs`. Returns
/// the token and its id.
pub fn issue(
    private_key_pem: &[u8],
    subject: &str,
    allow: &[Permission],
    ttl: Duration,
    now_secs: u64,
) -> Result<(String, String), TokenError> {
    let key = EncodingKey::from_ed_pem(private_key_pem)
        .map_err(|error| TokenError::Key(error.to_string()))?;
    let jti = uuid::Uuid::new_v4().simple().to_string();
    let claims = Claims {
        sub: subject.to_owned(),
        aud: AUDIENCE.to_owned(),
        iat: now_secs,
        exp: now_secs.saturating_add(ttl.as_secs()),
        jti: jti.clone(),
        allow: allow.iter().map(Permission::to_string).collect(),
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key)
        .map_err(|error| TokenError::Key(error.to_string()))?;
    Ok((token, jti))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn keys() -> (String, String) {
        crate::keys::token_keypair().unwrap()
    }

    #[test]
    fn permissions_parse_and_print_back() {
        for text in
            ["read:todos", "write:kv/users/alice/", "delete:*", "admin:*", "metrics:*", "read:kv/"]
        {
            let permission: Permission = text.parse().unwrap();
            assert_eq!(permission.to_string(), text);
        }
        assert_eq!("read:kv".parse::<Permission>().unwrap().to_string(), "read:kv/");
        for bad in ["read", "fly:todos", "read:docs", "admin:todos", "metrics:kv/x", ""] {
            assert!(bad.parse::<Permission>().is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_match_prefixes_and_actions() {
        let grants =
            Grants(vec!["read:kv/users/alice/".parse().unwrap(), "write:todos".parse().unwrap()]);
        assert!(grants.allows(Action::Read, Resource::Kv("users/alice/x")));
        assert!(!grants.allows(Action::Read, Resource::Kv("users/bob/x")));
        assert!(!grants.allows(Action::Write, Resource::Kv("users/alice/x")));
        assert!(grants.allows(Action::Write, Resource::Todos));
        assert!(!grants.allows(Action::Read, Resource::Todos));
        assert!(!grants.allows(Action::Metrics, Resource::Node));
        assert!(grants.may_read_under("users/"));
        assert!(grants.may_read_under("users/alice/x"));
        assert!(!grants.may_read_under("users/bob/"));
        let all = Grants(vec!["metrics:*".parse().unwrap()]);
        assert!(all.allows(Action::Metrics, Resource::Node));
    }

    #[test]
    fn a_token_verifies_with_its_key_only_and_expires() {
        let (private, public) = keys();
        let allow = vec!["read:todos".parse().unwrap()];
        let (token, id) =
            issue(private.as_bytes(), "alice", &allow, Duration::from_secs(60), now()).unwrap();
        let client = Verifier::new(public.as_bytes()).unwrap().verify(&token).unwrap();
        assert_eq!(client.subject, "alice");
        assert_eq!(client.token_id, id);
        assert_eq!(client.grants, Grants(allow.clone()));

        let (_, other_public) = keys();
        let error = Verifier::new(other_public.as_bytes()).unwrap().verify(&token).unwrap_err();
        assert!(error.to_string().contains("signature"), "{error}");

        let (old, _) =
            issue(private.as_bytes(), "alice", &allow, Duration::from_secs(1), now() - 3600)
                .unwrap();
        let error = Verifier::new(public.as_bytes()).unwrap().verify(&old).unwrap_err();
        assert!(error.to_string().contains("expired"), "{error}");

        let mut tampered = token.clone();
        tampered.insert(tampered.len() / 2, 'x');
        assert!(Verifier::new(public.as_bytes()).unwrap().verify(&tampered).is_err());
        assert!(Verifier::new(b"not a key").is_err());
    }
}
