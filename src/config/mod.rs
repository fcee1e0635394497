//! Configuration: the YAML schema, loading with located errors, and validation
//! into the runtime types every other module uses.

pub mod load;
pub mod schema;
pub mod validate;

use std::path::Path;

pub use load::{ConfigError, NamedFiles};
pub use validate::{
    Access, AuthorizationServerPaths, AuthorizationServerSettings, Client, ClientAuth, Config,
    ForwardPolicy, Grant, Introspection, Issuer, KeySource, ResourceMetadata, ResponseStyle, Route,
    ScopeClaim, Secret, ServerSettings, TlsFiles, Upstream, User,
};

/// Reads, parses and validates a configuration file; logs its warnings.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = load::read_file(path)?;
    load_str(&path.display().to_string(), dir_of(path), &text)
}

/// [`load_file`] without logging the warnings, which stay in
/// [`Config::warnings`]: `scopegate check` prints them itself, plainly and
/// whatever `RUST_LOG` says.
pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
    let text = load::read_file(path)?;
    parse_and_validate(&path.display().to_string(), dir_of(path), &text).map_err(|(e, _)| e)
}

/// Parses and validates configuration text; `source` names it in errors and
/// `base_dir` resolves relative file paths in it. Logs its warnings.
pub fn load_str(source: &str, base_dir: &Path, text: &str) -> Result<Config, ConfigError> {
    load_str_naming_files(source, base_dir, text).map_err(|(error, _)| error)
}

/// [`load_str`], whose refusal also names the files validation read before
/// it stopped: a config refused because a key file was missing or not yet
/// complete is worth reading again once that file changes, although its own
/// text has not.
pub fn load_str_naming_files(
    source: &str,
    base_dir: &Path,
    text: &str,
) -> Result<Config, (ConfigError, Box<NamedFiles>)> {
    let config = parse_and_validate(source, base_dir, text)?;
    config.log_warnings();
    Ok(config)
}

/// The directory relative paths in the config at `path` start from.
fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or_else(|| Path::new("."))
}

fn parse_and_validate(
    source: &str,
    base_dir: &Path,
    text: &str,
) -> Result<Config, (ConfigError, Box<NamedFiles>)> {
    let raw = load::parse(source, text).map_err(|e| (e, Box::default()))?;
    let mut config = validate::validate_naming_files(source, base_dir, raw)?;
    config.text_digest = crate::auth::cache::digest(text);
    Ok(config)
}
