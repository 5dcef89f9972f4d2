//! The echo server of seed 001 ("Awaits, how do they work?") and seed 002 (asyncio's
//! `sock_accept` / `sock_recv` loop), on thenable's TCP.
//!
//! Every connection is served by its own task: each line comes back prefixed with
//! `echo: `, and `bye` closes the connection. A client that sends a line longer than
//! the limit, or bytes that are not text, gets an error line and is disconnected;
//! everyone else is served on.
//!
//! ```sh
//! cargo run --example echo_server            # serves 127.0.0.1:25000 for ever
//! cargo run --example echo_server -- --demo  # server and clients in-process, then exits
//! ```
//!
//! With the server running, try `nc 127.0.0.1 25000` in another terminal.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use thenable::net::{TcpListener, TcpStream};
use thenable::{sleep, spawn, Error, Promise};

const ADDRESS: &str = "127.0.0.1:25000";
/// The longest line a client may send, in bytes.
const MAX_LINE: usize = 1024;
/// How long a demo client pauses before each line.
const THINKING: Duration = Duration::from_millis(10);
/// How long the server waits after a failed accept before it accepts again.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

fn main() {
    let outcome = if std::env::args().any(|arg| arg == "--demo") {
        thenable::block_on(demo())
    } else {
        TcpListener::bind(ADDRESS)
            .map_err(Error::from)
            .and_then(|listener| {
                println!("Listening on {}", listener.local_addr()?);
                thenable::block_on(serve(listener))
            })
    };
    if let Err(e) = outcome {
        eprintln!("echo_server: {e}");
        std::process::exit(1);
    }
}

/// Accepts connections for ever; each is served by its own task, whose failure is
/// logged and ends only that connection.
fn serve(listener: TcpListener) -> Promise<()> {
    spawn(async move {
        loop {
            let (conn, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Mostly out of file descriptors (too many clients): the ones being
                // served are fine, and descriptors come back as they hang up. As
                // asyncio does, pause rather than spin, then accept again.
                Err(e) => {
                    println!("[server] accept failed ({e}): retrying in {ACCEPT_RETRY:?}");
                    sleep(ACCEPT_RETRY).await?;
                    continue;
                }
            };
            println!("[server] connected to {peer}");
            // Detached: dropping the promise leaves the task running.
            drop(spawn(echo(conn, peer)).catch(move |e| {
                println!("[server] connection with {peer} failed: {e}");
                Ok(())
            }));
        }
    })
}

/// The seed's `echo_server(conn)`: read a line, answer it, until `bye`.
async fn echo(conn: TcpStream, peer: SocketAddr) -> Result<(), Error> {
    loop {
        let line = match conn.read_line(MAX_LINE).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                println!("[server] {peer} hung up");
                return Ok(());
            }
            Err(e) if is_bad_input(&e) => {
                println!("[server] {peer} sent bad input ({e}): disconnecting it");
                conn.write_all(format!("error: {e}\n")).await?;
                return Ok(()); // dropping the last handle closes the socket
            }
            Err(e) => return Err(e),
        };
        if line.trim() == "bye" {
            println!("[server] {peer} said bye");
            return Ok(());
        }
        println!("[server] received {line:?} from {peer}");
        conn.write_all(format!("echo: {line}\n")).await?;
    }
}

/// A line over the limit, or one that is not UTF-8.
fn is_bad_input(error: &Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == ErrorKind::InvalidData)
}

/// The server on a free port and four clients at once, one of them rude; prints
/// what each client saw, then stops the server.
async fn demo() -> Result<(), Error> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    println!("Listening on {addr}");
    let server = serve(listener);

    let conversations = [
        ("alice", vec!["hello".to_string(), "how are you?".into()]),
        ("bob", vec!["ping".into(), "ping again".into()]),
        ("carol", vec!["promises all the way down".into()]),
        (
            "mallory",
            vec!["x".repeat(MAX_LINE + 1), "still there?".into()],
        ),
    ];
    let clients: Vec<(&str, Promise<Vec<String>>)> = conversations
        .into_iter()
        .enumerate()
        .map(|(i, (name, lines))| {
            let start = Duration::from_millis(3 * i as u64);
            (name, spawn(client(addr, start, lines)))
        })
        .collect();

    let mut transcripts = Vec::new();
    for (name, transcript) in clients {
        transcripts.push((name, transcript.await?));
    }
    server.cancel(); // stop accepting: closes the listening socket

    println!();
    for (name, transcript) in transcripts {
        println!("--- {name}");
        for line in transcript {
            println!("{line}");
        }
    }
    Ok(())
}

/// Sends each line and reads the answer, then says `bye` and waits for the server
/// to close; returns the conversation as the client saw it.
async fn client(
    addr: SocketAddr,
    start: Duration,
    lines: Vec<String>,
) -> Result<Vec<String>, Error> {
    sleep(start).await?;
    let conn = TcpStream::connect(addr).await?;
    let mut transcript = Vec::new();
    for line in lines.iter().chain([&"bye".to_string()]) {
        sleep(THINKING).await?; // so the server interleaves the conversations
        transcript.push(format!("> {}", abbreviate(line)));
        conn.write_all(format!("{line}\n")).await?;
        if line == "bye" {
            break;
        }
        match conn.read_line(2 * MAX_LINE).await? {
            Some(answer) if answer.starts_with("error:") => {
                transcript.push(format!("< {answer}"));
                break; // the server hangs up on us
            }
            Some(answer) => transcript.push(format!("< {answer}")),
            None => break,
        }
    }
    // The server closes: the end of the stream, or a reset if it closed with some
    // of our bytes unread (TCP answers that with RST).
    match conn.read_line(MAX_LINE).await {
        Ok(None) | Err(_) => transcript.push("(the server closed the connection)".into()),
        Ok(Some(unexpected)) => transcript.push(format!("< {unexpected} (unexpected)")),
    }
    Ok(transcript)
}

fn abbreviate(line: &str) -> String {
    if line.len() <= 40 {
        line.to_string()
    } else {
        format!("{}... ({} bytes)", &line[..20], line.len())
    }
}
