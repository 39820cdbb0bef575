//! Running the real `mbctl` binary from the daemon package's tests: where
//! it is (see `e2e_mbctl.rs` for why it is looked up next to the daemon's
//! binaries) and a bounded run of it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// Upper bound for one `mbctl` run (its own `--timeout` is 10 s per call).
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

/// The newest modification time of the files under `dir` whose names end in
/// one of `exts`.
fn newest_source(dir: &Path, exts: &[&str], newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            newest_source(&path, exts, newest);
        } else if exts.iter().any(|e| path.to_string_lossy().ends_with(e)) {
            if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                    *newest = Some((modified, path));
                }
            }
        }
    }
}

/// The `mbctl` binary of this build (see the module documentation). Panics
/// with what to do if it is missing or older than its sources.
pub fn mbctl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        // <target-dir>/<profile>/deps/e2e_mbctl-HASH -> <target-dir>/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("unexpected test executable path {}", exe.display()));
        let bin = profile_dir.join(format!("mbctl{}", std::env::consts::EXE_SUFFIX));
        let hint = "run `cargo build -p mbctl` (same profile and CARGO_TARGET_DIR) first, \
                    or run the tests with `cargo test --workspace`, which builds it";
        let built = std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("mbctl binary {} not found ({e}): {hint}", bin.display()));
        // What the binary is built from and Cargo tracks: the ctl sources,
        // the shared plain types and the API definitions of the proto crate.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root");
        let mut newest = None;
        newest_source(&root.join("ctl/src"), &[".rs"], &mut newest);
        newest_source(&root.join("types/src"), &[".rs"], &mut newest);
        newest_source(&root.join("proto/src"), &[".rs"], &mut newest);
        newest_source(&root.join("proto/proto"), &[".proto"], &mut newest);
        let (newest_time, newest_path) = newest.expect("the ctl sources");
        assert!(
            newest_time <= built,
            "mbctl binary {} is older than {}: {hint}",
            bin.display(),
            newest_path.display()
        );
        bin
    })
}

/// What one `mbctl` run gave.
#[derive(Debug)]
pub struct Out {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Out {
    /// Asserts exit 0 and nothing on stderr; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "mbctl failed: {self:?}");
        assert_eq!(self.stderr, "", "mbctl wrote to stderr: {self:?}");
        &self.stdout
    }

    /// Asserts exit 0 and parses stdout as one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        let text = self.ok();
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

/// Reads `stream` to its end on a thread and sends the text.
fn read_to_end_on_thread(
    mut stream: impl Read + Send + 'static,
    index: usize,
    tx: std::sync::mpsc::Sender<(usize, String)>,
) {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
        let _ = tx.send((index, String::from_utf8_lossy(&buf).into_owned()));
    });
}

/// Runs `cmd` to its end (bounded: killed by PID at [`RUN_LIMIT`]).
pub fn run_blocking(mut cmd: Command) -> Out {
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    read_to_end_on_thread(child.stdout.take().unwrap(), 0, tx.clone());
    read_to_end_on_thread(child.stderr.take().unwrap(), 1, tx);
    let deadline = Instant::now() + RUN_LIMIT;
    let mut texts = [String::new(), String::new()];
    for _ in 0..2 {
        // Both pipes reach their end when the process exits.
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((i, text)) => texts[i] = text,
            Err(_) => {
                // `Child::kill` signals exactly this (not yet reaped) PID.
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {RUN_LIMIT:?}");
            }
        }
    }
    let status = child.wait().expect("wait for mbctl");
    let [stdout, stderr] = texts;
    Out {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// Runs `cmd` on a blocking thread, so that the test's runtime stays free.
pub async fn run(cmd: Command) -> Out {
    tokio::task::spawn_blocking(move || run_blocking(cmd))
        .await
        .expect("the mbctl runner panicked")
}

/// Runs `mbctl ARGS` (bounded), with `MBCTL_SOCKET` removed from its
/// environment so only the arguments say which daemon it asks.
pub async fn run_args(args: &[&str]) -> Out {
    let mut cmd = Command::new(mbctl_bin());
    cmd.args(args)
        .env_remove("MBCTL_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    run(cmd).await
}
