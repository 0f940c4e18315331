//! Running a client command (ctr, podman, docker) with a deadline: its output is captured,
//! and it is killed when it overruns, so a hung proxy fails the test instead of stalling it.

use std::io::Read as _;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Proxy variables removed from every client's environment: all traffic stays on loopback.
pub const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// Outcome of one command.
#[derive(Debug)]
pub struct CmdRun {
    /// The command line, for messages.
    pub command: String,
    /// `None` when the command was killed at its deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdRun {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Panics with the command line and its output unless it succeeded.
    pub fn assert_success(&self, what: &str) -> &CmdRun {
        assert!(self.success(), "{what}: {}", self.describe());
        self
    }

    /// The command, its outcome and its output, for assertion messages.
    pub fn describe(&self) -> String {
        let outcome = match self.status {
            Some(s) => format!("{s}"),
            None => format!("killed after its {:?} deadline", self.elapsed),
        };
        format!(
            "`{}` -> {outcome} in {:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.command,
            self.elapsed,
            super::tail_text(&self.stderr, 150),
            super::tail_text(&self.stdout, 150)
        )
    }
}

/// Runs `cmd` with stdin closed and proxy variables removed; kills it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> CmdRun {
    let command = describe_command(cmd);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn `{command}`: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = started + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait on a client command") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    // A grandchild holding the pipes open would block these joins; clients here spawn none
    // that outlive them.
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    CmdRun {
        command,
        status,
        stdout,
        stderr,
        elapsed,
    }
}

fn describe_command(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}
