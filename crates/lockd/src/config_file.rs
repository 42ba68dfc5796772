//! Where lockd's settings come from besides its flags: a TOML file (`--config FILE`) and
//! `LOCKD_*` environment variables. A flag wins over the environment, the environment over the
//! file, and the file over the built-in default.
//!
//! The flags stay the one list of settings: a file key is a flag's long name
//! (`max-frame-bytes = 1048576`), and an environment variable is that name in capitals with
//! underscores (`LOCKD_MAX_FRAME_BYTES`). The file's values become the flags' defaults, so clap
//! applies the order above by itself, and each value is checked by the flag's own parser before
//! lockd starts, with the file and the key named in the error.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The flag that names the file, and the one that prints the effective settings: neither can
/// be set in the file.
pub(crate) const CONFIG_FLAG: &str = "config";
pub(crate) const PRINT_CONFIG_FLAG: &str = "print-config";

/// Why the settings cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read --config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}: unknown key `{key}`; the keys are lockd's flags without `--` (lockd --help)", path.display())]
    UnknownKey { path: PathBuf, key: String },
    #[error("{}: key `{key}`: {reason}", path.display())]
    BadValue {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// The name of the environment variable that sets the flag `long`: `LOCKD_` and the flag in
/// capitals, or `LOCKD_SERVER_` and the flag where lockctl has a variable of that name (its
/// `LOCKD_TLS_CERT` is a client certificate, its `LOCKD_HTTP` the admin API it asks): a shell
/// set up for lockctl must not change a lockd started from it.
pub(crate) fn env_name(long: &str) -> String {
    let flag = long.to_uppercase().replace('-', "_");
    let name = format!("LOCKD_{flag}");
    if protocol::client_env::CLIENT_VARIABLES.contains(&name.as_str()) {
        format!("LOCKD_SERVER_{flag}")
    } else {
        name
    }
}

/// Settings that neither the file nor the environment may give: the ones about the file
/// itself, and clap's own.
fn is_settable(arg: &Arg) -> bool {
    match arg.get_long() {
        Some(long) => !matches!(long, CONFIG_FLAG | PRINT_CONFIG_FLAG | "help" | "version"),
        None => false,
    }
}

/// `command` with every flag also read from its `LOCKD_*` variable, and with the values of the
/// `--config` file named in `argv` (or in `LOCKD_CONFIG`) as defaults; and the ids of the flags
/// the file set.
pub(crate) fn command_with_sources(
    command: Command,
    argv: &[OsString],
) -> Result<(Command, BTreeSet<String>), ConfigError> {
    let defaults = match config_path(argv) {
        Some(path) => read_file(&command, &path)?,
        None => BTreeMap::new(),
    };
    let from_file = defaults.keys().cloned().collect();
    // One pass over the flags, which keeps their order (for --help and --print-config).
    let command = command.mut_args(|arg| {
        if !is_settable(&arg) {
            return arg;
        }
        let env = env_name(arg.get_long().unwrap_or_default());
        match defaults.get(arg.get_id().as_str()) {
            Some(values) => arg.env(env).default_values(values.clone()),
            None => arg.env(env),
        }
    });
    Ok((command, from_file))
}

/// The file `--config FILE` or `--config=FILE` names, else `LOCKD_CONFIG`.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{CONFIG_FLAG}");
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == flag {
            return args.next().map(PathBuf::from);
        }
        if let Some(value) = text.strip_prefix(&format!("{flag}=")) {
            return Some(PathBuf::from(value));
        }
    }
    std::env::var_os(env_name(CONFIG_FLAG)).map(PathBuf::from)
}

/// Reads `path` and checks every key and value against `command`'s flags: the values, as the
/// flags would take them, by flag id.
fn read_file(command: &Command, path: &Path) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: err.message().to_owned(),
        })?;
    let mut defaults = BTreeMap::new();
    for (key, value) in table {
        let arg = command
            .get_arguments()
            .find(|arg| is_settable(arg) && arg.get_long() == Some(key.as_str()))
            .ok_or_else(|| ConfigError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
            })?;
        let bad_value = |reason: String| ConfigError::BadValue {
            path: path.to_owned(),
            key: key.clone(),
            reason,
        };
        let values = flag_values(arg, &value).map_err(bad_value)?;
        check_values(command, &key, &values).map_err(bad_value)?;
        if !values.is_empty() {
            defaults.insert(arg.get_id().to_string(), values);
        }
    }
    Ok(defaults)
}

/// Runs `values` through the flag `--long`'s own parser, as if given on the command line; the
/// reason if the flag refuses one. Only the values are judged here: what the flag requires of
/// other flags is checked when lockd parses all of them.
fn check_values(command: &Command, long: &str, values: &[String]) -> Result<(), String> {
    let mut argv = vec!["lockd".to_owned()];
    for value in values {
        argv.push(format!("--{long}={value}"));
    }
    match command.clone().try_get_matches_from(argv) {
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) =>
        {
            Err(clap_reason(&err))
        }
        _ => Ok(()),
    }
}

/// A TOML value as the strings the flag `arg` would be given on the command line.
fn flag_values(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
    let repeated = matches!(arg.get_action(), ArgAction::Append);
    match value {
        toml::Value::Boolean(on) if is_switch => Ok(if *on {
            vec!["true".to_owned()]
        } else {
            Vec::new()
        }),
        _ if is_switch => Err("expected true or false".to_owned()),
        toml::Value::Array(items) if repeated => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => Err("expected one value, not a list".to_owned()),
        other => Ok(vec![scalar(other)?]),
    }
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        toml::Value::Boolean(on) => Ok(on.to_string()),
        other => Err(format!(
            "expected a string or a number, not {}",
            other.type_str()
        )),
    }
}

/// The reason in a clap error, without clap's `error:` prefix and usage lines.
fn clap_reason(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_owned()
}

/// The effective settings as a TOML file that `--config` takes back, each with where it came
/// from (`from_file`: the flags the file set). Secrets never appear: lockd only ever reads them
/// from files, so the file's path is all there is to show.
pub(crate) fn effective(
    command: &Command,
    matches: &ArgMatches,
    from_file: &BTreeSet<String>,
) -> String {
    let mut out = String::from(
        "# lockd's effective settings: flags > LOCKD_* environment > --config file > defaults\n",
    );
    for arg in command.get_arguments().filter(|arg| is_settable(arg)) {
        let long = arg.get_long().unwrap_or_default();
        let id = arg.get_id().as_str();
        let values: Vec<&OsStr> = matches
            .get_raw(id)
            .map(|raw| raw.collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) if from_file.contains(id) => "file",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let line = match values.as_slice() {
            [] if switch => format!("{long} = false"),
            [] => format!("# {long} ="),
            [one] if !matches!(arg.get_action(), ArgAction::Append) => {
                format!("{long} = {}", toml_value(one, switch))
            }
            many => {
                let items: Vec<String> = many.iter().map(|v| toml_value(v, false)).collect();
                format!("{long} = [{}]", items.join(", "))
            }
        };
        out.push_str(&format!("{line:<60} # {source}\n"));
    }
    out
}

/// Every setting as a Markdown table: its key in a `--config` file, its environment variable,
/// its default and what it does (the flag's short help). docs/configuration.md holds it, and a
/// test keeps the two the same.
#[cfg(test)]
pub(crate) fn reference(command: &Command) -> String {
    let mut out = String::from("| key | environment | default | meaning |\n|---|---|---|---|\n");
    for arg in command.get_arguments().filter(|arg| is_settable(arg)) {
        let long = arg.get_long().unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| format!("`{}`", value.to_string_lossy()))
            .collect();
        let default = match (defaults.is_empty(), arg.get_action()) {
            (true, ArgAction::SetTrue) => "`false`".to_owned(),
            (true, _) => "none".to_owned(),
            (false, _) => defaults.join(", "),
        };
        let help = arg
            .get_help()
            .map(|help| help.to_string().replace('\n', " ").replace('|', "\\|"))
            .unwrap_or_default();
        out.push_str(&format!(
            "| `{long}` | `{}` | {default} | {help} |\n",
            env_name(long)
        ));
    }
    out
}

/// One value in TOML: a number or a switch bare, anything else as a quoted string.
fn toml_value(raw: &OsStr, switch: bool) -> String {
    let text = raw.to_string_lossy();
    if switch || text.parse::<i64>().is_ok() {
        return text.into_owned();
    }
    toml::Value::String(text.into_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Command {
        Command::new("t")
            .arg(
                Arg::new("max_frame_bytes")
                    .long("max-frame-bytes")
                    .value_parser(clap::value_parser!(u32)),
            )
            .arg(
                Arg::new("listen")
                    .long("listen")
                    .default_value("127.0.0.1:5555"),
            )
            .arg(
                Arg::new("trusted")
                    .long("trusted")
                    .action(ArgAction::SetTrue),
            )
            .arg(
                Arg::new("lockd_arg")
                    .long("lockd-arg")
                    .action(ArgAction::Append),
            )
            .arg(Arg::new(CONFIG_FLAG).long(CONFIG_FLAG))
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockd.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("lockd")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn the_file_gives_defaults_that_flags_override() {
        let (_dir, path) =
            file("max-frame-bytes = 100\ntrusted = true\nlockd-arg = [\"a\", \"b\"]\n");
        let path = path.to_str().unwrap();
        let args = argv(&["--config", path]);
        let (with_file, _) = command_with_sources(command(), &args).unwrap();
        let matches = with_file.get_matches_from(&args);
        assert_eq!(matches.get_one::<u32>("max_frame_bytes"), Some(&100));
        assert!(matches.get_flag("trusted"));
        let repeated: Vec<&String> = matches.get_many("lockd_arg").unwrap().collect();
        assert_eq!(repeated, ["a", "b"]);
        assert_eq!(
            matches.get_one::<String>("listen").unwrap(),
            "127.0.0.1:5555"
        );

        let args = argv(&[&format!("--config={path}"), "--max-frame-bytes", "200"]);
        let (with_file, _) = command_with_sources(command(), &args).unwrap();
        let matches = with_file.get_matches_from(&args);
        assert_eq!(matches.get_one::<u32>("max_frame_bytes"), Some(&200));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_the_key() {
        for (text, wanted) in [
            ("max-frame-byte = 1\n", "unknown key `max-frame-byte`"),
            (
                "max-frame-bytes = \"lots\"\n",
                "key `max-frame-bytes`: invalid value 'lots'",
            ),
            (
                "max-frame-bytes = [1, 2]\n",
                "key `max-frame-bytes`: expected one value",
            ),
            ("trusted = 1\n", "key `trusted`: expected true or false"),
            ("config = \"x\"\n", "unknown key `config`"),
            ("listen = \n", "not valid TOML"),
        ] {
            let (_dir, path) = file(text);
            let args = argv(&["--config", path.to_str().unwrap()]);
            let err = command_with_sources(command(), &args)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(path.to_str().unwrap()), "{text:?}: {err}");
            assert!(err.contains(wanted), "{text:?}: {err}");
        }
    }

    #[test]
    fn environment_variables_are_the_flags_in_capitals() {
        assert_eq!(env_name("max-frame-bytes"), "LOCKD_MAX_FRAME_BYTES");
        // lockctl's own variables stay lockctl's.
        assert_eq!(env_name("tls-cert"), "LOCKD_SERVER_TLS_CERT");
        assert_eq!(env_name("http"), "LOCKD_SERVER_HTTP");
        let (command, _) = command_with_sources(command(), &argv(&[])).unwrap();
        let listen = command
            .get_arguments()
            .find(|a| a.get_id() == "listen")
            .unwrap();
        assert_eq!(listen.get_env(), Some(OsStr::new("LOCKD_LISTEN")));
        let config = command
            .get_arguments()
            .find(|a| a.get_id() == CONFIG_FLAG)
            .unwrap();
        assert_eq!(
            config.get_env(),
            None,
            "--config is found before the rest is parsed"
        );
    }

    #[test]
    fn the_effective_settings_read_back_as_a_file() {
        let (_dir, path) = file("max-frame-bytes = 100\nlockd-arg = [\"a\"]\n");
        let args = argv(&["--config", path.to_str().unwrap(), "--trusted"]);
        let (with_file, from_file) = command_with_sources(command(), &args).unwrap();
        let matches = with_file.clone().get_matches_from(&args);
        let printed = effective(&with_file, &matches, &from_file);
        assert!(printed.contains("max-frame-bytes = 100"), "{printed}");
        assert!(printed.contains("# file"), "{printed}");
        assert!(printed.contains("# flag"), "{printed}");
        assert!(printed.contains("listen = \"127.0.0.1:5555\""), "{printed}");
        assert!(printed.contains("trusted = true"), "{printed}");
        assert!(printed.contains("lockd-arg = [\"a\"]"), "{printed}");
        let (_dir, again) = file(&printed);
        let args = argv(&["--config", again.to_str().unwrap()]);
        let (with_file, _) = command_with_sources(command(), &args).unwrap();
        let matches = with_file.get_matches_from(&args);
        assert_eq!(matches.get_one::<u32>("max_frame_bytes"), Some(&100));
        assert!(matches.get_flag("trusted"));
    }
}
