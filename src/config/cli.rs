//! `mailslot config compile|show|check`: the config tools behind the CLI.

use std::path::Path;

/// `config compile INPUT --output OUTPUT`: YAML to binary, written atomically.
/// Returns a one-line summary for stdout.
pub fn compile(_input: &Path, _output: &Path) -> Result<std::string::String, std::string::String> {
    Err("not yet".into())
}

/// `config show FILE`: the binary file as YAML (secrets masked unless `show_secrets`).
pub fn show(_path: &Path, _show_secrets: bool) -> Result<std::string::String, std::string::String> {
    Err("not yet".into())
}

/// `config check FILE`: validate and summarise.
pub fn check(_path: &Path) -> Result<std::string::String, std::string::String> {
    Err("not yet".into())
}
