//! `mailslot`: the device connector, the config tools and the access client.

use std::path::PathBuf;
use std::process::ExitCode;

/// musl's malloc maps and unmaps every mid-sized block; see [`mailslot::heap`].
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mailslot::heap::Global = mailslot::heap::Global;

const USAGE: &str = "usage: mailslot <command> [options]

commands:
  run [--config FILE] [--boot-config FILE ...] [--user NAME] [--state-dir DIR]
      [--trial-deadline SECS]
                                   run the connector (default /etc/mailslot/config.bin);
                                   first install a valid --boot-config file as the config
                                   and delete it; then, with --user, drop root; then start
                                   the binary installed in DIR (default /var/lib/mailslot)
                                   when there is one: a release on trial must register
                                   within SECS (default 120) or it is rolled back
  provision [--config FILE] [--boot-config FILE ...] [--user NAME]
                                   only that first step (systemd's ExecStartPre)
  config compile FILE.yml --output FILE.bin
                                   compile a YAML config into the device's binary config
  config show FILE.bin [--show-secrets]
                                   print a binary config as YAML
  config check FILE.bin            validate a binary config and summarise it
  identity [--config FILE] [--create]
                                   print the device id and public key of the device key
                                   beside the config (default /etc/mailslot/device.key);
                                   --create makes the key when there is none
  demo [--listen ADDR]             an edge, a connector and a hello-world service on
                                   loopback (default 127.0.0.1:8080, or any free port)
  access ssh|tcp|ssh-config --hostname NAME [options]
                                   reach a device's SSH or TCP service through the
                                   edge (`mailslot access help` lists the options)
  upgrade status|confirm|rollback|install FILE [--state-dir DIR] [--version V]
      [--reason TEXT]
                                   the binaries in the state folder: which one starts;
                                   confirm the release on trial, or roll it back; install
                                   FILE for trial (it starts at the next run)
  version                          print the version

RUST_LOG=debug (or info, warn, error) sets the log level; the default is info.
";

/// The usage of one command: its lines of [`USAGE`], as `usage: mailslot ...`.
fn usage_of(cmd: &str) -> String {
    mailslot::util::usage_of(USAGE, "mailslot", cmd)
}

/// True when the next argument asks for help; it is then consumed.
fn wants_help(arg: &lexopt::Arg<'_>) -> bool {
    matches!(arg, lexopt::Arg::Long("help") | lexopt::Arg::Short('h'))
}

/// Where `run` looks for its config by default.
const DEFAULT_CONFIG: &str = "/etc/mailslot/config.bin";

fn main() -> ExitCode {
    // The access client talks on ssh's terminal: quiet unless RUST_LOG asks.
    let access = std::env::args().nth(1).as_deref() == Some("access");
    let level = if access { "warn" } else { "info" };
    let logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_secs()
        .build();
    let max = logger.filter();
    if log::set_logger(Box::leak(Box::new(KeepLastProblem(logger)))).is_ok() {
        log::set_max_level(max);
    }
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailslot: {e}");
            ExitCode::from(2)
        }
    }
}

/// The logger: env_logger's, and the last warning or error it prints is kept for the
/// health reports ([`mailslot::connector::health::note_log`]).
struct KeepLastProblem(env_logger::Logger);

impl log::Log for KeepLastProblem {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        // Warnings a per-module filter hides are kept too: one filter check, not two.
        mailslot::connector::health::note_log(record);
        self.0.log(record);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

fn arg_err(e: lexopt::Error) -> String {
    e.to_string()
}

fn real_main() -> Result<ExitCode, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let cmd = match parser.next().map_err(arg_err)? {
        Some(Value(v)) => v.string().map_err(arg_err)?,
        Some(Long("help")) | Some(Short('h')) | None => {
            print!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Some(Long("version")) => "version".to_string(),
        Some(other) => return Err(other.unexpected().to_string()),
    };
    match cmd.as_str() {
        "config" => config_cmd(&mut parser),
        "run" => run_cmd(&mut parser),
        "access" => mailslot::access::cli::main(&mut parser),
        "provision" => provision_cmd(&mut parser),
        "identity" => identity_cmd(&mut parser),
        "upgrade" => upgrade_cmd(&mut parser),
        #[cfg(feature = "edge")]
        "demo" => demo_cmd(&mut parser),
        #[cfg(not(feature = "edge"))]
        "demo" => match parser.next().map_err(arg_err)? {
            Some(arg) if wants_help(&arg) => {
                print!("{}", usage_of("demo"));
                Ok(ExitCode::SUCCESS)
            }
            _ => Err(
                "this build has no edge (device build); the demo needs the default features".into(),
            ),
        },
        "version" => {
            if let Some(arg) = parser.next().map_err(arg_err)? {
                if wants_help(&arg) {
                    print!("{}", usage_of("version"));
                    return Ok(ExitCode::SUCCESS);
                }
                return Err(arg.unexpected().to_string());
            }
            println!("mailslot {}", mailslot::release::version());
            Ok(ExitCode::SUCCESS)
        }
        "help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(format!("unknown command {cmd:?}\n\n{USAGE}")),
    }
}

fn config_cmd(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    use lexopt::prelude::*;
    let sub = match parser.next().map_err(arg_err)? {
        Some(Value(v)) => v.string().map_err(arg_err)?,
        Some(arg) if wants_help(&arg) => {
            print!("{}", usage_of("config"));
            return Ok(ExitCode::SUCCESS);
        }
        _ => {
            return Err(format!(
                "config needs a subcommand: compile, show or check\n\n{USAGE}"
            ))
        }
    };
    let mut file: Option<PathBuf> = None;
    let mut output: Option<PathBuf> = None;
    let mut show_secrets = false;
    while let Some(arg) = parser.next().map_err(arg_err)? {
        match arg {
            arg if wants_help(&arg) => {
                let usage = usage_of(&format!("config {sub}"));
                if usage.is_empty() {
                    return Err(format!("unknown config subcommand {sub:?}"));
                }
                print!("{usage}");
                return Ok(ExitCode::SUCCESS);
            }
            Long("output") | Short('o') => output = Some(parser.value().map_err(arg_err)?.into()),
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

/// `mailslot identity`: the device id and public key of the key beside the config.
fn identity_cmd(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    use lexopt::prelude::*;
    let mut config = PathBuf::from(DEFAULT_CONFIG);
    let mut create = false;
    while let Some(arg) = parser.next().map_err(arg_err)? {
        match arg {
            arg if wants_help(&arg) => {
                print!("{}", usage_of("identity"));
                return Ok(ExitCode::SUCCESS);
            }
            Long("config") | Short('c') => config = parser.value().map_err(arg_err)?.into(),
            Long("create") => create = true,
            other => return Err(other.unexpected().to_string()),
        }
    }
    let path = mailslot::identity::key_path(&config);
    let key = if create {
        mailslot::identity::load_or_create_key(&path).map(Some)
    } else {
        mailslot::identity::read_key(&path)
    };
    match key {
        Ok(Some(key)) => {
            println!("device id:  {}", key.id());
            println!("public key: {}", mailslot::util::hex(key.public_key()));
            println!("key file:   {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(None) => {
            eprintln!(
                "mailslot identity: no device key at {} (an enrolled device makes it at \
                 first start; --create makes it now)",
                path.display()
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("mailslot identity: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `--config`, `--boot-config` and `--user`, shared by `run` and `provision`; the
/// state folder and trial deadline of `run`.
struct RunArgs {
    path: PathBuf,
    boot: Vec<PathBuf>,
    user: Option<String>,
    state_dir: PathBuf,
    trial_deadline: std::time::Duration,
}

/// `None` when `--help` was asked for (and `cmd`'s usage printed).
fn run_args(parser: &mut lexopt::Parser, cmd: &str) -> Result<Option<RunArgs>, String> {
    use lexopt::prelude::*;
    let mut a = RunArgs {
        path: PathBuf::from(DEFAULT_CONFIG),
        boot: Vec::new(),
        user: None,
        state_dir: PathBuf::from(mailslot::launch::DEFAULT_STATE_DIR),
        trial_deadline: mailslot::launch::DEFAULT_TRIAL_DEADLINE,
    };
    while let Some(arg) = parser.next().map_err(arg_err)? {
        match arg {
            arg if wants_help(&arg) => {
                print!("{}", usage_of(cmd));
                return Ok(None);
            }
            Long("config") | Short('c') => a.path = parser.value().map_err(arg_err)?.into(),
            Long("boot-config") => a.boot.push(parser.value().map_err(arg_err)?.into()),
            Long("user") => {
                a.user = Some(parser.value().map_err(arg_err)?.string().map_err(arg_err)?)
            }
            Long("state-dir") if cmd == "run" => {
                a.state_dir = parser.value().map_err(arg_err)?.into()
            }
            Long("trial-deadline") if cmd == "run" => {
                let v = parser.value().map_err(arg_err)?.string().map_err(arg_err)?;
                let secs: u64 =
                    v.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!("--trial-deadline: {v:?} is not a number of seconds")
                    })?;
                a.trial_deadline = std::time::Duration::from_secs(secs);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(Some(a))
}

fn provision_cmd(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    let Some(a) = run_args(parser, "provision")? else {
        return Ok(ExitCode::SUCCESS);
    };
    match mailslot::provision::prepare(&a.path, &a.boot, a.user.as_deref()) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            log::error!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn run_cmd(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    let Some(RunArgs {
        path,
        boot,
        user,
        state_dir,
        trial_deadline,
    }) = run_args(parser, "run")?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    // The launcher (see `mailslot::launch`) runs as root only while it provisions.
    if mailslot::launch::role() == mailslot::launch::Role::Launcher {
        if let Err(e) = mailslot::provision::prepare(&path, &boot, user.as_deref()) {
            log::error!("{e}");
            return Ok(ExitCode::from(1));
        }
        mailslot::launch::launch(&state_dir, trial_deadline);
    } else if let Err(e) = mailslot::provision::prepare(&path, &[], user.as_deref()) {
        log::error!("{e}");
        return Ok(ExitCode::from(1));
    }
    let notify = mailslot::sdnotify::Notifier::from_env();
    let loaded = match mailslot::config::store::load(&path) {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(why) = &loaded.fallback_reason {
        log::error!(
            "{why}; running on the previous good config {}",
            loaded.path.display()
        );
    }
    let clock = mailslot::clock::Keeper::load(&path);
    if mailslot::tls::clock_unset() {
        log::warn!(
            "the system clock reads earlier than this build or the last time a set clock was \
             seen: it is probably not set yet (no RTC, no NTP); certificates are checked \
             against the later of those until it is"
        );
    }
    // An enrolled device's key is made (or read) here, after root was dropped, so the
    // files belong to the user that runs the connector.
    let device = match loaded.config.enroll_key() {
        None => None,
        Some(_) => match mailslot::connector::device::Device::load(&path, &loaded.path) {
            Ok(d) => Some(d),
            Err(e) => {
                log::error!("{e}");
                return Ok(ExitCode::from(1));
            }
        },
    };
    let connector = mailslot::connector::Connector::with_device(loaded.config, device)?;
    connector.set_upgrades(mailslot::connector::upgrade::Settings {
        state_dir,
        trial_deadline,
        config: path.clone(),
    });
    log::info!(
        "mailslot {} starting with {}",
        mailslot::release::version(),
        loaded.path.display()
    );
    let restarter = connector.clone();
    let restart = restarter.restart_flag();
    mailslot::runtime()?.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
        if let Some(n) = &notify {
            let watchdog = mailslot::sdnotify::watchdog_from_env();
            tokio::spawn(n.clone().run(connector.slots(), watchdog));
        }
        let reloader = connector.clone();
        let reload_path = path.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match mailslot::config::store::decode_file(&reload_path) {
                    Ok(cfg) => match reloader.reload(cfg) {
                        Ok(()) => {
                            if let Some(device) = reloader.device() {
                                device.config_changed(&reload_path);
                            }
                            log::info!("reloaded {}", reload_path.display())
                        }
                        Err(e) => log::error!("reload of {} refused: {e}", reload_path.display()),
                    },
                    Err(e) => log::error!(
                        "reload of {} refused, keeping the running config: {e}",
                        reload_path.display()
                    ),
                }
            }
        });
        // Until a signal to stop, the last-known-good time is looked at hourly (written
        // at most daily); then once more, at the clean stop. A new binary to run (or a
        // trial rolled back) stops it the same way, then the launcher starts again.
        let mut clock = clock;
        let trial = restarter.clone();
        tokio::spawn(async move { trial.watch_trial().await });
        connector
            .run(async move {
                let every = std::time::Duration::from_secs(mailslot::clock::CHECK_EVERY_SECS);
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = term.recv() => break log::info!("SIGTERM"),
                        _ = int.recv() => break log::info!("SIGINT"),
                        _ = restarter.restart_wanted() => break log::info!("restarting into another binary"),
                        _ = tick.tick() => {
                            clock.save_if_due(mailslot::clock::system_secs());
                        }
                    }
                }
                clock.save_if_due(mailslot::clock::system_secs());
                if let Some(n) = &notify {
                    n.stopping();
                }
            })
            .await;
        Ok::<_, String>(())
    })?;
    if *restart.borrow() {
        let e = mailslot::launch::relaunch();
        log::error!("cannot start the launcher again: {e}; exiting for the supervisor");
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// `mailslot upgrade ...`: the state folder's binaries, by hand.
fn upgrade_cmd(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    use lexopt::prelude::*;
    use mailslot::launch;
    let mut sub: Option<String> = None;
    let mut file: Option<PathBuf> = None;
    let mut state = PathBuf::from(launch::DEFAULT_STATE_DIR);
    let mut version: Option<String> = None;
    let mut reason = "rolled back by hand (mailslot upgrade rollback)".to_string();
    while let Some(arg) = parser.next().map_err(arg_err)? {
        match arg {
            arg if wants_help(&arg) => {
                print!("{}", usage_of("upgrade"));
                return Ok(ExitCode::SUCCESS);
            }
            Long("state-dir") => state = parser.value().map_err(arg_err)?.into(),
            Long("version") => {
                version = Some(parser.value().map_err(arg_err)?.string().map_err(arg_err)?)
            }
            Long("reason") => {
                reason = parser.value().map_err(arg_err)?.string().map_err(arg_err)?
            }
            Value(v) if sub.is_none() => sub = Some(v.string().map_err(arg_err)?),
            Value(v) if file.is_none() => file = Some(v.into()),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let done = match sub.as_deref() {
        Some("status") => {
            let (bin, boots) = launch::choice(&state);
            match bin {
                Some(b) if boots > 0 || b.ends_with(launch::TRIAL) => println!(
                    "starts: {} (on trial, {boots} of {} boots used)",
                    b.display(),
                    launch::MAX_TRIAL_BOOTS
                ),
                Some(b) => println!("starts: {}", b.display()),
                None => println!("starts: the launcher itself (nothing installed)"),
            }
            if let Some(r) = launch::pending_report(&state) {
                println!("to report: {r:?}");
            }
            Ok(())
        }
        Some("confirm") => launch::confirm(&state).map(|v| match v {
            Some(v) => println!("release {v} confirmed"),
            None => println!("no release on trial"),
        }),
        Some("rollback") => launch::roll_back(&state, &reason),
        Some("install") => {
            let file = file.ok_or("upgrade install: a FILE is required")?;
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let version = match version {
                Some(v) => v,
                None => mailslot::release::version_of(&bytes)
                    .map_err(|e| format!("{}: {e}", file.display()))?,
            };
            let part = state.join(launch::PART);
            std::fs::write(&part, &bytes)
                .and_then(|()| launch::install_trial(&state, &part, &version))
                .map(|()| println!("release {version} installed for trial"))
        }
        _ => {
            return Err(format!(
                "upgrade needs status, confirm, rollback or install\n\n{}",
                usage_of("upgrade")
            ))
        }
    };
    match done {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("mailslot upgrade: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(feature = "edge")]
fn demo_cmd(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    use lexopt::prelude::*;
    let mut listen: Option<std::net::SocketAddr> = None;
    while let Some(arg) = parser.next().map_err(arg_err)? {
        match arg {
            arg if wants_help(&arg) => {
                print!("{}", usage_of("demo"));
                return Ok(ExitCode::SUCCESS);
            }
            Long("listen") => {
                let v = parser.value().map_err(arg_err)?.string().map_err(arg_err)?;
                listen = Some(v.parse().map_err(|_| {
                    format!("--listen: {v:?} is not an address like 127.0.0.1:8080")
                })?);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let http = match listen {
        Some(a) => {
            std::net::TcpListener::bind(a).map_err(|e| format!("cannot listen on {a}: {e}"))?
        }
        None => std::net::TcpListener::bind("127.0.0.1:8080")
            .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("cannot listen on loopback: {e}"))?,
    };
    mailslot::runtime()?.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        mailslot::demo::run(http, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
