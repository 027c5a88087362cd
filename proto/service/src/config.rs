//! The one configuration loader of the server binaries.
//!
//! A binary describes its configuration once, as structs deriving
//! [`confique::Config`] with doc comments and `#[config(default = ...)]`
//! values. From that one description come:
//!
//! - the defaults ([`defaults`]), so no `impl Default` can disagree with
//!   the documentation;
//! - the layers, merged by [`load`] in this order, each overriding the one
//!   before: defaults, the TOML file, the environment, flags;
//! - the environment names: `PREFIX<FIELD>` for a top-level setting and
//!   `PREFIX<SECTION>__<FIELD>` inside a section (upper case, `__` between
//!   levels), derived from the structs, so they cannot drift either. Older
//!   names a binary documented before stay readable as [`Alias`]es;
//! - the commented TOML reference ([`template`]), from the doc comments.
//!
//! Why `confique` rather than `figment` or hand-written code: it derives
//! the layer types and their merging and renders the commented template
//! from doc comments, which is the part that keeps documentation true. What
//! is written here is the environment side, because confique reads one
//! hand-named variable per field: here every name follows from the
//! structure, older names are accepted, a variable that names no setting is
//! refused (a typo would otherwise be silently ignored), and each variable
//! is read as its setting's type asks (see [`crate::env`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use confique::meta::{FieldKind, Meta};
use confique::{Config, Layer};
use serde::{Deserialize, Serialize};

/// How a binary's settings are named in the environment.
#[derive(Debug, Clone, Copy)]
pub struct EnvScheme {
    /// The binary, as its operators type it (`license-server`).
    pub binary: &'static str,
    /// Prefix of every variable, e.g. `LOAVES_TRACKER_`.
    pub prefix: &'static str,
    /// Older variable names still read, each for one setting.
    pub aliases: &'static [Alias],
    /// Variables with the prefix that are not settings but are read
    /// elsewhere (the configuration file's path, secrets).
    pub reserved: &'static [&'static str],
}

/// An older environment name of a setting, still read.
#[derive(Debug, Clone, Copy)]
pub struct Alias {
    /// The older variable name, e.g. `LOAVES_LICENSE_STORE_URL`.
    pub old: &'static str,
    /// The setting's dotted path, e.g. `store.url`.
    pub setting: &'static str,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A variable's value does not fit its setting.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// Why.
        message: String,
    },
    /// A variable with the binary's prefix names no setting.
    #[error(
        "environment variable {var} names no setting of {binary}: settings are \
         {prefix}<FIELD> and {prefix}<SECTION>__<FIELD> (see `{binary} print-config --commented`)"
    )]
    UnknownEnv {
        /// The variable.
        var: String,
        /// The binary.
        binary: &'static str,
        /// Its prefix.
        prefix: &'static str,
    },
    /// Two variables set the same setting (its name and an older alias).
    #[error("environment variables {first} and {second} both set {setting}: keep one")]
    EnvConflict {
        /// One variable.
        first: String,
        /// The other.
        second: String,
        /// The setting.
        setting: String,
    },
    /// A flag's value could not be applied.
    #[error("flag for {setting}: {message}")]
    Flag {
        /// The setting.
        setting: String,
        /// Why.
        message: String,
    },
    /// A value is missing, out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// One setting: its dotted path and its environment name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Dotted path, e.g. `swarm.peer_ttl_s`.
    pub path: String,
    /// Environment variable, e.g. `LOAVES_TRACKER_SWARM__PEER_TTL_S`.
    pub env: String,
}

fn collect(meta: &Meta, prefix: &mut Vec<&'static str>, out: &mut Vec<Vec<&'static str>>) {
    for field in meta.fields {
        prefix.push(field.name);
        match field.kind {
            FieldKind::Leaf { .. } => out.push(prefix.clone()),
            FieldKind::Nested { meta } => collect(meta, prefix, out),
        }
        prefix.pop();
    }
}

fn leaf_paths<C: Config>() -> Vec<Vec<&'static str>> {
    let mut out = Vec::new();
    collect(&C::META, &mut Vec::new(), &mut out);
    out
}

impl EnvScheme {
    /// The variable of the setting at `path` (its keys, outermost first).
    pub fn env_name(&self, path: &[&str]) -> String {
        format!("{}{}", self.prefix, path.join("__").to_ascii_uppercase())
    }

    /// Every setting of `C` with its variable, in declaration order.
    pub fn settings<C: Config>(&self) -> Vec<Setting> {
        leaf_paths::<C>()
            .into_iter()
            .map(|path| Setting {
                env: self.env_name(&path),
                path: path.join("."),
            })
            .collect()
    }

    /// The environment layer: every variable with the prefix, each read as
    /// its setting's type asks. Empty variables count as unset.
    fn env_layer<C: Config>(&self, env: &[(String, String)]) -> Result<C::Layer, ConfigError> {
        let paths = leaf_paths::<C>();
        let by_name: HashMap<String, &[&'static str]> = paths
            .iter()
            .map(|path| (self.env_name(path), path.as_slice()))
            .collect();
        let by_alias: HashMap<&str, Vec<&str>> = self
            .aliases
            .iter()
            .map(|alias| (alias.old, alias.setting.split('.').collect()))
            .collect();
        let mut seen: HashMap<String, &str> = HashMap::new();
        let mut layer = C::Layer::empty();
        for (name, raw) in env {
            if !name.starts_with(self.prefix) || self.reserved.contains(&name.as_str()) {
                continue;
            }
            let path: &[&str] = match (by_name.get(name), by_alias.get(name.as_str())) {
                (Some(path), _) => path,
                (None, Some(path)) => path,
                (None, None) => {
                    return Err(ConfigError::UnknownEnv {
                        var: name.clone(),
                        binary: self.binary,
                        prefix: self.prefix,
                    });
                }
            };
            if raw.is_empty() {
                continue;
            }
            let setting = path.join(".");
            if let Some(first) = seen.insert(setting.clone(), name) {
                let (first, second) = if first < name.as_str() {
                    (first.to_owned(), name.clone())
                } else {
                    (name.clone(), first.to_owned())
                };
                return Err(ConfigError::EnvConflict {
                    first,
                    second,
                    setting,
                });
            }
            let one = C::Layer::deserialize(crate::env::Value { path, raw }).map_err(|e| {
                ConfigError::Env {
                    var: name.clone(),
                    message: e.0,
                }
            })?;
            layer = layer.with_fallback(one);
        }
        Ok(layer)
    }
}

/// Settings given on the command line, by dotted path. Applied last.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    entries: Vec<(String, Result<toml::Value, String>)>,
}

impl Overrides {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the setting at `path` (dotted) to `value`.
    pub fn set(&mut self, path: &str, value: impl Serialize) -> &mut Self {
        let value = toml::Value::try_from(value).map_err(|e| e.to_string());
        self.entries.push((path.to_owned(), value));
        self
    }

    /// Sets `path` when `value` is given.
    pub fn set_some<T: Serialize>(&mut self, path: &str, value: Option<T>) -> &mut Self {
        if let Some(value) = value {
            self.set(path, value);
        }
        self
    }

    /// Sets the list at `path` when `values` is not empty (a repeated flag
    /// given at least once replaces the whole list).
    pub fn set_list<T: Serialize>(&mut self, path: &str, values: &[T]) -> &mut Self {
        if !values.is_empty() {
            self.set(path, values);
        }
        self
    }

    fn layer<C: Config>(&self) -> Result<C::Layer, ConfigError> {
        let mut layer = C::Layer::empty();
        for (path, value) in &self.entries {
            let flag_error = |message: String| ConfigError::Flag {
                setting: path.clone(),
                message,
            };
            let mut value = value.clone().map_err(flag_error)?;
            for key in path.rsplit('.') {
                let mut table = toml::Table::new();
                table.insert(key.to_owned(), value);
                value = toml::Value::Table(table);
            }
            let one: C::Layer = value
                .try_into()
                .map_err(|e: toml::de::Error| flag_error(e.message().to_owned()))?;
            layer = layer.with_fallback(one);
        }
        Ok(layer)
    }
}

/// The process environment, as far as it concerns Loaves (`LOAVES_*`).
/// A value that is not UTF-8 is kept with replacement characters, so that
/// it is refused by its setting rather than silently skipped.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with("LOAVES_")
                .then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Loads `C`: defaults, then `file` (if any), then `env`, then `flags`.
/// Validation written into the structs (`#[config(validate = ...)]`) runs
/// on the merged result.
pub fn load<C: Config>(
    scheme: &EnvScheme,
    file: Option<&Path>,
    env: &[(String, String)],
    flags: &Overrides,
) -> Result<C, ConfigError> {
    let file_layer = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            from_toml_layer::<C>(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            })?
        }
        None => C::Layer::empty(),
    };
    let env_layer = scheme.env_layer::<C>(env)?;
    let flag_layer = flags.layer::<C>()?;
    let merged = flag_layer
        .with_fallback(env_layer)
        .with_fallback(file_layer)
        .with_fallback(C::Layer::default_values());
    C::from_layer(merged).map_err(|e| ConfigError::Invalid(e.to_string()))
}

fn from_toml_layer<C: Config>(text: &str) -> Result<C::Layer, toml::de::Error> {
    toml::from_str(text)
}

/// Parses TOML text over the defaults (no environment, no flags).
pub fn from_toml<C: Config>(text: &str) -> Result<C, ConfigError> {
    let layer = from_toml_layer::<C>(text).map_err(|source| ConfigError::Parse {
        path: PathBuf::from("<text>"),
        source: Box::new(source),
    })?;
    C::from_layer(layer.with_fallback(C::Layer::default_values()))
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// The defaults of `C`, as its `#[config(default = ...)]` attributes say.
///
/// # Panics
///
/// If a setting that is not an `Option` has no default, or a default does
/// not fit its type or validation: a programming error, caught by each
/// binary's test of its defaults.
pub fn defaults<C: Config>() -> C {
    match C::from_layer(C::Layer::default_values()) {
        Ok(config) => config,
        Err(e) => panic!(
            "the built-in defaults of {} are incomplete: {e}",
            C::META.name
        ),
    }
}

/// The effective configuration as TOML (for `print-config`).
pub fn to_toml<T: Serialize>(value: &T) -> Result<String, ConfigError> {
    toml::to_string_pretty(value).map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// The loading methods of a server's configuration type, written once for
/// the three binaries: `load` (defaults, then the file, then the
/// environment, then flags, then the type's own checks when a `validate`
/// method is named), `from_file`, `from_toml`, `to_toml` and `commented`
/// (the commented reference, with `notes` about its secrets).
///
/// ```ignore
/// loaves_service::layered_config!(SeedConfig, scheme: ENV, notes: &["..."], validate: validate);
/// ```
#[macro_export]
macro_rules! layered_config {
    ($config:ty, scheme: $scheme:expr, notes: $notes:expr $(, validate: $validate:ident)? $(,)?) => {
        impl $config {
            /// Loads `path` (if given) over the defaults, then `env` (pass
            /// `loaves_service::config::process_env()`), then `flags`; then
            /// checks the result.
            pub fn load(
                path: ::std::option::Option<&::std::path::Path>,
                env: &[(::std::string::String, ::std::string::String)],
                flags: &$crate::config::Overrides,
            ) -> ::std::result::Result<Self, $crate::config::ConfigError> {
                let config: Self = $crate::config::load(&$scheme, path, env, flags)?;
                $(config.$validate()?;)?
                ::std::result::Result::Ok(config)
            }

            /// Reads a TOML file over the defaults (no environment, no
            /// flags, no checks beyond the types').
            pub fn from_file(
                path: &::std::path::Path,
            ) -> ::std::result::Result<Self, $crate::config::ConfigError> {
                $crate::config::load(&$scheme, Some(path), &[], &$crate::config::Overrides::new())
            }

            /// Parses TOML text over the defaults.
            pub fn from_toml(
                text: &str,
            ) -> ::std::result::Result<Self, $crate::config::ConfigError> {
                $crate::config::from_toml(text)
            }

            /// The configuration as TOML (`print-config`).
            pub fn to_toml(
                &self,
            ) -> ::std::result::Result<::std::string::String, $crate::config::ConfigError> {
                $crate::config::to_toml(self)
            }

            /// The full commented reference (`print-config --commented`).
            pub fn commented() -> ::std::string::String {
                $crate::config::template::<Self>(&$scheme, $notes)
            }
        }
    };
}

/// `url` with its password replaced, for printing and logging.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() && parsed.set_password(Some("REDACTED")).is_err() {
                return "<redacted>".to_owned();
            }
            parsed.to_string()
        }
        // Unparsable: it might hold anything.
        Err(_) if url.contains('@') => "<redacted>".to_owned(),
        Err(_) => url.to_owned(),
    }
}

/// The full commented TOML reference of `C`: a header saying where values
/// come from and how the environment names them, then every setting with
/// its doc comment and default, commented out (from
/// `confique::toml::template`). `notes` are extra header lines (secrets).
pub fn template<C: Config>(scheme: &EnvScheme, notes: &[&str]) -> String {
    let example = leaf_paths::<C>()
        .into_iter()
        .find(|path| path.len() > 1)
        .map(|path| scheme.env_name(&path))
        .unwrap_or_else(|| scheme.env_name(&["field"]));
    let prefix = scheme.prefix;
    let binary = scheme.binary;
    let mut header = vec![
        format!("Configuration reference of {binary}, generated from its code"),
        format!("(`{binary} print-config --commented`). Every setting is shown"),
        "commented out with its default: uncomment what you change.".to_owned(),
        String::new(),
        "Precedence: built-in defaults, then this file, then the environment,".to_owned(),
        "then command-line flags; each overrides the one before.".to_owned(),
        String::new(),
        format!("Environment: {prefix}<FIELD> for a top-level setting,"),
        format!("{prefix}<SECTION>__<FIELD> inside a [section] (e.g. {example})."),
        "Lists are comma-separated or a TOML array; an empty variable counts as".to_owned(),
        format!("unset; any other {prefix}* variable is refused."),
    ];
    if !scheme.aliases.is_empty() {
        header.push("Older names still read (setting either name, not both):".to_owned());
        for alias in scheme.aliases {
            let new = scheme.env_name(&alias.setting.split('.').collect::<Vec<_>>());
            header.push(format!("  {} = {new}", alias.old));
        }
    }
    if !notes.is_empty() {
        header.push(String::new());
        header.extend(notes.iter().map(|line| (*line).to_owned()));
    }
    let mut out: String = header
        .iter()
        .map(|line| {
            if line.is_empty() {
                "#\n".to_owned()
            } else {
                format!("# {line}\n")
            }
        })
        .collect();
    out.push('\n');
    let mut options = confique::toml::FormatOptions::default();
    // Environment names follow from the structure (above), not from
    // per-field attributes.
    options.general.env_keys = false;
    out.push_str(&confique::toml::template::<C>(options));
    out
}

/// `template` with every commented-out default uncommented: the text a
/// test parses to check that the reference states the real defaults.
pub fn uncomment_defaults(template: &str) -> String {
    template
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest)
                if rest.starts_with(|c: char| c.is_ascii_alphabetic())
                    && rest.split_once(" = ").is_some_and(|(key, value)| {
                        !value.is_empty()
                            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    }) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::SocketAddr;

    use super::*;

    /// A test service.
    #[derive(Debug, Clone, PartialEq, Config, Serialize)]
    #[config(layer_attr(serde(deny_unknown_fields)))]
    struct Conf {
        /// Where to listen.
        #[config(default = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// A name.
        #[config(default = "svc")]
        name: String,
        /// Shards.
        #[config(default = [])]
        shards: Vec<String>,
        /// An optional path.
        key_file: Option<PathBuf>,
        /// A section.
        #[config(nested)]
        limits: Limits,
    }

    /// Limits.
    #[derive(Debug, Clone, PartialEq, Config, Serialize)]
    #[config(layer_attr(serde(deny_unknown_fields)))]
    struct Limits {
        /// Most connections.
        #[config(default = 64)]
        max_connections: u32,
        /// A rate.
        #[config(default = 2.5)]
        rate: f64,
        /// A switch.
        #[config(default = false)]
        strict: bool,
    }

    const SCHEME: EnvScheme = EnvScheme {
        binary: "svc",
        prefix: "LOAVES_SVC_",
        aliases: &[Alias {
            old: "LOAVES_SVC_MAX_CONN",
            setting: "limits.max_connections",
        }],
        reserved: &["LOAVES_SVC_CONFIG"],
    };

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Conf, ConfigError> {
        load(&SCHEME, None, &env(pairs), &Overrides::new())
    }

    #[test]
    fn names_follow_the_structure() {
        let names: Vec<String> = SCHEME
            .settings::<Conf>()
            .into_iter()
            .map(|s| s.env)
            .collect();
        assert_eq!(
            names,
            [
                "LOAVES_SVC_LISTEN",
                "LOAVES_SVC_NAME",
                "LOAVES_SVC_SHARDS",
                "LOAVES_SVC_KEY_FILE",
                "LOAVES_SVC_LIMITS__MAX_CONNECTIONS",
                "LOAVES_SVC_LIMITS__RATE",
                "LOAVES_SVC_LIMITS__STRICT",
            ]
        );
    }

    #[test]
    fn each_layer_overrides_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("svc.toml");
        std::fs::write(
            &file,
            "name = \"from-file\"\nshards = [\"f\"]\n[limits]\nmax_connections = 1\nrate = 1.0\n",
        )
        .unwrap();
        let mut flags = Overrides::new();
        flags.set("limits.rate", 9.5);
        let config: Conf = load(
            &SCHEME,
            Some(&file),
            &env(&[
                ("LOAVES_SVC_SHARDS", "a:1, b:2"),
                ("LOAVES_SVC_LIMITS__RATE", "3"),
                ("LOAVES_SVC_LIMITS__STRICT", "true"),
                ("LOAVES_SVC_KEY_FILE", "/k"),
                ("LOAVES_SVC_CONFIG", "/ignored.toml"),
                ("OTHER", "x"),
            ]),
            &flags,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 7000, "default");
        assert_eq!(config.name, "from-file", "file");
        assert_eq!(config.limits.max_connections, 1, "file");
        assert_eq!(config.shards, ["a:1", "b:2"], "env over file");
        assert!(config.limits.strict, "env");
        assert_eq!(config.key_file, Some(PathBuf::from("/k")));
        assert_eq!(config.limits.rate, 9.5, "flag over env");
    }

    #[test]
    fn values_are_read_as_their_type_asks() {
        // A numeric-looking name stays a string; a TOML array works too.
        let config = load_env(&[
            ("LOAVES_SVC_NAME", "123"),
            ("LOAVES_SVC_SHARDS", "[\"x\", \"y\"]"),
            ("LOAVES_SVC_LIMITS__MAX_CONNECTIONS", ""),
        ])
        .unwrap();
        assert_eq!(config.name, "123");
        assert_eq!(config.shards, ["x", "y"]);
        assert_eq!(config.limits.max_connections, 64, "empty counts as unset");
    }

    #[test]
    fn mistakes_name_the_variable() {
        let error = load_env(&[("LOAVES_SVC_LIMITS__MAX_CONNECTIONS", "many")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("LOAVES_SVC_LIMITS__MAX_CONNECTIONS") && error.contains("many"),
            "{error}"
        );
        let error = load_env(&[("LOAVES_SVC_LISTEN", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("LOAVES_SVC_LISTEN"), "{error}");
        let error = load_env(&[("LOAVES_SVC_LIMIT__RATE", "1")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("names no setting"), "{error}");
        let error = load_env(&[
            ("LOAVES_SVC_MAX_CONN", "1"),
            ("LOAVES_SVC_LIMITS__MAX_CONNECTIONS", "2"),
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("both set limits.max_connections"), "{error}");
        assert!(from_toml::<Conf>("nmae = \"x\"").is_err(), "unknown keys");
        assert!(
            from_toml::<Conf>("[limits]\nrte = 1.0").is_err(),
            "in sections too"
        );
    }

    #[test]
    fn aliases_still_work() {
        let config = load_env(&[("LOAVES_SVC_MAX_CONN", "5")]).unwrap();
        assert_eq!(config.limits.max_connections, 5);
    }

    #[test]
    fn template_states_the_defaults() {
        let text = template::<Conf>(&SCHEME, &["Secrets: none."]);
        assert!(
            text.contains("LOAVES_SVC_LIMITS__MAX_CONNECTIONS"),
            "{text}"
        );
        assert!(text.contains("LOAVES_SVC_MAX_CONN = LOAVES_SVC_LIMITS__MAX_CONNECTIONS"));
        assert!(text.contains("# Most connections."), "{text}");
        assert!(text.contains("# Secrets: none."));
        let defaults = defaults::<Conf>();
        assert_eq!(from_toml::<Conf>(&text).unwrap(), defaults);
        let uncommented = uncomment_defaults(&text);
        assert!(
            uncommented.contains("\nmax_connections = 64"),
            "{uncommented}"
        );
        assert_eq!(from_toml::<Conf>(&uncommented).unwrap(), defaults);
    }

    #[test]
    fn flags_that_do_not_fit_are_refused() {
        let mut flags = Overrides::new();
        flags.set("limits.max_connections", "lots");
        let error = load::<Conf>(&SCHEME, None, &[], &flags)
            .unwrap_err()
            .to_string();
        assert!(error.contains("limits.max_connections"), "{error}");
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("postgres://loaves:hunter2@db/loaves"),
            "postgres://loaves:REDACTED@db/loaves"
        );
        assert_eq!(redact_url("postgres://db/loaves"), "postgres://db/loaves");
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        assert_eq!(redact_url("not a url:pw@x"), "<redacted>");
    }
}
