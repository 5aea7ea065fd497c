//! Who is asking, and may they: bearer tokens checked with TokenReview, every read and action
//! with SubjectAccessReview, browser sessions with their CSRF token.
//!
//! The console never acts with more than the signed-in user could do with kubectl: it asks the
//! apiserver, for the user the token stands for (name, uid, groups, extra), whether that user may
//! do the verb on the resource the request touches, and refuses with 403 otherwise. Answers are
//! cached briefly ([`TOKEN_TTL`], [`DECISION_TTL`]) so a page that polls does not cost a review
//! per request; a revoked token or binding stops working within those times.
//!
//! Tokens are held only in memory (a session keeps its token to review it again), never logged,
//! and looked up by their SHA-256.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest as _, Sha256};

use crate::limits::console::{
    DECISION_TTL, MAX_CACHED, MAX_SESSIONS, MAX_TOKEN_BYTES, SESSION_IDLE, SESSION_LIFETIME,
    TOKEN_TTL,
};

/// A user the apiserver vouched for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    pub groups: Vec<String>,
    #[serde(skip)]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// One access to authorise, in SubjectAccessReview's terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Access {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    /// `None`: cluster-scoped.
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Access {
    /// `herald.dev` Subscriptions in a namespace.
    pub fn subscriptions(verb: &'static str, namespace: &str, name: Option<&str>) -> Self {
        Access {
            verb,
            group: "herald.dev",
            resource: "subscriptions",
            namespace: Some(namespace.to_owned()),
            name: name.map(str::to_owned),
        }
    }

    /// What a refusal says: the verb and the resource, as kubectl would name them.
    pub fn describe(&self) -> String {
        let resource = if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => format!("{} {resource} {n:?} in namespace {ns:?}", self.verb),
            (Some(ns), None) => format!("{} {resource} in namespace {ns:?}", self.verb),
            (None, Some(n)) => format!("{} {resource} {n:?}", self.verb),
            (None, None) => format!("{} {resource}", self.verb),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or ones the apiserver does not accept: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// The user may not: 403.
    #[error("{user} may not {what}")]
    Forbidden { user: String, what: String },
    /// The apiserver could not be asked: 503.
    #[error("the Kubernetes API could not be asked: {0}")]
    Unavailable(String),
}

struct Session {
    token: String,
    csrf: String,
    created: Instant,
    used: Instant,
}

/// The checks, their caches and the browser sessions.
pub struct Auth {
    kube: kube::Client,
    tokens: Mutex<HashMap<[u8; 32], (User, Instant)>>,
    decisions: Mutex<HashMap<(String, Access), (bool, Instant)>>,
    sessions: Mutex<HashMap<String, Session>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 244 random bits from the operating system (two v4 UUIDs), as hex.
fn random_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Compares without stopping at the first difference, so timing tells nothing about a CSRF token.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Auth {
    pub fn new(kube: kube::Client) -> Self {
        Auth {
            kube,
            tokens: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The user a bearer token stands for (TokenReview, cached [`TOKEN_TTL`]).
    pub async fn authenticate(&self, token: &str) -> Result<User, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Unauthenticated(format!(
                "the token must be 1 to {MAX_TOKEN_BYTES} bytes long"
            )));
        }
        let key = digest(token);
        if let Some((user, at)) = lock(&self.tokens).get(&key)
            && at.elapsed() < TOKEN_TTL
        {
            return Ok(user.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.kube.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(u)) => User {
                name: u.username.unwrap_or_default(),
                uid: u.uid.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
                extra: u.extra.unwrap_or_default(),
            },
            _ => {
                let why = status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "the token is not valid".into());
                return Err(AuthError::Unauthenticated(format!(
                    "the Kubernetes API did not accept the token: {why}"
                )));
            }
        };
        let mut tokens = lock(&self.tokens);
        evict(&mut tokens, |(_, at)| at.elapsed() >= TOKEN_TTL);
        tokens.insert(key, (user.clone(), Instant::now()));
        Ok(user)
    }

    /// Whether `user` may do `access` (SubjectAccessReview, cached [`DECISION_TTL`]).
    pub async fn allowed(&self, user: &User, access: &Access) -> Result<bool, AuthError> {
        let key = (user_key(user), access.clone());
        if let Some((allowed, at)) = lock(&self.decisions).get(&key)
            && at.elapsed() < DECISION_TTL
        {
            return Ok(*allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(access.verb.to_owned()),
                    group: Some(access.group.to_owned()),
                    resource: Some(access.resource.to_owned()),
                    namespace: access.namespace.clone(),
                    name: access.name.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let reviewed = Api::<SubjectAccessReview>::all(self.kube.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("SubjectAccessReview: {e}")))?;
        let allowed = reviewed.status.is_some_and(|s| s.allowed);
        let mut decisions = lock(&self.decisions);
        evict(&mut decisions, |(_, at)| at.elapsed() >= DECISION_TTL);
        decisions.insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }

    /// [`allowed`](Self::allowed), or 403 naming the access.
    pub async fn require(&self, user: &User, access: &Access) -> Result<(), AuthError> {
        if self.allowed(user, access).await? {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                user: user.name.clone(),
                what: access.describe(),
            })
        }
    }

    /// Signs in: checks the token and opens a session; returns (session id, CSRF token, user).
    pub async fn sign_in(&self, token: &str) -> Result<(String, String, User), AuthError> {
        let user = self.authenticate(token).await?;
        let (id, csrf) = (random_id(), random_id());
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| live(s));
        if sessions.len() >= MAX_SESSIONS {
            return Err(AuthError::Unavailable(format!(
                "{MAX_SESSIONS} sessions are open, the most the console keeps; sign out of one or wait for one to expire"
            )));
        }
        sessions.insert(
            id.clone(),
            Session {
                token: token.to_owned(),
                csrf: csrf.clone(),
                created: now,
                used: now,
            },
        );
        Ok((id, csrf, user))
    }

    pub fn sign_out(&self, session: &str) {
        lock(&self.sessions).remove(session);
    }

    /// The token of a live session, and whether `csrf` is the session's (writes need it).
    pub fn session(&self, id: &str, csrf: Option<&str>) -> Result<(String, bool), AuthError> {
        let mut sessions = lock(&self.sessions);
        let Some(s) = sessions.get_mut(id).filter(|s| live(s)) else {
            sessions.remove(id);
            return Err(AuthError::Unauthenticated(
                "the session has ended; sign in again".into(),
            ));
        };
        s.used = Instant::now();
        let csrf_ok = csrf.is_some_and(|c| same(c, &s.csrf));
        Ok((s.token.clone(), csrf_ok))
    }

    /// The CSRF token of a live session (the page asks for it again after a reload).
    pub fn csrf(&self, id: &str) -> Option<String> {
        lock(&self.sessions)
            .get(id)
            .filter(|s| live(s))
            .map(|s| s.csrf.clone())
    }
}

fn live(s: &Session) -> bool {
    s.created.elapsed() < SESSION_LIFETIME && s.used.elapsed() < SESSION_IDLE
}

fn user_key(u: &User) -> String {
    // Every attribute the review depends on; NUL separates, as none of them can hold one.
    let mut k = format!("{}\0{}\0", u.name, u.uid);
    for g in &u.groups {
        k.push_str(g);
        k.push('\0');
    }
    for (name, values) in &u.extra {
        k.push_str(name);
        k.push('=');
        k.push_str(&values.join("\u{1}"));
        k.push('\0');
    }
    k
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a cache lock leaves a cache, not an invariant: keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drops expired entries, and everything when still full (a flood of distinct users or tokens
/// costs reviews, never unbounded memory).
fn evict<K, V>(map: &mut HashMap<K, V>, expired: impl Fn(&V) -> bool) {
    if map.len() < MAX_CACHED {
        return;
    }
    map.retain(|_, v| !expired(v));
    if map.len() >= MAX_CACHED {
        map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn access_names_the_verb_and_resource_as_kubectl_does() {
        assert_eq!(
            Access::subscriptions("create", "shop", None).describe(),
            "create subscriptions.herald.dev in namespace \"shop\""
        );
        let a = Access {
            verb: "list",
            group: "herald.dev",
            resource: "eventstreams",
            namespace: None,
            name: None,
        };
        assert_eq!(a.describe(), "list eventstreams.herald.dev");
    }

    #[test]
    fn csrf_comparison_needs_every_byte() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn caches_stay_bounded() {
        let mut m: HashMap<u32, Instant> = (0..MAX_CACHED as u32)
            .map(|i| (i, Instant::now()))
            .collect();
        evict(&mut m, |at| at.elapsed() > Duration::from_secs(60));
        assert!(m.is_empty(), "a full cache of live entries is emptied");
    }
}
