//! Loading (or, for development defaults, generating) the key material a
//! server needs: license signing key, key-encryption key, admin credential
//! and trusted entitlement keys.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use loaves_proto::keygen::{self, KeygenError};
use loaves_proto::keys::{SigningKeyPair, random_array};
use zeroize::Zeroizing;

use crate::config::{Config, ENV_ADMIN_TOKEN, ENV_KEK};
use crate::seal::{Kek, SealError};

/// Why key material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A key pair file could not be read or generated.
    #[error(transparent)]
    Keygen(#[from] KeygenError),
    /// The KEK could not be loaded.
    #[error(transparent)]
    Kek(#[from] SealError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The admin credential is empty.
    #[error("the admin credential is empty")]
    EmptyAdminToken,
    /// A secret file is readable by others, empty or unreadable.
    #[error("admin credential: {0}")]
    Secret(#[from] loaves_service::secret::SecretError),
    /// An environment variable holds something unusable.
    #[error("environment variable {0} is not valid")]
    BadEnv(&'static str),
}

/// The key material of a running server.
#[derive(Debug)]
pub struct Material {
    /// Signs licenses and session tokens.
    pub signing_key: SigningKeyPair,
    /// Seals content keys at rest.
    pub kek: Kek,
    /// The packager / operator credential.
    pub admin_token: Zeroizing<String>,
    /// Trusted entitlement signers.
    pub entitlement_keys: Vec<VerifyingKey>,
    /// What was generated on this start (for the log).
    pub generated: Vec<PathBuf>,
    /// Whether the development entitlement signer is trusted.
    pub dev_entitlement_signer: Option<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads a key pair NAME.key from `dir`, generating it if missing.
fn key_pair_in(
    dir: &Path,
    name: &str,
    generated: &mut Vec<PathBuf>,
) -> Result<SigningKeyPair, SetupError> {
    let path = dir.join(format!("{name}.key"));
    if !path.exists() {
        let files = keygen::write_key_pair(dir, name, false)?;
        generated.push(files.private_key);
    }
    Ok(keygen::read_signing_key(&path)?)
}

impl Material {
    /// Loads everything `config` names, generating development defaults in
    /// `data_dir` where nothing is configured. Reads `LOAVES_LICENSE_KEK` and
    /// `LOAVES_LICENSE_ADMIN_TOKEN` from the environment.
    pub fn load(config: &Config) -> Result<Self, SetupError> {
        let env_kek = std::env::var(ENV_KEK).ok().map(Zeroizing::new);
        let env_admin = std::env::var(ENV_ADMIN_TOKEN).ok().map(Zeroizing::new);
        Self::load_with(
            config,
            env_kek.as_deref().map(String::as_str),
            env_admin.as_deref().map(String::as_str),
        )
    }

    /// [`Self::load`] with the environment given explicitly.
    pub fn load_with(
        config: &Config,
        env_kek: Option<&str>,
        env_admin_token: Option<&str>,
    ) -> Result<Self, SetupError> {
        let dir = &config.data_dir;
        crate::files::private_dir(dir).map_err(io(dir))?;
        let mut generated = Vec::new();

        let signing_key = match &config.keys.signing_key_file {
            Some(path) => keygen::read_signing_key(path)?,
            None => key_pair_in(dir, "license", &mut generated)?,
        };

        let kek = match (env_kek, &config.keys.kek_file) {
            (Some(hex), _) => Kek::from_hex(hex).map_err(|_| SetupError::BadEnv(ENV_KEK))?,
            (None, Some(path)) => Kek::from_file(path)?,
            (None, None) => {
                let path = dir.join("kek");
                if !path.exists() {
                    generated.push(path.clone());
                }
                Kek::load_or_generate(&path)?
            }
        };

        let admin_token = match loaves_service::secret::secret(
            ENV_ADMIN_TOKEN,
            env_admin_token,
            config.keys.admin_token_file.as_deref(),
        )? {
            Some((token, source)) => {
                tracing::info!(%source, "admin credential loaded");
                token
            }
            None => {
                let path = dir.join("admin-token");
                if !path.exists() {
                    let secret =
                        Zeroizing::new(hex::encode(random_array::<32>().map_err(SealError::from)?));
                    crate::files::write_secret_file(&path, secret.as_bytes()).map_err(io(&path))?;
                    generated.push(path.clone());
                }
                loaves_service::secret::read_secret_file(&path)?
            }
        };
        if admin_token.is_empty() {
            return Err(SetupError::EmptyAdminToken);
        }

        let mut dev_entitlement_signer = None;
        let entitlement_keys = if config.keys.entitlement_public_keys.is_empty() {
            let pair = key_pair_in(dir, "entitlement-dev", &mut generated)?;
            dev_entitlement_signer = Some(dir.join("entitlement-dev.key"));
            vec![pair.verifying_key()]
        } else {
            config
                .keys
                .entitlement_public_keys
                .iter()
                .map(|path| keygen::read_public_key(path))
                .collect::<Result<_, _>>()?
        };

        Ok(Self {
            signing_key,
            kek,
            admin_token,
            entitlement_keys,
            generated,
            dev_entitlement_signer,
        })
    }
}
