//! The side-by-side comparison of issue #5: thenable against tokio's current-thread
//! runtime and Node.js native promises, on the eight workloads of WORKLOADS.md.
//!
//! ```sh
//! cargo bench --bench compare                    # full size, 5 runs each (minutes)
//! cargo bench --bench compare -- --quick         # small sizes, 1 run (what CI runs)
//! cargo bench --bench compare -- --only chain,all --runs 9
//! ```
//!
//! It builds `examples/workloads.rs` (thenable) and `examples/workloads_tokio.rs` in
//! release mode, then runs every workload for every contender as a separate process,
//! several times, interleaving the contenders so that a noisy neighbour slows them
//! alike. Time is the median of each program's own `ms=` (the timed part only, not
//! process start-up); memory is the median peak resident set size of the process,
//! read by `/usr/bin/time -f %M` (GNU time; without it, memory is not measured). A run that exits with an error, times out, or
//! prints a `check` other than the workload's expected checksum is a failed run:
//! its cell shows `FAIL` instead of a figure, the reason is printed under the table,
//! and the command exits with status 1. Node.js is skipped, with a note, when `node`
//! is not on the `PATH`.
//!
//! The table is Markdown, ready for `docs/performance.md`; progress goes to stderr.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One workload of WORKLOADS.md: its full size, its `--quick` size, its checksum
/// for size n, and the issue's time target (thenable's time at most this many
/// times the faster of tokio and Node.js).
struct Workload {
    name: &'static str,
    n: u64,
    quick_n: u64,
    expected: fn(u64) -> u64,
    time_target: f64,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "chain",
        n: 1_000_000,
        quick_n: 100_000,
        expected: |n| n,
        time_target: 0.5,
    },
    Workload {
        name: "all",
        n: 1_000_000,
        quick_n: 100_000,
        expected: sum_below,
        time_target: 0.5,
    },
    Workload {
        name: "fanout",
        n: 1_000_000,
        quick_n: 100_000,
        expected: sum_below,
        time_target: 0.5,
    },
    Workload {
        name: "doxbee",
        n: 10_000,
        quick_n: 1_000,
        expected: |n| n,
        time_target: 1.0,
    },
    Workload {
        name: "parallel",
        n: 10_000,
        quick_n: 1_000,
        expected: |n| n * 25,
        time_target: 1.0,
    },
    Workload {
        name: "timers",
        n: 1_000_000,
        quick_n: 100_000,
        expected: |n| n,
        time_target: 1.0,
    },
    Workload {
        name: "tasks",
        n: 1_000_000,
        quick_n: 100_000,
        expected: sum_below,
        time_target: 0.5,
    },
    Workload {
        name: "echo",
        n: 2_000,
        quick_n: 200,
        expected: |n| 50 * n * 64,
        time_target: 1.0,
    },
];

/// 0 + 1 + ... + (n - 1).
fn sum_below(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// The contenders, in table order; thenable is the one the ratios are about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    Thenable,
    Tokio,
    Node,
}

const CONTENDERS: [Contender; 3] = [Contender::Thenable, Contender::Tokio, Contender::Node];

impl Contender {
    /// The `impl=` a correct program prints.
    fn name(self) -> &'static str {
        match self {
            Contender::Thenable => "thenable",
            Contender::Tokio => "tokio",
            Contender::Node => "node",
        }
    }

    /// The cargo example that implements it, if it is one.
    fn example(self) -> Option<&'static str> {
        match self {
            Contender::Thenable => Some("workloads"),
            Contender::Tokio => Some("workloads_tokio"),
            Contender::Node => None,
        }
    }
}

const USAGE: &str = "\
usage: cargo bench --bench compare [-- OPTIONS] [WORKLOAD...]

  --quick             small sizes and 1 run (what CI runs; a few seconds after the build)
  --runs N            runs per workload and contender (default 5, 1 with --quick)
  --only W1,W2,...    only these workloads (so do bare WORKLOAD arguments)
  --n-scale F         multiply every size by F (e.g. 0.1)
  --timeout SECS      a run taking longer fails (default 120)
  --no-build          use the example binaries already built
  -h, --help          this text

workloads: chain, all, fanout, doxbee, parallel, timers, tasks, echo";

struct Options {
    quick: bool,
    runs: Option<usize>,
    only: Vec<String>,
    n_scale: f64,
    timeout: Duration,
    build: bool,
}

fn parse_options(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        runs: None,
        only: Vec::new(),
        n_scale: 1.0,
        timeout: Duration::from_secs(120),
        build: true,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            // `cargo bench` passes this to every harness = false bench.
            "--bench" => {}
            "--quick" => options.quick = true,
            "--runs" => {
                options.runs = Some(
                    value("--runs")?
                        .parse()
                        .ok()
                        .filter(|&runs| runs >= 1)
                        .ok_or("--runs needs a whole number of at least 1")?,
                )
            }
            "--only" => options
                .only
                .extend(value("--only")?.split(',').map(str::to_owned)),
            "--n-scale" => {
                options.n_scale = value("--n-scale")?
                    .parse()
                    .ok()
                    .filter(|&f: &f64| f > 0.0 && f.is_finite())
                    .ok_or("--n-scale needs a positive number")?
            }
            "--timeout" => {
                options.timeout = value("--timeout")?
                    .parse()
                    .ok()
                    .filter(|&s: &f64| s > 0.0 && s.is_finite())
                    .map(Duration::from_secs_f64)
                    .ok_or("--timeout needs a positive number of seconds")?
            }
            "--no-build" => options.build = false,
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            workload => options.only.push(workload.to_owned()),
        }
    }
    options.only.retain(|name| !name.is_empty());
    if let Some(unknown) = options
        .only
        .iter()
        .find(|name| !WORKLOADS.iter().any(|w| w.name == name.as_str()))
    {
        return Err(format!("unknown workload {unknown:?}"));
    }
    Ok(options)
}

/// The failure of every run of a contender whose program could not be built.
const NOT_BUILT: &str = "not built";

fn main() -> ExitCode {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(problem) if problem.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("{problem}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let runs = options.runs.unwrap_or(if options.quick { 1 } else { 5 });
    let workloads: Vec<(&Workload, u64)> = WORKLOADS
        .iter()
        .filter(|w| options.only.is_empty() || options.only.iter().any(|o| o == w.name))
        .map(|w| {
            let base = if options.quick { w.quick_n } else { w.n };
            (w, ((base as f64 * options.n_scale).round() as u64).max(1))
        })
        .collect();

    let node_version = node_version();
    let programs = programs(&root, options.build, node_version.is_some());
    let rss = RssSource::detect();
    eprintln!(
        "compare: {} workload(s) x {} contender(s) x {runs} run(s); peak RSS via {}",
        workloads.len(),
        programs.len(),
        rss.describe()
    );

    // A contender that did not build is reported once, not once per workload.
    let mut failures: Vec<String> = programs
        .iter()
        .filter_map(|(c, program)| Some(format!("{}: {}", c.name(), program.as_ref().err()?)))
        .collect();
    let rows: Vec<Row> = workloads
        .iter()
        .map(|&(workload, n)| {
            run_workload(
                workload,
                n,
                runs,
                &programs,
                rss,
                options.timeout,
                &mut failures,
            )
        })
        .collect();

    print_report(&rows, runs, rss, node_version.as_deref(), &failures);
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A contender and the command line that runs it (to which the workload and n are
/// appended), or why there is none.
type Program = (Contender, Result<Vec<OsString>, String>);

/// The contenders' command lines: the two examples, built unless `build` is false,
/// and Node.js when it is installed.
fn programs(root: &Path, build: bool, has_node: bool) -> Vec<Program> {
    let examples = if build {
        build_examples(root)
    } else {
        prebuilt_examples()
    };
    let mut programs: Vec<Program> = examples
        .into_iter()
        .map(|(contender, binary)| (contender, binary.map(|path| vec![path.into_os_string()])))
        .collect();
    if has_node {
        let script = root.join("benches/node/workloads.js");
        programs.push((Contender::Node, Ok(vec!["node".into(), script.into()])));
    } else {
        eprintln!("compare: `node` is not on the PATH; Node.js is skipped");
    }
    programs
}

/// Runs one workload `runs` times for every contender, interleaved, and returns
/// the medians; failed runs are added to `failures`.
fn run_workload<'a>(
    workload: &'a Workload,
    n: u64,
    runs: usize,
    programs: &[Program],
    rss: RssSource,
    timeout: Duration,
    failures: &mut Vec<String>,
) -> Row<'a> {
    let mut outcomes: Vec<Vec<Outcome>> = programs.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        // Rotate who goes first, so no contender always runs on a cold cache.
        for k in 0..programs.len() {
            let i = (k + run) % programs.len();
            let (contender, program) = &programs[i];
            outcomes[i].push(match program {
                Ok(argv) => measure(argv, workload, n, *contender, rss, timeout),
                Err(_) => Err(NOT_BUILT.to_owned()),
            });
        }
        let progress: Vec<String> = programs
            .iter()
            .zip(&outcomes)
            .map(|((c, _), o)| format!("{} {}", c.name(), short(&o[run])))
            .collect();
        eprintln!(
            "{:<8} n={n} run {}/{runs}: {}",
            workload.name,
            run + 1,
            progress.join(", ")
        );
    }
    let mut row = Row {
        workload,
        n,
        ms: [None; 3],
        kib: [None; 3],
        failed: [false; 3],
    };
    for ((contender, _), outcomes) in programs.iter().zip(outcomes) {
        let slot = CONTENDERS.iter().position(|c| c == contender).unwrap();
        let mut ms = Vec::new();
        let mut kib = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(measured) => {
                    ms.push(measured.ms);
                    kib.extend(measured.kib.map(|k| k as f64));
                }
                Err(why) => {
                    row.failed[slot] = true;
                    let failure = format!("{} {} n={n}: {why}", contender.name(), workload.name);
                    if why != NOT_BUILT && !failures.contains(&failure) {
                        failures.push(failure);
                    }
                }
            }
        }
        if !row.failed[slot] {
            row.ms[slot] = median(ms);
            row.kib[slot] = median(kib);
        }
    }
    row
}

/// Builds both examples in release mode and returns where cargo put them. If the
/// build fails (say, one example does not compile), each is built alone so that a
/// broken contender does not take the other one down with it.
fn build_examples(root: &Path) -> Vec<(Contender, Result<PathBuf, String>)> {
    let examples: Vec<(Contender, &str)> = CONTENDERS
        .iter()
        .filter_map(|c| c.example().map(|e| (*c, e)))
        .collect();
    eprintln!("compare: cargo build --release --example workloads --example workloads_tokio");
    let names: Vec<&str> = examples.iter().map(|(_, e)| *e).collect();
    let together = cargo_build(root, &names);
    examples
        .iter()
        .map(|&(contender, example)| {
            let built = match &together {
                Ok(paths) => paths
                    .iter()
                    .find(|p| p.file_stem().is_some_and(|s| s == example))
                    .cloned()
                    .ok_or_else(|| format!("cargo reported no executable for {example}")),
                Err(_) => cargo_build(root, &[example]).and_then(|paths| {
                    paths
                        .into_iter()
                        .next()
                        .ok_or_else(|| format!("cargo reported no executable for {example}"))
                }),
            };
            (contender, built)
        })
        .collect()
}

/// Runs `cargo build --release --example ...` and returns the executables it
/// reports, or the tail of its diagnostics.
fn cargo_build(root: &Path, examples: &[&str]) -> Result<Vec<PathBuf>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root).args([
        "build",
        "--release",
        "--message-format=json-render-diagnostics",
    ]);
    for example in examples {
        command.args(["--example", example]);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(12)..].join("\n    ");
        return Err(format!("the build failed ({}):\n    {tail}", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout
        .lines()
        .filter(|line| line.contains("\"reason\":\"compiler-artifact\""))
        .filter_map(|line| json_string_field(line, "executable"))
        .map(PathBuf::from)
        .collect())
}

/// `--no-build`: the examples next to this bench, which cargo built in
/// `<target>/release/deps/`.
fn prebuilt_examples() -> Vec<(Contender, Result<PathBuf, String>)> {
    let examples_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("examples")));
    CONTENDERS
        .iter()
        .filter_map(|c| c.example().map(|e| (*c, e)))
        .map(|(contender, example)| {
            let path = examples_dir
                .as_ref()
                .map(|dir| dir.join(example))
                .filter(|path| path.is_file())
                .ok_or_else(|| format!("{example} is not built (run without --no-build)"));
            (contender, path)
        })
        .collect()
}

/// The string value of `"key":"..."` in one line of cargo's JSON output (enough of
/// JSON for the paths cargo prints: `\"`, `\\` and `\/` escapes).
fn json_string_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut value = String::new();
    let mut chars = line[start..].chars();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
}

fn node_version() -> Option<String> {
    let output = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Where peak RSS comes from.
#[derive(Clone, Copy)]
enum RssSource {
    /// `/usr/bin/time -f %M -o FILE`, GNU time's maximum resident set size in KiB.
    GnuTime,
    /// No GNU time here: memory is not measured.
    Unmeasured,
}

impl RssSource {
    /// GNU time if `/usr/bin/time` is GNU time (BSD time has no `-f`).
    fn detect() -> RssSource {
        let out = scratch_file();
        // The probe command is this program's `--help`: it exists whatever the PATH.
        let Ok(this) = std::env::current_exe() else {
            return RssSource::Unmeasured;
        };
        let works = Command::new("/usr/bin/time")
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&out)
            .arg(this)
            .arg("--help")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && read_time_report(&out).0.is_some();
        let _ = std::fs::remove_file(&out);
        if works {
            RssSource::GnuTime
        } else {
            RssSource::Unmeasured
        }
    }

    fn describe(self) -> &'static str {
        match self {
            RssSource::GnuTime => "/usr/bin/time -f %M",
            RssSource::Unmeasured => "nothing (no GNU time at /usr/bin/time): RSS not measured",
        }
    }
}

/// A fresh path in the temporary directory for GNU time's report.
fn scratch_file() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let k = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("thenable-compare-{}-{k}.rss", std::process::id()))
}

/// GNU time's report: its last line is the `%M` figure, and the lines before it,
/// if any, say how the command ended when not with status 0.
fn read_time_report(path: &Path) -> (Option<u64>, Option<String>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (None, None);
    };
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let kib = lines.pop().and_then(|l| l.trim().parse().ok());
    let note = (!lines.is_empty()).then(|| lines.join("; "));
    (kib, note)
}

/// What one successful run measured.
struct Measured {
    ms: f64,
    kib: Option<u64>,
}

/// One run: its measurement, or why it failed.
type Outcome = Result<Measured, String>;

/// A few words on one run for the progress line.
fn short(outcome: &Outcome) -> String {
    match outcome {
        Ok(Measured { ms, kib: Some(kib) }) => {
            format!("{ms:.1} ms {:.0} MiB", *kib as f64 / 1024.0)
        }
        Ok(Measured { ms, kib: None }) => format!("{ms:.1} ms"),
        Err(_) => "FAIL".to_owned(),
    }
}

/// Runs `argv workload n` once, in its own process group so that a timeout kills it
/// and anything it started, and checks the line it prints.
fn measure(
    argv: &[OsString],
    workload: &Workload,
    n: u64,
    contender: Contender,
    rss: RssSource,
    timeout: Duration,
) -> Outcome {
    let time_file = matches!(rss, RssSource::GnuTime).then(scratch_file);
    let mut command = match &time_file {
        Some(file) => {
            let mut c = Command::new("/usr/bin/time");
            c.arg("-f").arg("%M").arg("-o").arg(file).args(argv);
            c
        }
        None => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    command
        .arg(workload.name)
        .arg(n.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0].to_string_lossy()))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    // Waiting happens on its own thread so that this one can give up after the
    // timeout.
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let ended = match finished.recv_timeout(timeout) {
        Ok(ended) => ended,
        Err(_) => {
            kill_group(pid);
            let _ = finished.recv_timeout(Duration::from_secs(10));
            if let Some(file) = &time_file {
                let _ = std::fs::remove_file(file);
            }
            return Err(format!("timed out after {:.1} s", timeout.as_secs_f64()));
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let status: ExitStatus = ended.map_err(|e| format!("cannot wait for the run: {e}"))?;
    let (kib, time_note) = match &time_file {
        Some(file) => {
            let report = read_time_report(file);
            let _ = std::fs::remove_file(file);
            report
        }
        None => (None, None),
    };
    if !status.success() {
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(nothing on stderr)");
        // Under GNU time, a run killed by a signal shows as exit status 128 + signal;
        // time's own report says which signal.
        let how = time_note.unwrap_or_else(|| status.to_string());
        return Err(format!("{how}: {last}"));
    }
    let ms = check_line(&stdout, workload, n, contender)?;
    Ok(Measured { ms, kib })
}

/// Finds the `workload=... impl=... n=... ms=... check=...` line and checks every
/// field but `ms`, which it returns.
fn check_line(
    stdout: &str,
    workload: &Workload,
    n: u64,
    contender: Contender,
) -> Result<f64, String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("workload="))
        .ok_or_else(|| format!("no result line in its output {:?}", stdout.trim()))?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| format!("no {key}= in {line:?}"))
    };
    let expected = (workload.expected)(n);
    if field("workload")? != workload.name
        || field("impl")? != contender.name()
        || field("n")? != n.to_string()
    {
        return Err(format!(
            "printed {line:?} for workload={} impl={} n={n}",
            workload.name,
            contender.name()
        ));
    }
    let check = field("check")?;
    if check != expected.to_string() {
        return Err(format!("check={check}, expected {expected}"));
    }
    field("ms")?
        .parse::<f64>()
        .ok()
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .ok_or_else(|| format!("bad ms= in {line:?}"))
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// One workload's medians, indexed like `CONTENDERS`.
struct Row<'a> {
    workload: &'a Workload,
    n: u64,
    ms: [Option<f64>; 3],
    kib: [Option<f64>; 3],
    failed: [bool; 3],
}

const THENABLE: usize = 0;
const TOKIO: usize = 1;
const NODE: usize = 2;

fn print_report(
    rows: &[Row],
    runs: usize,
    rss: RssSource,
    node_version: Option<&str>,
    failures: &[String],
) {
    let header = [
        "workload",
        "n",
        "thenable ms",
        "tokio ms",
        "node ms",
        "/tokio",
        "/node",
        "time target",
        "thenable MiB",
        "tokio MiB",
        "node MiB",
        "/tokio",
        "/node",
        "RSS target",
    ];
    let mut table: Vec<Vec<String>> = Vec::new();
    for row in rows {
        let cell = |values: &[Option<f64>; 3], slot: usize, format: fn(f64) -> String| {
            if row.failed[slot] {
                "FAIL".to_owned()
            } else {
                values[slot].map_or("-".to_owned(), format)
            }
        };
        let mib =
            |values: &[Option<f64>; 3], slot| cell(values, slot, |k| format!("{:.1}", k / 1024.0));
        let ratio =
            |values: &[Option<f64>; 3], other: usize| match (values[THENABLE], values[other]) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".to_owned(),
            };
        table.push(vec![
            row.workload.name.to_owned(),
            group_digits(row.n),
            cell(&row.ms, THENABLE, format_ms),
            cell(&row.ms, TOKIO, format_ms),
            cell(&row.ms, NODE, format_ms),
            ratio(&row.ms, TOKIO),
            ratio(&row.ms, NODE),
            verdict(&row.ms, row.workload.time_target),
            mib(&row.kib, THENABLE),
            mib(&row.kib, TOKIO),
            mib(&row.kib, NODE),
            ratio(&row.kib, TOKIO),
            ratio(&row.kib, NODE),
            verdict(&row.kib, 1.0),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut out = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            // Names left, figures right, as Markdown renders them with the rule below.
            if i == 0 {
                let _ = write!(out, " {c:<w$} |", w = widths[i]);
            } else {
                let _ = write!(out, " {c:>w$} |", w = widths[i]);
            }
        }
        out
    };
    println!();
    println!("{}", line(&header.map(str::to_owned)));
    // Markdown's alignment row: a colon at the right end right-aligns a column.
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                "-".repeat(w + 2)
            } else {
                format!("{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    println!("|{}|", rule.join("|"));
    for cells in &table {
        println!("{}", line(cells));
    }
    println!();
    println!(
        "Median of {runs} run(s) per cell. ms: each program's own timing of the workload's \
         timed part. MiB: peak RSS of the whole process, via {}.",
        rss.describe()
    );
    println!(
        "Targets (issue #5): thenable time <= 0.5x the faster of tokio and Node.js for chain, \
         all, fanout, tasks; <= 1.0x for doxbee, parallel, timers, echo; RSS <= the smaller \
         of the two everywhere."
    );
    if node_version.is_none() {
        println!("Node.js was not found: targets are judged against tokio alone.");
    }
    println!("Machine: {}.", machine(node_version));
    if !failures.is_empty() {
        println!();
        println!("Failed runs:");
        for failure in failures {
            println!("- {failure}");
        }
    }
}

/// Whether thenable's figure is at most `target` times the best of the others:
/// `yes 0.42x` or `NO 1.30x`, the ratio being against the best.
fn verdict(values: &[Option<f64>; 3], target: f64) -> String {
    let best = [values[TOKIO], values[NODE]]
        .into_iter()
        .flatten()
        .min_by(f64::total_cmp);
    match (values[THENABLE], best) {
        (Some(ours), Some(best)) if best > 0.0 => {
            let ratio = ours / best;
            let held = if ratio <= target { "yes" } else { "NO" };
            format!("{held} {ratio:.2}x<={target:.1}")
        }
        _ => "-".to_owned(),
    }
}

fn format_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// 1000000 as 1,000,000.
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// Cores, CPU model, OS, Node.js version and the date, for the record.
fn machine(node_version: Option<&str>) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_date((seconds / 86_400) as i64);
    let (hour, minute) = ((seconds % 86_400) / 3_600, (seconds % 3_600) / 60);
    format!(
        "{cores} cores, {cpu}, {} {}, Node.js {}; {year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC",
        std::env::consts::OS,
        std::env::consts::ARCH,
        node_version.unwrap_or("absent"),
    )
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Kills the process group `pgid` (the run and anything it started).
fn kill_group(pgid: u32) {
    #[cfg(unix)]
    if let Some(group) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
}
