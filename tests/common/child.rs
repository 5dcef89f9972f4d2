//! Child processes: a test binary runs itself again, only its
//! `child_process_entry_point` test, with [`CHILD_MODE`] naming what the child
//! does. The child reports events as `child: ...` lines on its standard output,
//! which [`Child::expect`] reads one by one.

use std::fmt::Display;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// The environment variable that makes a test binary a child, and says in which
/// mode.
pub const CHILD_MODE: &str = "THENABLE_TEST_CHILD_MODE";
const EVENT_PREFIX: &str = "child: ";
/// How long the parent waits for the child's next event or its exit: a safety net
/// that turns a hang into a failure, never a timing assertion.
pub const SAFETY_NET: Duration = Duration::from_secs(60);

/// This test binary, to be run as a child in `mode`.
pub fn command(mode: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child_process_entry_point",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODE, mode);
    command
}

/// The mode this process runs in as a child; `None` in an ordinary test run, where
/// `child_process_entry_point` does nothing.
pub fn mode() -> Option<String> {
    std::env::var(CHILD_MODE).ok()
}

/// The child side: reports an event to the parent.
pub fn report(event: impl Display) {
    println!("{EVENT_PREFIX}{event}");
}

/// A running child and the events it reports.
pub struct Child {
    pub process: std::process::Child,
    events: mpsc::Receiver<String>,
}

impl Drop for Child {
    fn drop(&mut self) {
        // A test that failed half-way leaves no child behind waiting for input.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Starts `command` (see [`command`]) with `stdin` as its standard input.
pub fn start(mut command: Command, stdin: Stdio) -> Child {
    let mut process = command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(process.stdout.take().unwrap());
    let (send, events) = mpsc::channel();
    thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            // Anywhere in the line: the harness prints the test's name first.
            if let Some((_, event)) = line.split_once(EVENT_PREFIX) {
                if send.send(event.to_string()).is_err() {
                    break;
                }
            }
        }
    });
    Child { process, events }
}

impl Child {
    pub fn write(&mut self, bytes: &[u8]) {
        let stdin = self.process.stdin.as_mut().expect("stdin is a pipe");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes the pipe: the child sees the end of input.
    pub fn close_stdin(&mut self) {
        drop(self.process.stdin.take());
    }

    /// The next event must be `expected`.
    pub fn expect(&self, expected: &str) {
        match self.events.recv_timeout(SAFETY_NET) {
            Ok(event) => assert_eq!(event, expected),
            Err(_) => panic!("the child never reported {expected:?}"),
        }
    }

    /// Waits for the child to exit successfully; returns the events not expected yet.
    pub fn finish(mut self) -> Vec<String> {
        let mut waited = Duration::ZERO;
        let status = loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                break status;
            }
            assert!(
                waited < SAFETY_NET,
                "the child did not exit: standard input kept its loop waiting"
            );
            thread::sleep(Duration::from_millis(10));
            waited += Duration::from_millis(10);
        };
        assert!(status.success(), "the child failed: {status}");
        // Its stdout is closed: the reader thread forwards what is left, then ends.
        self.events.iter().collect()
    }
}

/// A file holding `contents`, as a child's standard input.
pub fn stdin_from_file(contents: &[u8]) -> Stdio {
    let path = std::env::temp_dir().join(format!(
        "thenable-stdin-test-{}-{}",
        std::process::id(),
        contents.len()
    ));
    std::fs::write(&path, contents).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap(); // the open descriptor keeps the data
    Stdio::from(file)
}
