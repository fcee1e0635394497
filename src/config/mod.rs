//! Configuration: the YAML schema, loading with located errors, and validation
//! into the runtime types every other module uses.

pub mod load;
pub mod schema;
pub mod validate;

use std::path::Path;

pub use load::ConfigError;
pub use validate::{
    Access, AuthorizationServerPaths, AuthorizationServerSettings, Client, ClientAuth, Config,
    ForwardPolicy, Grant, Introspection, Issuer, KeySource, ResourceMetadata, ResponseStyle, Route,
    ScopeClaim, Secret, ServerSettings, TlsFiles, Upstream, User,
};

/// Reads, parses and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = load::read_file(path)?;
    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    load_str(&path.display().to_string(), base_dir, &text)
}

/// Parses and validates configuration text; `source` names it in errors and
/// `base_dir` resolves relative file paths in it.
pub fn load_str(source: &str, base_dir: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw = load::parse(source, text)?;
    let mut config = validate::validate(source, base_dir, raw)?;
    config.text_digest = crate::auth::cache::digest(text);
    Ok(config)
}
