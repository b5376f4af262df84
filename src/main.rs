//! `mailslot`: the device connector, the config tools and the access client.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: mailslot <command>

commands:
  run --config config.bin        run the connector
  config compile config.yml --output config.bin
  config show config.bin [--show-secrets]
  config check config.bin
  demo                           edge + connector + hello service on loopback
";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailslot: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let cmd = match parser.next().map_err(|e| e.to_string())? {
        Some(Value(v)) => v.string().map_err(|e| e.to_string())?,
        Some(Long("help")) | Some(Short('h')) | None => {
            print!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Some(other) => return Err(other.unexpected().to_string()),
    };
    match cmd.as_str() {
        "config" => config_cmd(&mut parser),
        _ => Err(format!("unknown command {cmd:?}\n{USAGE}")),
    }
}

fn config_cmd(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    use lexopt::prelude::*;
    let sub = match parser.next().map_err(|e| e.to_string())? {
        Some(Value(v)) => v.string().map_err(|e| e.to_string())?,
        _ => return Err(format!("config needs a subcommand\n{USAGE}")),
    };
    let mut file: Option<PathBuf> = None;
    let mut output: Option<PathBuf> = None;
    let mut show_secrets = false;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("output") | Short('o') => output = Some(parser.value().map_err(|e| e.to_string())?.into()),
            Long("show-secrets") => show_secrets = true,
            Value(v) if file.is_none() => file = Some(v.into()),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let file = file.ok_or("config: a file argument is required")?;
    let result = match sub.as_str() {
        "compile" => {
            let output = output.ok_or("config compile: --output FILE is required")?;
            mailslot::config::cli::compile(&file, &output)
        }
        "show" => mailslot::config::cli::show(&file, show_secrets),
        "check" => mailslot::config::cli::check(&file),
        _ => return Err(format!("unknown config subcommand {sub:?}")),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("mailslot config {sub}: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
