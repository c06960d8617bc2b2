//! What a ProviderConfig derives, decided without touching the cluster: the ConfigMap
//! `<name>-provider` (`provider.json`), the Secret `<name>-credentials` (one entry per active
//! key plus `API_KEY`), the `default-<type>-*` aliases, key fingerprints and the credentials
//! and settings hashes, and the default election (`super::follow` has the contract with the
//! workloads that follow a config).
//!
//! Secret values only ever travel inside [`SecretValue`] and [`Credentials`], whose `Debug`
//! shows names and sizes, never bytes: a stray `{:?}` in a log line cannot leak a key.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use serde_json::{Value, json};
use sha2::Sha256;

use super::draft::canonical_json;
use super::labels::{MANAGED_BY, MANAGED_BY_KILN, SHA256, managed_by_kiln};
use crate::api::provider_config::{ProviderConfig, ProviderConfigSpec};

/// A hash of `provider.json`: what followers' pod templates carry so that a change of
/// settings rolls them out. Settings are not secret: a plain hash will do.
pub fn settings_hash(provider_json: &str) -> String {
    format!("sha256:{}", super::sha256_hex(provider_json.as_bytes()))
}

/// The one key of the derived ConfigMaps.
pub const PROVIDER_JSON: &str = "provider.json";
/// The entry of the derived Secret that holds the first active key.
pub const API_KEY: &str = "API_KEY";

/// Label: the ProviderConfig a derived object comes from (for aliases: the effective default).
pub const PROVIDER_CONFIG: &str = "kiln.dev/provider-config";
/// Label: the provider type.
pub const PROVIDER_TYPE: &str = "kiln.dev/provider-type";
/// Label: which derived object this is (see [`Role`]). Deliberately not `kiln.dev/role`,
/// which marks a Draft's published ConfigMaps.
pub const PROVIDER_ROLE: &str = "kiln.dev/provider-role";

/// Annotation of a derived credentials Secret: the hex key of the HMACs that stand for its
/// content elsewhere (see [`HashKey`]).
pub const HASH_KEY: &str = "kiln.dev/hash-key";
/// Prefix of every fingerprint and credentials hash Kiln makes now. Values without it came
/// from an older Kiln (plain sha256): a change between the two schemes is not a rotation.
const HMAC_SCHEME: &str = "hmac-sha256:";

/// The key of a ProviderConfig's HMACs: 32 random bytes, kept in the annotation [`HASH_KEY`]
/// of its derived credentials Secret, where only those who may read the Secret's values see
/// it. Fingerprints (`status.keys[].fingerprint`) and the credentials hash (in status and in
/// followers' pod templates) are HMAC-SHA256 under it: a plain hash of a weak key such as
/// `hunter2` could be reversed by trying guesses, an HMAC under an unknown key cannot.
#[derive(Clone, PartialEq, Eq)]
pub struct HashKey([u8; 32]);

impl HashKey {
    /// A key of these bytes (tests; Kiln itself only generates keys or reads them back).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        HashKey(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(HashKey(key))
    }

    /// The key an existing derived Secret carries, if it carries a well-formed one.
    pub fn from_meta(meta: &ObjectMeta) -> Option<Self> {
        let text = meta.annotations.as_ref()?.get(HASH_KEY)?;
        let bytes = hex::decode(text).ok()?;
        Some(HashKey(bytes.try_into().ok()?))
    }

    fn hex(&self) -> String {
        hex::encode(self.0)
    }

    fn mac(&self, purpose: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        // Domain separation: a fingerprint can never equal a credentials hash.
        mac.update(purpose);
        mac
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

/// Whether two fingerprints or hashes were made the same way, so that their difference means
/// a different value (and not an upgrade of Kiln).
pub fn same_scheme(a: &str, b: &str) -> bool {
    a.starts_with(HMAC_SCHEME) == b.starts_with(HMAC_SCHEME)
}

/// The four objects a ProviderConfig may derive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Provider,
    Credentials,
    DefaultProvider,
    DefaultCredentials,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Provider => "provider",
            Role::Credentials => "credentials",
            Role::DefaultProvider => "default-provider",
            Role::DefaultCredentials => "default-credentials",
        }
    }

    /// The object's name: `<name>-provider`, `<name>-credentials`,
    /// `default-<type>-provider`, `default-<type>-credentials`.
    pub fn object_name(self, config: &str, provider_type: &str) -> String {
        match self {
            Role::Provider => format!("{config}-provider"),
            Role::Credentials => format!("{config}-credentials"),
            Role::DefaultProvider => format!("default-{provider_type}-provider"),
            Role::DefaultCredentials => format!("default-{provider_type}-credentials"),
        }
    }

    pub fn is_alias(self) -> bool {
        matches!(self, Role::DefaultProvider | Role::DefaultCredentials)
    }
}

/// One API key value, as read from its Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// `hmac-sha256:` and the first 16 hex digits of the value's HMAC under `key`: enough to
    /// tell two values apart in `status.keys[]`, and no way back to the value.
    pub fn fingerprint(&self, key: &HashKey) -> String {
        let mut mac = key.mac(b"kiln fingerprint\0");
        mac.update(&self.0);
        let digest = hex::encode(mac.finalize().into_bytes());
        format!("{HMAC_SCHEME}{}", &digest[..16])
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<{} bytes redacted>)", self.0.len())
    }
}

/// The content of a credentials Secret: entry name → value, sorted so that the hash is stable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    entries: BTreeMap<String, SecretValue>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("entries", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// From the active keys in spec order: one entry per key, and `API_KEY` = the first.
    pub fn from_active<'a>(keys: impl IntoIterator<Item = (&'a str, &'a SecretValue)>) -> Self {
        let mut entries = BTreeMap::new();
        for (name, value) in keys {
            if entries.is_empty() {
                entries.insert(API_KEY.to_string(), value.clone());
            }
            entries.insert(name.to_string(), value.clone());
        }
        Self { entries }
    }

    /// What an existing Secret holds (its `data`).
    pub fn from_secret(secret: &Secret) -> Self {
        let entries = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), SecretValue(v.0.clone())))
            .collect();
        Self { entries }
    }

    /// Number of API keys (entries other than `API_KEY`).
    pub fn key_count(&self) -> usize {
        self.entries.keys().filter(|k| *k != API_KEY).count()
    }

    /// `hmac-sha256:` and the lowercase hex HMAC under `key` of the length-prefixed names and
    /// values: what a follower's pod template carries, so that any change of any entry
    /// changes it.
    pub fn hash(&self, key: &HashKey) -> String {
        let mut h = key.mac(b"kiln credentials\0");
        for (name, value) in &self.entries {
            h.update(&(name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            h.update(&(value.0.len() as u64).to_be_bytes());
            h.update(&value.0);
        }
        format!("{HMAC_SCHEME}{}", hex::encode(h.finalize().into_bytes()))
    }

    fn data(&self) -> BTreeMap<String, ByteString> {
        self.entries
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.0.clone())))
            .collect()
    }
}

/// `provider.json`: type, name, displayName, settings and whether this config is the
/// effective default, in canonical JSON.
pub fn provider_json(name: &str, spec: &ProviderConfigSpec, effective_default: bool) -> String {
    let doc = json!({
        "type": spec.provider_type,
        "name": name,
        "displayName": spec.display_name,
        "settings": spec.settings.clone().unwrap_or_else(|| Value::Object(Default::default())),
        "default": effective_default,
    });
    canonical_json(&doc)
}

/// An ownerReference to a ProviderConfig. The controller reference also blocks the owner's
/// foreground deletion until the object is gone, as Kubernetes' own controllers do.
pub fn owner_reference(name: &str, uid: &str, controller: bool) -> OwnerReference {
    OwnerReference {
        api_version: ProviderConfig::api_version(&()).into_owned(),
        kind: ProviderConfig::kind(&()).into_owned(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(controller),
        block_owner_deletion: Some(controller),
    }
}

/// Who a derived object is for.
#[derive(Clone, Debug, PartialEq)]
pub struct Target<'a> {
    pub namespace: &'a str,
    /// The ProviderConfig whose content the object carries (for aliases: the default).
    pub config: &'a str,
    pub provider_type: &'a str,
    pub role: Role,
    /// Owners: the source config as controller; for aliases, also every other config that
    /// claims the default (not controllers), so that deleting the default does not let the
    /// garbage collector remove the aliases before the next default takes them over.
    pub owners: Vec<OwnerReference>,
}

impl Target<'_> {
    pub fn name(&self) -> String {
        self.role.object_name(self.config, self.provider_type)
    }

    fn meta(&self, hash: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name()),
            namespace: Some(self.namespace.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.to_string(), MANAGED_BY_KILN.to_string()),
                (PROVIDER_CONFIG.to_string(), self.config.to_string()),
                (PROVIDER_TYPE.to_string(), self.provider_type.to_string()),
                (PROVIDER_ROLE.to_string(), self.role.label().to_string()),
            ])),
            annotations: Some(BTreeMap::from([(SHA256.to_string(), hash.to_string())])),
            owner_references: Some(self.owners.clone()),
            ..Default::default()
        }
    }

    /// The ConfigMap holding `json` (from [`provider_json`]).
    pub fn config_map(&self, json: &str) -> ConfigMap {
        ConfigMap {
            metadata: self.meta(&super::sha256_hex(json.as_bytes())),
            data: Some(BTreeMap::from([(
                PROVIDER_JSON.to_string(),
                json.to_string(),
            )])),
            ..Default::default()
        }
    }

    /// The Secret holding `credentials`, annotated with their hash and the key of that hash.
    pub fn secret(&self, credentials: &Credentials, key: &HashKey) -> Secret {
        let mut metadata = self.meta(&credentials.hash(key));
        metadata
            .annotations
            .get_or_insert_default()
            .insert(HASH_KEY.to_string(), key.hex());
        Secret {
            metadata,
            data: Some(credentials.data()),
            type_: Some("Opaque".into()),
            ..Default::default()
        }
    }

    /// Whether an existing object of this name may be written by Kiln for this target: it is
    /// Kiln's, plays the same role, and (for a config's own objects) comes from the same
    /// config. Anything else is a name conflict and is never touched.
    pub fn may_overwrite(&self, existing: &ObjectMeta) -> bool {
        let labels = existing.labels.clone().unwrap_or_default();
        // An alias may have lost its controller: when the default is deleted, the garbage
        // collector strips the dangling reference and keeps the other claimants' (not
        // controllers), and it may do so before the next default takes the alias over.
        let owned_by_a_config =
            existing.owner_references.iter().flatten().any(|o| {
                is_provider_config(o) && (o.controller == Some(true) || self.role.is_alias())
            });
        managed_by_kiln(existing.labels.as_ref())
            && owned_by_a_config
            && labels.get(PROVIDER_ROLE).map(String::as_str) == Some(self.role.label())
            && (self.role.is_alias()
                || labels.get(PROVIDER_CONFIG).map(String::as_str) == Some(self.config))
    }
}

fn is_provider_config(owner: &OwnerReference) -> bool {
    owner.kind == ProviderConfig::kind(&())
        && owner.api_version.split('/').next() == Some(ProviderConfig::group(&()).as_ref())
}

/// Whether `existing` already looks like `want`: Kiln's labels and annotations present, the
/// same ProviderConfig owners. Foreign labels and owners are not a difference.
fn same_meta(existing: &ObjectMeta, want: &ObjectMeta) -> bool {
    contains_all(existing.labels.as_ref(), want.labels.as_ref())
        && contains_all(existing.annotations.as_ref(), want.annotations.as_ref())
        && config_owners(existing) == config_owners(want)
}

fn config_owners(meta: &ObjectMeta) -> Vec<(String, bool)> {
    let mut owners: Vec<(String, bool)> = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|o| is_provider_config(o))
        .map(|o| (o.uid.clone(), o.controller == Some(true)))
        .collect();
    owners.sort();
    owners
}

fn contains_all(
    have: Option<&BTreeMap<String, String>>,
    want: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    let have = have.unwrap_or(&empty);
    want.unwrap_or(&empty)
        .iter()
        .all(|(k, v)| have.get(k) == Some(v))
}

/// Whether the existing ConfigMap needs no write to become `want`.
pub fn config_map_matches(existing: &ConfigMap, want: &ConfigMap) -> bool {
    existing.data == want.data
        && existing.binary_data.as_ref().is_none_or(|b| b.is_empty())
        && same_meta(&existing.metadata, &want.metadata)
}

/// Whether the existing Secret needs no write to become `want`.
pub fn secret_matches(existing: &Secret, want: &Secret) -> bool {
    existing.data.clone().unwrap_or_default() == want.data.clone().unwrap_or_default()
        && existing.type_ == want.type_
        && same_meta(&existing.metadata, &want.metadata)
}

/// A config that claims to be the default of its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    pub name: String,
    pub uid: String,
    pub created: Option<Timestamp>,
}

/// Orders the claimants of one (namespace, providerType): the first is the effective
/// default. The oldest wins; equal creation times (they have a resolution of one second)
/// fall back to the name, so every replica and every reconcile agrees.
pub fn elect(mut claimants: Vec<Claimant>) -> Vec<Claimant> {
    claimants.sort_by(|a, b| {
        (a.created.is_none(), a.created, &a.name).cmp(&(b.created.is_none(), b.created, &b.name))
    });
    claimants.dedup_by(|a, b| a.uid == b.uid);
    claimants
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> SecretValue {
        SecretValue::new(s.as_bytes().to_vec())
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn target(role: Role) -> Target<'static> {
        Target {
            namespace: "ns",
            config: "openai-main",
            provider_type: "openai",
            role,
            owners: vec![owner_reference("openai-main", "u1", true)],
        }
    }

    #[test]
    fn names() {
        assert_eq!(Role::Provider.object_name("a", "openai"), "a-provider");
        assert_eq!(
            Role::Credentials.object_name("a", "openai"),
            "a-credentials"
        );
        assert_eq!(
            Role::DefaultProvider.object_name("a", "openai"),
            "default-openai-provider"
        );
        assert_eq!(
            Role::DefaultCredentials.object_name("a", "openai"),
            "default-openai-credentials"
        );
    }

    #[test]
    fn secret_values_never_show_in_debug() {
        let v = value("sk-live-very-secret");
        let creds = Credentials::from_active([("primary", &v)]);
        let secret = target(Role::Credentials).secret(&creds, &key(1));
        for text in [format!("{v:?}"), format!("{creds:?}")] {
            assert!(!text.contains("sk-live"), "{text}");
        }
        assert!(format!("{creds:?}").contains("primary"));
        // The Kubernetes type itself prints bytes: never format a Secret with {:?}.
        assert!(secret.data.unwrap().contains_key(API_KEY));
    }

    fn key(byte: u8) -> HashKey {
        HashKey([byte; 32])
    }

    #[test]
    fn fingerprint_is_short_distinct_and_keyed() {
        let a = value("key-one").fingerprint(&key(1));
        assert!(a.starts_with("hmac-sha256:"), "{a}");
        assert_eq!(a.len(), "hmac-sha256:".len() + 16);
        assert_ne!(a, value("key-two").fingerprint(&key(1)));
        assert_eq!(a, value("key-one").fingerprint(&key(1)));
        // Without the key, guessing the value and hashing it gives nothing to compare with.
        assert_ne!(a, value("key-one").fingerprint(&key(2)));
        assert!(!a.contains(&crate::desired::sha256_hex(b"key-one")[..12]));
    }

    #[test]
    fn hash_keys_live_in_an_annotation_and_stay_private() {
        let k = HashKey::generate().expect("randomness");
        assert_ne!(k, HashKey::generate().expect("randomness"));
        let secret = target(Role::Credentials).secret(&Credentials::default(), &k);
        assert_eq!(HashKey::from_meta(&secret.metadata), Some(k.clone()));
        assert!(!format!("{k:?}").contains(&k.hex()));
        let mut bad = secret.metadata.clone();
        bad.annotations
            .as_mut()
            .unwrap()
            .insert(HASH_KEY.into(), "abcd".into());
        assert_eq!(HashKey::from_meta(&bad), None);
        assert_eq!(HashKey::from_meta(&ObjectMeta::default()), None);
    }

    #[test]
    fn a_change_of_scheme_is_not_a_rotation() {
        let new = value("A").fingerprint(&key(1));
        assert!(same_scheme(&new, &value("B").fingerprint(&key(1))));
        assert!(!same_scheme("sha256:0123456789ab", &new));
        assert!(!same_scheme(&crate::desired::sha256_hex(b"x"), &new));
        assert!(same_scheme("sha256:0123456789ab", "sha256:ba9876543210"));
    }

    #[test]
    fn credentials_first_active_key_is_api_key() {
        let (a, b) = (value("A"), value("B"));
        let creds = Credentials::from_active([("second", &b), ("first", &a)]);
        let data = creds.data();
        assert_eq!(data[API_KEY].0, b"B");
        assert_eq!(data["first"].0, b"A");
        assert_eq!(data["second"].0, b"B");
        assert_eq!(creds.key_count(), 2);
        let none = Credentials::from_active([]);
        assert!(none.data().is_empty());
    }

    #[test]
    fn credentials_hash_follows_every_entry() {
        let (a, b) = (value("A"), value("B"));
        let one = Credentials::from_active([("k", &a)]);
        let two = Credentials::from_active([("k", &b)]);
        let renamed = Credentials::from_active([("j", &a)]);
        let k = key(7);
        assert_ne!(one.hash(&k), two.hash(&k));
        assert_ne!(one.hash(&k), renamed.hash(&k));
        assert_ne!(one.hash(&k), one.hash(&key(8)));
        assert_ne!(one.hash(&k), value("A").fingerprint(&k));
        let secret = target(Role::Credentials).secret(&one, &k);
        assert_eq!(Credentials::from_secret(&secret).hash(&k), one.hash(&k));
        assert_eq!(secret.metadata.annotations.unwrap()[SHA256], one.hash(&k));
    }

    #[test]
    fn provider_json_content() {
        let spec: ProviderConfigSpec = serde_json::from_value(json!({
            "providerType": "openai",
            "displayName": "OpenAI",
            "settings": {"model": "gpt-4o-mini", "baseUrl": "https://x"},
            "apiKeys": [{"name": "primary", "secretRef": {"name": "s", "key": "k"}}]
        }))
        .unwrap();
        let doc: Value = serde_json::from_str(&provider_json("main", &spec, true)).unwrap();
        assert_eq!(
            doc,
            json!({"type": "openai", "name": "main", "displayName": "OpenAI",
                   "settings": {"model": "gpt-4o-mini", "baseUrl": "https://x"}, "default": true})
        );
        let bare: ProviderConfigSpec =
            serde_json::from_value(json!({"providerType": "x"})).unwrap();
        let doc: Value = serde_json::from_str(&provider_json("b", &bare, false)).unwrap();
        assert_eq!(doc["settings"], json!({}));
        assert_eq!(doc["displayName"], Value::Null);
    }

    #[test]
    fn derived_objects_carry_kiln_labels_and_owner() {
        let cm = target(Role::Provider).config_map("{}\n");
        let labels = cm.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY], "kiln");
        assert_eq!(labels[PROVIDER_ROLE], "provider");
        assert!(labels.keys().all(|k| !k.contains("argocd")));
        let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ProviderConfig");
        assert_eq!(owner.api_version, "kiln.dev/v1alpha1");
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert_eq!(cm.metadata.name.as_deref(), Some("openai-main-provider"));
    }

    #[test]
    fn matching_ignores_foreign_labels_but_not_owners() {
        let t = target(Role::Provider);
        let want = t.config_map("{}\n");
        let mut existing = want.clone();
        existing
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "x".into());
        assert!(config_map_matches(&existing, &want));
        existing.metadata.owner_references = Some(vec![owner_reference("other", "u2", true)]);
        assert!(!config_map_matches(&existing, &want));
        let mut edited = want.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert(PROVIDER_JSON.into(), "x".into());
        assert!(!config_map_matches(&edited, &want));

        let v = value("A");
        let creds = Credentials::from_active([("k", &v)]);
        let secret = target(Role::Credentials).secret(&creds, &key(1));
        assert!(secret_matches(&secret, &secret));
        let w = value("B");
        let other =
            target(Role::Credentials).secret(&Credentials::from_active([("k", &w)]), &key(1));
        assert!(!secret_matches(&secret, &other));
    }

    #[test]
    fn overwrite_only_what_kiln_derived_for_this_role() {
        let own = target(Role::Credentials);
        let mine = own.secret(&Credentials::default(), &key(1));
        assert!(own.may_overwrite(&mine.metadata));
        // The same config recreated (a new uid) takes its objects back.
        let mut recreated = mine.clone();
        recreated.metadata.owner_references =
            Some(vec![owner_reference("openai-main", "old", true)]);
        assert!(own.may_overwrite(&recreated.metadata));
        let foreign = ObjectMeta::default();
        assert!(!own.may_overwrite(&foreign));
        let mut other_config = mine.clone();
        other_config
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(PROVIDER_CONFIG.into(), "someone-else".into());
        assert!(!own.may_overwrite(&other_config.metadata));
        // An alias may move from one config to another; a config's own object may not become one.
        let alias = target(Role::DefaultCredentials);
        assert!(!alias.may_overwrite(&mine.metadata));
        let mut old_alias = alias.secret(&Credentials::default(), &key(1));
        old_alias
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(PROVIDER_CONFIG.into(), "older".into());
        assert!(alias.may_overwrite(&old_alias.metadata));
        // Its controller deleted and stripped by the garbage collector: another claimant's
        // reference remains, and the next default takes it over.
        old_alias.metadata.owner_references = Some(vec![owner_reference("next", "u2", false)]);
        assert!(alias.may_overwrite(&old_alias.metadata));
        // A config's own object needs its controller reference.
        let mut orphan = mine.clone();
        orphan.metadata.owner_references = Some(vec![owner_reference("openai-main", "u", false)]);
        assert!(!own.may_overwrite(&orphan.metadata));
    }

    #[test]
    fn oldest_claimant_wins_then_name() {
        let c = |name: &str, s: i64| Claimant {
            name: name.into(),
            uid: format!("uid-{name}"),
            created: Some(at(s)),
        };
        let order = elect(vec![c("b", 10), c("a", 20), c("c", 10)]);
        let names: Vec<_> = order.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["b", "c", "a"]);
        let unknown = Claimant {
            name: "0".into(),
            uid: "x".into(),
            created: None,
        };
        assert_eq!(elect(vec![unknown.clone(), c("z", 99)])[0].name, "z");
        assert!(elect(vec![]).is_empty());
    }
}
