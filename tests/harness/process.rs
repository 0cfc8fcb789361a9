//! The `coinpay` binary as a child process, found by the address it prints when it listens.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a process printed, line by line, as the reader threads have seen it so far.
pub type Logs = Arc<Mutex<String>>;

/// The lines in which `serve` and `sandbox` tell where they listen.
const LISTENING: [&str; 2] = [
    "coinpay listening on http://",
    "coinpay sandbox listening on http://",
];

/// How long a start-up may take (a debug build migrating a fresh MariaDB database on a busy
/// machine takes seconds).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `coinpay` process; killed when dropped.
pub struct Process {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
}

impl Process {
    /// Starts `bin args` in `cwd` with exactly `env` (and `PATH`: nothing of the caller's
    /// environment leaks in), and waits until it prints the address it listens on.
    ///
    /// Its stdout is collected in the returned [`Logs`], and so is its stderr, unless
    /// `stderr_to` names a file for it (the benchmark's choice: collecting every log line would
    /// cost the load generator CPU on the machine it measures). `COINPAY_TEST_ECHO` set echoes
    /// collected stderr lines. A process that does not start in time is killed, and the error
    /// carries what it printed.
    pub fn spawn<K, V>(
        bin: &Path,
        args: &[String],
        env: impl IntoIterator<Item = (K, V)>,
        cwd: &Path,
        stderr_to: Option<File>,
    ) -> Result<(Process, Logs), String>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let capture_stderr = stderr_to.is_none();
        let stderr = stderr_to.map_or_else(Stdio::piped, Stdio::from);
        let mut child = Command::new(bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let logs = Logs::default();
        if capture_stderr && let Some(stderr) = child.stderr.take() {
            let echo = std::env::var_os("COINPAY_TEST_ECHO").is_some();
            collect(stderr, logs.clone(), move |line| {
                if echo {
                    eprintln!("[coinpay] {line}");
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            collect(stdout, logs.clone(), move |line| {
                if let Some(addr) = LISTENING.iter().find_map(|p| line.strip_prefix(p)) {
                    let _ = tx.send(addr.to_string());
                }
            });
        }
        let mut process = Process {
            child,
            addr: String::new(),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                process.addr = addr;
                Ok((process, logs))
            }
            Err(_) => {
                process.kill();
                let printed = logs.lock().map(|g| g.clone()).unwrap_or_default();
                Err(format!(
                    "{} did not start within {START_TIMEOUT:?}; it printed:\n{printed}",
                    bin.display()
                ))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no goodbye (a no-op on a process that has exited).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (None if it did not exit within `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < within {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Appends each line of `from` to `logs` on a thread of its own, after handing it to `each`.
fn collect(
    from: impl std::io::Read + Send + 'static,
    logs: Logs,
    each: impl Fn(&str) + Send + 'static,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            each(&line);
            let mut g = logs.lock().unwrap_or_else(|p| p.into_inner());
            g.push_str(&line);
            g.push('\n');
        }
    });
}
