//! Runs the built `mbctl` binary without a daemon: connection errors, usage
//! errors and completions.

use std::process::{Command, Output};

fn mbctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mbctl"))
        .args(args)
        .env_remove("MBCTL_SOCKET")
        .output()
        .expect("run mbctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("utf-8 output")
}

#[test]
fn no_daemon_is_one_line_and_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let sock = sock.to_str().unwrap();
    for cmd in [
        &["peers"][..],
        &["status"],
        &["routes", "--vni", "1"],
        &["watch", "routes"],
        &["health"],
    ] {
        let mut args = vec!["--socket", sock];
        args.extend_from_slice(cmd);
        let out = mbctl(&args);
        assert_eq!(out.status.code(), Some(3), "{cmd:?}");
        assert!(out.stdout.is_empty(), "{cmd:?}");
        let err = text(&out.stderr);
        assert_eq!(
            err,
            format!(
                "mbctl: cannot connect to metalbondd at {sock}: No such file or directory (is the daemon running?)\n"
            ),
            "{cmd:?}"
        );
    }
}

#[test]
fn no_daemon_in_json_mode_is_a_json_error_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let out = mbctl(&["-o", "json", "--socket", sock.to_str().unwrap(), "vnis"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stderr.is_empty());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "UNAVAILABLE");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("cannot connect to metalbondd at "));
}

#[test]
fn socket_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("env.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_mbctl"))
        .arg("status")
        .env("MBCTL_SOCKET", &sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains(sock.to_str().unwrap()));
}

#[test]
fn stale_socket_is_connection_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let out = mbctl(&["--socket", sock.to_str().unwrap(), "peers"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("Connection refused (is the daemon running?)"),
        "{err}"
    );
}

#[test]
fn bad_route_is_one_line_and_exit_2_before_connecting() {
    // The socket does not exist: a bad route must be reported first (exit 2, not 3).
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let sock = sock.to_str().unwrap();
    for (cmd, bad) in [
        ("announce", "200#10.0.2.0/24@2001:db8::2#nat#2048#1024"),
        ("withdraw", "x#10.0.0.0/8@::1"),
        ("announce", "1#10.0.0.0/8@::1#bogus"),
    ] {
        let out = mbctl(&["--socket", sock, cmd, "100#10.0.1.0/24@2001:db8::1", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(out.stdout.is_empty());
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("mbctl: invalid route {bad:?}: ")),
            "{err}"
        );
    }
    let out = mbctl(&["-o", "json", "--socket", sock, "announce", "1#10.0.0.0/8"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "INVALID_ARGUMENT");
}

#[test]
fn bad_filters_and_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let sock = sock.to_str().unwrap();
    for args in [
        &["--socket", sock, "routes", "--prefix", "10.0.0.0"][..],
        &["--socket", sock, "routes", "--next-hop", "nothost"],
        &["--socket", sock, "routes", "--type", "weird"],
        &["--socket", sock, "announce"],
        &["--socket", sock, "--timeout", "-1", "peers"],
        &["frobnicate"],
    ] {
        let out = mbctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        // clap's errors too: one line naming what is wrong, no usage text.
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("mbctl: "), "{args:?}: {err}");
    }
    let err = text(&mbctl(&["frobnicate"]).stderr);
    assert!(err.contains("'frobnicate'"), "{err}");
    let err = text(&mbctl(&["--socket", sock, "announce"]).stderr);
    assert!(
        err.contains("<ROUTE>"),
        "the missing argument is named: {err}"
    );
}

#[test]
fn bad_client_arguments_are_one_line_and_exit_2_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let sock = sock.to_str().unwrap();
    for (args, msg) in [
        (
            &["subscribe", "16777216"][..],
            "mbctl: invalid VNI \"16777216\": not a number from 0 to 16777215\n",
        ),
        (
            &["unsubscribe", "x"],
            "mbctl: invalid VNI \"x\": not a number from 0 to 16777215\n",
        ),
        (
            &["unmap", "1x"],
            "mbctl: invalid VNI \"1x\": not a number from 0 to 16777215\n",
        ),
        (
            &["map", "99999999", "1"],
            "mbctl: invalid VNI \"99999999\": not a number from 0 to 16777215\n",
        ),
        (
            &["map", "200", "0"],
            "mbctl: invalid TABLE \"0\": not a number from 1 to 4294967295\n",
        ),
        (
            &["received", "--vni", "16777216"],
            "mbctl: invalid VNI \"16777216\": not a number from 0 to 16777215\n",
        ),
    ] {
        let mut a = vec!["--socket", sock];
        a.extend_from_slice(args);
        let out = mbctl(&a);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(text(&out.stderr), msg, "{args:?}");
    }
    // A host name is a server address (the daemon resolves it); a name
    // with a space, or no port, is not.
    for bad in ["bad host:4711", "host"] {
        let out = mbctl(&["--socket", sock, "server", "add", bad]);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("mbctl: invalid server \"{bad}\": ")),
            "{err}"
        );
    }
    let out = mbctl(&["-o", "json", "--socket", sock, "map", "1", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "INVALID_ARGUMENT");
    // Good arguments get as far as connecting (exit 3).
    for args in [
        &["map", "16777215", "4294967295"][..],
        &["subscribe", "0"],
        &["server", "remove", "[::1]:4711"],
        &["server", "add", "metalbond.example:4711"],
        &["servers"],
    ] {
        let mut a = vec!["--socket", sock];
        a.extend_from_slice(args);
        assert_eq!(mbctl(&a).status.code(), Some(3), "{args:?}");
    }
}

#[test]
fn completions_for_every_shell() {
    let out = mbctl(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = text(&out.stdout);
    assert!(script.contains("_mbctl()"), "{script}");
    assert!(script.contains("complete -F _mbctl"));
    for word in ["announce", "withdraw", "watch", "--socket", "--output"] {
        assert!(script.contains(word), "{word}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = mbctl(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(text(&out.stdout).contains("mbctl"), "{shell}");
    }
}

#[test]
fn help_and_version_exit_0() {
    let out = mbctl(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("announce"));
    let out = mbctl(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("mbctl "));
}
