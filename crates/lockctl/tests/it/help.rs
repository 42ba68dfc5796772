//! Help text (issue 18, point 8): `-h` and `--help` say the same, and each subcommand offers
//! its own flags, with the connection options under a heading of their own.

use crate::support::run_lockctl;

async fn help(args: &[&str]) -> String {
    let output = run_lockctl("127.0.0.1:1", args).await;
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The options listed under `heading:`, up to the next heading or the end of the options.
fn options_under(text: &str, heading: &str) -> Vec<String> {
    let mut lines = text.lines().skip_while(|line| *line != heading).skip(1);
    let mut options = Vec::new();
    for line in lines.by_ref() {
        if !line.starts_with(' ') && !line.is_empty() {
            break;
        }
        let option = line.trim_start();
        if option.starts_with('-') {
            options.push(option.split([' ', ',']).next().unwrap().to_owned());
        }
    }
    options
}

#[tokio::test]
async fn dash_h_and_dash_dash_help_say_the_same() {
    for command in [
        &[][..],
        &["status"],
        &["run"],
        &["lock"],
        &["cluster"],
        &["cluster", "status"],
        &["completions"],
    ] {
        let short = help(&[command, &["-h"]].concat()).await;
        let long = help(&[command, &["--help"]].concat()).await;
        assert_eq!(short, long, "lockctl {command:?}");
    }
}

#[tokio::test]
async fn each_subcommand_offers_its_own_flags_and_the_connection_options_apart() {
    let status = help(&["status", "--help"]).await;
    assert_eq!(options_under(&status, "Options:"), ["--json", "-h"]);
    let connection = options_under(&status, "Connection options:");
    assert!(connection.contains(&"--server".to_owned()), "{status}");
    assert!(
        !status.contains("--timeout") && !status.contains("-w,"),
        "status never waits for a lock: {status}"
    );

    let run = help(&["run", "--help"]).await;
    let own = options_under(&run, "Options:");
    for flag in ["-s", "-n", "-w", "-E", "-v", "-c", "--kill-after"] {
        assert!(own.contains(&flag.to_owned()), "{flag} in {own:?}");
    }
    assert!(!own.contains(&"--server".to_owned()), "{own:?}");
    assert_eq!(options_under(&run, "Connection options:"), connection);
}
