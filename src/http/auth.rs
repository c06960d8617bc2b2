//! Who is calling, and may they? Bearer tokens are checked with a TokenReview; access is
//! decided by a SubjectAccessReview, so cluster admins grant it with ordinary RBAC.
//!
//! The file API asks about the `jobs/files` subresource of `jobs.kiln.dev` (the API server
//! does not serve that subresource; it exists only as a name that Roles can grant): `get` to
//! read a file or download the archive, `list` to list files, `create` to POST (single or
//! batch), `update` to PUT, `delete` to DELETE. `/api/v1/stats` asks for `list` on
//! `jobs.kiln.dev` in all namespaces: whoever may list every Job already sees every Job's
//! `status.filesCount` and `status.totalSizeBytes`, which is all the stats add up.
//!
//! # Caching
//!
//! An upload of many files is many requests. Without a cache each would cost two API-server
//! round trips before its first byte is read, so:
//! - a successful TokenReview is remembered for [`TOKEN_TTL`], keyed by the sha256 of the
//!   token (the token itself is never stored or logged): a token revoked meanwhile keeps
//!   working for at most that long;
//! - an allowed SubjectAccessReview is remembered for [`GRANT_TTL`], keyed by the sha256 of
//!   the token and every attribute of the review (verb, group, resource, subresource,
//!   namespace, name): one caller's answer never serves another caller, nor another object.
//!   A revoked Role stops working within that time.
//!
//! Reading a file made from a Secret also asks `get` on that Secret by name (see
//! `docs/http-api.md`, "Security model"): Kiln read the Secret with its own rights, so it
//! must not hand the bytes to someone the Secret's own RBAC would refuse.
//!
//! Failures are never cached, so a token that just became valid, or a Role just granted,
//! works on the next request. Both caches are bounded; when one is full, expired entries are
//! dropped, and if that is not enough, everything is (only valid callers get entries, so this
//! costs a few extra reviews, never correctness).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::debug;

use super::error::ApiError;

/// How long a successful TokenReview is trusted.
pub const TOKEN_TTL: Duration = Duration::from_secs(30);
/// How long an allowed SubjectAccessReview is trusted.
pub const GRANT_TTL: Duration = Duration::from_secs(10);
/// Bounds of the two caches.
const TOKEN_CACHE_ENTRIES: usize = 1024;
const GRANT_CACHE_ENTRIES: usize = 4096;
/// Longer "tokens" are not sent to the API server (service-account tokens are ~1 KiB).
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The API group of Kiln's kinds.
const GROUP: &str = "kiln.dev";

/// A Kubernetes verb the file API asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Create,
    Update,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
        }
    }
}

/// What a request asks to do, in SubjectAccessReview terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Access {
    pub verb: Verb,
    /// The API group: `kiln.dev`, or `""` for the core group (Secrets).
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    /// `None`: in all namespaces.
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Access {
    /// `verb` on the files of one Job.
    pub fn job_files(verb: Verb, namespace: &str, name: &str) -> Self {
        Access {
            verb,
            group: GROUP,
            resource: "jobs",
            subresource: Some("files"),
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
        }
    }

    /// `create` on the usage of one ProviderConfig: reporting that a client used a key.
    pub fn provider_usage(namespace: &str, name: &str) -> Self {
        Access {
            verb: Verb::Create,
            group: GROUP,
            resource: "providerconfigs",
            subresource: Some("usage"),
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
        }
    }

    /// `list` on Jobs in every namespace (for the workspace-wide stats).
    pub fn list_all_jobs() -> Self {
        Access {
            verb: Verb::List,
            group: GROUP,
            resource: "jobs",
            subresource: None,
            namespace: None,
            name: None,
        }
    }

    /// `get` on one Secret: what reading a file made from that Secret takes.
    pub fn get_secret(namespace: &str, name: &str) -> Self {
        Access {
            verb: Verb::Get,
            group: "",
            resource: "secrets",
            subresource: None,
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
        }
    }

    /// `create jobs/files.kiln.dev of job ns/name`, `get secret ns/name`, for messages.
    fn describe(&self) -> String {
        let verb = self.verb.as_str();
        if self.group.is_empty() {
            let kind = self.resource.trim_end_matches('s');
            return match (&self.namespace, &self.name) {
                (Some(ns), Some(name)) => format!("{verb} {kind} {ns}/{name}"),
                (Some(ns), None) => format!("{verb} {} in {ns}", self.resource),
                _ => format!("{verb} {} in all namespaces", self.resource),
            };
        }
        let resource = match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_owned(),
        };
        let group = self.group;
        let kind = self.resource.trim_end_matches('s');
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => format!("{verb} {resource}.{group} of {kind} {ns}/{name}"),
            (Some(ns), None) => format!("{verb} {resource}.{group} in {ns}"),
            _ => format!("{verb} {resource}.{group} in all namespaces"),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// sha256 of the bearer token: the cache key, never the token.
    token: [u8; 32],
    pub user: Arc<UserInfo>,
}

impl Caller {
    pub fn username(&self) -> &str {
        self.user.username.as_deref().unwrap_or("<unknown>")
    }
}

/// Checks tokens and access against the API server, with the caches described above.
pub struct Auth {
    client: Client,
    tokens: TtlCache<[u8; 32], Arc<UserInfo>>,
    grants: TtlCache<([u8; 32], Access), ()>,
}

impl Auth {
    pub fn new(client: Client) -> Self {
        Auth {
            client,
            tokens: TtlCache::new(TOKEN_TTL, TOKEN_CACHE_ENTRIES),
            grants: TtlCache::new(GRANT_TTL, GRANT_CACHE_ENTRIES),
        }
    }

    /// The caller behind the request's bearer token, or 401.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = bearer_token(headers)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(user) = self.tokens.get(&key) {
            return Ok(Caller { token: key, user });
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ApiError::internal("the TokenReview failed", &e))?;
        let status = reviewed.status.unwrap_or_default();
        match (status.authenticated, status.user) {
            (Some(true), Some(user)) => {
                let user = Arc::new(user);
                self.tokens.insert(key, user.clone());
                Ok(Caller { token: key, user })
            }
            _ => {
                // The reason may describe the API server's authenticators: log it, don't send it.
                debug!(
                    reason = status.error.as_deref().unwrap_or(""),
                    "token refused"
                );
                Err(ApiError::unauthorized(
                    "the bearer token is not valid (expired, revoked or not issued by this cluster)",
                ))
            }
        }
    }

    /// Whether `caller` may do `access`: Ok, or 403.
    pub async fn authorize(&self, caller: &Caller, access: Access) -> Result<(), ApiError> {
        if self.allowed(caller, &access).await? {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "{} may not {}",
            caller.username(),
            access.describe()
        ))
        .with_details(access.details()))
    }

    /// Whether `caller` may do `access`, asking the API server unless a recent answer for
    /// this same token and access says yes. Only a review error is an `Err`.
    pub async fn allowed(&self, caller: &Caller, access: &Access) -> Result<bool, ApiError> {
        let key = (caller.token, access.clone());
        if self.grants.get(&key).is_some() {
            return Ok(true);
        }
        let review = SubjectAccessReview {
            spec: review_spec(&caller.user, &key.1),
            ..Default::default()
        };
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ApiError::internal("the SubjectAccessReview failed", &e))?;
        let status = reviewed.status.unwrap_or_default();
        if let Some(error) = status.evaluation_error.as_deref() {
            debug!(%error, "SubjectAccessReview evaluation error");
        }
        if status.allowed {
            self.grants.insert(key, ());
        }
        Ok(status.allowed)
    }
}

impl Access {
    /// The access as the JSON `details` of a 403.
    pub fn details(&self) -> serde_json::Value {
        json!({
            "verb": self.verb.as_str(),
            "group": self.group,
            "resource": self.resource,
            "subresource": self.subresource,
            "namespace": self.namespace,
            "name": self.name,
        })
    }
}

/// The token of `Authorization: Bearer <token>`, or 401 saying what is wrong.
fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("no bearer token: send 'Authorization: Bearer <token>'")
    })?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not visible ASCII"))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(ApiError::unauthorized(
                "the Authorization header must use the Bearer scheme",
            ));
        }
    };
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || token.contains(' ') {
        return Err(ApiError::unauthorized("the bearer token is malformed"));
    }
    Ok(token)
}

/// The review of `access` by `user`, with every attribute the authenticator reported (groups,
/// uid and extra matter to RBAC and to webhook authorizers).
fn review_spec(user: &UserInfo, access: &Access) -> SubjectAccessReviewSpec {
    SubjectAccessReviewSpec {
        user: user.username.clone(),
        groups: user.groups.clone(),
        uid: user.uid.clone(),
        extra: user.extra.clone(),
        resource_attributes: Some(ResourceAttributes {
            group: Some(access.group.into()),
            resource: Some(access.resource.into()),
            subresource: access.subresource.map(Into::into),
            verb: Some(access.verb.as_str().into()),
            namespace: access.namespace.clone(),
            name: access.name.clone(),
            ..Default::default()
        }),
        non_resource_attributes: None,
    }
}

/// A small map whose entries expire, bounded in size.
struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((value, expires)) if Instant::now() < *expires => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: K, value: V) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, expires)| now < *expires);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, now + self.ttl));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(auth).unwrap(),
        );
        h
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(
            bearer_token(&headers(b"Bearer abc.def")).unwrap(),
            "abc.def"
        );
        assert_eq!(bearer_token(&headers(b"bearer  abc ")).unwrap(), "abc");
        for bad in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer a b",
            b"abc",
            b"Bearer \xff",
        ] {
            let e = bearer_token(&headers(bad)).unwrap_err();
            assert_eq!(e.code, "unauthorized", "{bad:?}");
        }
        let e = bearer_token(&HeaderMap::new()).unwrap_err();
        assert!(e.message.contains("Authorization: Bearer"), "{}", e.message);
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(bearer_token(&headers(long.as_bytes())).is_err());
    }

    #[test]
    fn reviews_carry_the_whole_identity_and_the_subresource() {
        let user = UserInfo {
            username: Some("system:serviceaccount:ns:writer".into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            uid: Some("u-1".into()),
            extra: Some([("k".to_string(), vec!["v".to_string()])].into()),
        };
        let spec = review_spec(&user, &Access::job_files(Verb::Update, "ns", "job"));
        assert_eq!(
            spec.user.as_deref(),
            Some("system:serviceaccount:ns:writer")
        );
        assert_eq!(spec.groups, user.groups);
        assert_eq!(spec.uid.as_deref(), Some("u-1"));
        assert_eq!(spec.extra, user.extra);
        let attrs = spec.resource_attributes.unwrap();
        assert_eq!(attrs.group.as_deref(), Some("kiln.dev"));
        assert_eq!(attrs.resource.as_deref(), Some("jobs"));
        assert_eq!(attrs.subresource.as_deref(), Some("files"));
        assert_eq!(attrs.verb.as_deref(), Some("update"));
        assert_eq!(attrs.namespace.as_deref(), Some("ns"));
        assert_eq!(attrs.name.as_deref(), Some("job"));

        let stats = review_spec(&user, &Access::list_all_jobs());
        let attrs = stats.resource_attributes.unwrap();
        assert_eq!(attrs.subresource, None);
        assert_eq!(attrs.namespace, None);
        assert_eq!(attrs.verb.as_deref(), Some("list"));
    }

    #[test]
    fn access_is_described_for_people() {
        assert_eq!(
            Access::job_files(Verb::Create, "ns", "j").describe(),
            "create jobs/files.kiln.dev of job ns/j"
        );
        assert_eq!(
            Access::list_all_jobs().describe(),
            "list jobs.kiln.dev in all namespaces"
        );
        assert_eq!(
            Access::get_secret("ns", "db").describe(),
            "get secret ns/db"
        );
    }

    #[test]
    fn secret_reviews_ask_the_core_group_by_name() {
        let user = UserInfo {
            username: Some("alice".into()),
            ..Default::default()
        };
        let attrs = review_spec(&user, &Access::get_secret("ns", "db"))
            .resource_attributes
            .unwrap();
        assert_eq!(attrs.group.as_deref(), Some(""));
        assert_eq!(attrs.resource.as_deref(), Some("secrets"));
        assert_eq!(attrs.subresource, None);
        assert_eq!(attrs.verb.as_deref(), Some("get"));
        assert_eq!(attrs.namespace.as_deref(), Some("ns"));
        assert_eq!(attrs.name.as_deref(), Some("db"));
    }

    #[test]
    fn cache_entries_expire() {
        // Generous against a loaded CI machine: the first read must come within the TTL.
        let cache = TtlCache::new(Duration::from_millis(500), 10);
        cache.insert(1, "a");
        assert_eq!(cache.get(&1), Some("a"));
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn cache_stays_bounded() {
        let cache = TtlCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            cache.insert(i, i);
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.get(&9), Some(9));
    }
}
