//! A minimal HTTP/1.1 GET client over `thenable::net::TcpStream`, with a timeout,
//! against a small HTTP server that the example starts itself on the same loop.
//!
//! Three requests: `/` answers at once, `/missing` is a 404, and `/slow` never
//! answers, so its request hits the timeout and is cancelled (which closes its
//! socket). The client reads top-down: connect, send the request, read the status
//! line, the headers, then exactly `Content-Length` bytes of body.
//!
//! ```sh
//! cargo run --example http_get                          # the three requests above
//! cargo run --example http_get -- example.com:80 /      # GET from another server
//! ```

use std::time::Duration;

use thenable::net::{TcpListener, TcpStream};
use thenable::{spawn, Error, Promise};

/// How long a request may take, connection included.
const TIMEOUT: Duration = Duration::from_millis(500);
/// The longest status or header line either side accepts.
const MAX_LINE: usize = 8 * 1024;
/// The largest body the client accepts.
const MAX_BODY: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match &args[..] {
        [] => thenable::block_on(against_own_server()),
        [address] => thenable::block_on(show(address, "/")),
        [address, path] => thenable::block_on(show(address, path)),
        _ => Err(Error::msg("usage: http_get [HOST:PORT [PATH]]")),
    };
    if let Err(e) = outcome {
        eprintln!("http_get: {e}");
        std::process::exit(1);
    }
}

async fn against_own_server() -> Result<(), Error> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let server = serve(listener);
    println!("test server on http://{addr}/");
    for path in ["/", "/missing", "/slow"] {
        println!();
        if let Err(e) = show(&addr, path).await {
            println!("failed: {e}");
        }
    }
    server.cancel(); // stop accepting: closes the listening socket
    Ok(())
}

/// Requests `path` from `addr` and prints the response.
async fn show(addr: &str, path: &str) -> Result<(), Error> {
    println!("GET {path} from {addr}");
    match get(addr, path).timeout(TIMEOUT).await {
        Ok(response) => {
            println!("{}", response.status_line);
            println!("{}", response.body.trim_end());
            Ok(())
        }
        Err(e) if e.is_timeout() => {
            Err(Error::msg(format!("no answer within {TIMEOUT:?}: gave up")))
        }
        Err(e) => Err(e),
    }
}

/// What the client keeps of a response.
struct Response {
    status_line: String,
    body: String,
}

/// One GET request on its own connection (`Connection: close`).
fn get(addr: &str, path: &str) -> Promise<Response> {
    let addr = addr.to_string();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: thenable-http-get\r\n\
         Accept: text/plain\r\nConnection: close\r\n\r\n"
    );
    spawn(async move {
        let conn = TcpStream::connect(addr.clone())
            .await
            .map_err(|e| Error::msg(format!("cannot connect to {addr}: {e}")))?;
        conn.write_all(request).await?;

        let status_line = conn
            .read_line(MAX_LINE)
            .await?
            .ok_or_else(|| Error::msg("the server closed before answering"))?;
        if !status_line.starts_with("HTTP/1.") {
            return Err(Error::msg(format!("not an HTTP response: {status_line:?}")));
        }

        let mut content_length = None;
        loop {
            let header = conn
                .read_line(MAX_LINE)
                .await?
                .ok_or_else(|| Error::msg("the server closed in the middle of the headers"))?;
            if header.is_empty() {
                break; // the blank line that ends the headers
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    let length: usize = value.trim().parse()?;
                    content_length = Some(length);
                }
            }
        }

        let body = match content_length {
            Some(length) if length > MAX_BODY => {
                return Err(Error::msg(format!("body of {length} bytes is too large")))
            }
            Some(length) => conn.read_exact(length).await?,
            None => read_to_end(&conn).await?, // `Connection: close` ends the body
        };
        let body = String::from_utf8(body)?;
        Ok(Response { status_line, body })
    })
}

async fn read_to_end(conn: &TcpStream) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    loop {
        let chunk = conn.read(64 * 1024).await?;
        if chunk.is_empty() {
            return Ok(body);
        }
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Error::msg("body too large"));
        }
        body.extend(chunk);
    }
}

/// The test server: one task per connection, answering one request each.
fn serve(listener: TcpListener) -> Promise<()> {
    spawn(async move {
        loop {
            let (conn, _peer) = listener.accept().await?;
            // Detached: dropping the promise leaves the task running.
            drop(spawn(answer(conn)).catch(|e| {
                println!("(server: a connection failed: {e})");
                Ok(())
            }));
        }
    })
}

async fn answer(conn: TcpStream) -> Result<(), Error> {
    let request_line = conn.read_line(MAX_LINE).await?.unwrap_or_default();
    // Skip the headers: this server does not need them.
    while let Some(header) = conn.read_line(MAX_LINE).await? {
        if header.is_empty() {
            break;
        }
    }
    let path = request_line.split(' ').nth(1).unwrap_or("");
    let (status, body) = match path {
        "/" => ("200 OK", "Hello from a thenable server!\n"),
        "/slow" => {
            // Never answers: waits until the client gives up and closes.
            while !conn.read(1024).await?.is_empty() {}
            return Ok(());
        }
        _ => ("404 Not Found", "Nothing here.\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response).await
}
