//! What identifies this node: its key (created on first start), its mesh password, and the
//! peer name the key gives; the state directory that holds them is private to root.

use super::*;

/// What identifies this node: its key, its password and the name they give.
pub(super) struct Identity {
    pub(super) handshake: Arc<HandshakeConfig>,
    pub(super) name: PeerName,
    pub(super) password_set: bool,
    /// Proves and checks mesh-setting records (derived from the password, never the PSK).
    pub(super) settings_key: Option<SettingsKey>,
}

impl Identity {
    pub(super) fn load(config: &RouterConfig) -> Result<Self> {
        create_private_dir(&config.state_dir)?;
        let key_path = config.state_dir.join(KEY_FILE);
        let key = crypto::keyfile::load_or_create(&key_path, &mut rand::rngs::OsRng)
            .with_context(|| format!("node key {}", key_path.display()))?;
        let password = match &config.password_file {
            Some(path) => {
                let bytes = crypto::keyfile::read_password_file(path)
                    .with_context(|| format!("password file {}", path.display()))?;
                Some(
                    MeshPassword::new(&bytes)
                        .with_context(|| format!("password file {}", path.display()))?,
                )
            }
            None => None,
        };
        let name = PeerName::from_bytes(key.public().peer_name());
        let password_set = password.is_some();
        let settings_key = password.as_ref().map(SettingsKey::from_password);
        Ok(Self {
            handshake: Arc::new(HandshakeConfig::new(key, password)),
            name,
            password_set,
            settings_key,
        })
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the state directory {}", dir.display()))
}
