//! The "get user, then get balance" service of seed 000 ("From callbacks to promises,
//! from promises to async/await"), on thenable's TCP: the seed's `server.py` and its
//! generator-based client, in one program.
//!
//! The server speaks a line protocol: `GET user <id>` answers with the user (made up
//! on first sight, with an account holding a random balance), `GET account <id>` with
//! the account, each as one line of JSON. A bad request (unknown command, an id that
//! is not a number, an unknown account, bytes that are not text, a line longer than
//! the limit) gets a JSON error line, and the server reads on, on that connection and
//! every other. A client that disconnects in the middle of a request only ends its
//! own connection.
//!
//! The client runs the seed's `main1`: ten flows at once, each sleeping a random
//! while, getting a user, then that user's balance, each on a connection of its own.
//! Flows whose id is a multiple of 5 fail on purpose after getting the user, and each
//! flow catches its own failure. A side flow starts from a five-second timer. The
//! flows read top-down, `async`/`await` over the promises `TcpStream` returns.
//!
//! ```sh
//! cargo run --example balance                  # server and client in one process, then exits
//! cargo run --example balance -- server [PORT] # the seed's server.py: serves for ever
//! cargo run --example balance -- client [PORT] # the seed's client, against that server
//! cargo run --example balance -- --demo        # both, fixed random seed, plus a rude client
//! ```
//!
//! `PORT` defaults to the seed's 53210, on 127.0.0.1; the in-process modes use a free
//! port. Try `nc 127.0.0.1 53210` against the server, and type `GET user 7`.

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::io::AsyncBufReadExt;
use thenable::net::{TcpListener, TcpStream};
use thenable::{all, sleep, spawn, Error, Promise};

/// The seed's port (`python server.py 53210`).
const DEFAULT_PORT: u16 = 53210;
/// The longest request line the server accepts, in bytes (the seed's `recv(1024)`).
const MAX_REQUEST: usize = 1024;
/// The longest reply line the client accepts, in bytes.
const MAX_REPLY: usize = 4096;
/// How many flows the client runs at once.
const FLOWS: u64 = 10;
/// The longest random sleep before a flow starts, in milliseconds.
const MAX_START_DELAY_MS: u64 = 1000;
/// When the side flow starts.
const SIDE_FLOW_DELAY: Duration = Duration::from_secs(5);
/// The random seed of `--demo`, so that its transcript is the same every run.
const DEMO_SEED: u64 = 53210;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args[..] {
        [] => thenable::block_on(in_process(clock_seed(), false)),
        ["--demo"] => thenable::block_on(in_process(DEMO_SEED, true)),
        ["server"] => server_mode(DEFAULT_PORT),
        ["server", port] => parse_port(port).and_then(server_mode),
        ["client"] => client_mode(DEFAULT_PORT),
        ["client", port] => parse_port(port).and_then(client_mode),
        _ => {
            eprintln!("usage: balance [--demo | server [PORT] | client [PORT]]");
            std::process::exit(2);
        }
    };
    if let Err(e) = outcome {
        eprintln!("balance: {e}");
        std::process::exit(1);
    }
}

fn parse_port(port: &str) -> Result<u16, Error> {
    port.parse()
        .map_err(|_| Error::msg(format!("not a port number: {port:?}")))
}

/// The seed's `server.py`: serves until interrupted.
fn server_mode(port: u16) -> Result<(), Error> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("Listening on {}", listener.local_addr()?);
    thenable::block_on(serve(listener, Rng::new(clock_seed())))
}

/// The seed's `event_loop_gen.py <port>`: the flows against a running server.
fn client_mode(port: u16) -> Result<(), Error> {
    seed_client_random(clock_seed());
    thenable::block_on(run_client(SocketAddr::from(([127, 0, 0, 1], port))))
}

/// Server and client on one loop; with `rude`, also a client that sends bad
/// requests while the flows run. Stops the server when the client is done.
async fn in_process(seed: u64, rude: bool) -> Result<(), Error> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    println!("Listening on {addr} (random seed {seed})");
    let server = serve(listener, Rng::new(seed));
    seed_client_random(seed.rotate_left(32));

    let rude = if rude {
        Some(spawn(rude_client(addr)))
    } else {
        None
    };
    run_client(addr).await?;
    if let Some(rude) = rude {
        rude.await?;
    }
    server.cancel(); // stop accepting: closes the listening socket
    println!("\nAll flows done; server stopped.");
    Ok(())
}

// ---------------------------------------------------------------------------
// The client: the seed's `Client`, `get_user_balance`, `print_balance`, `main1`
// ---------------------------------------------------------------------------

/// The seed's `main1`: the side flow on a timer, then ten flows at once.
async fn run_client(addr: SocketAddr) -> Result<(), Error> {
    // The seed's `sleep(5000).then(on_sleep)`: started now, awaited only at the end.
    let side_flow = sleep(SIDE_FLOW_DELAY).then(move |()| spawn(side_flow(addr)));
    let flows: Vec<Promise<()>> = (0..FLOWS)
        .map(|user_id| spawn(print_balance(addr, user_id)))
        .collect();
    all(flows).await?;
    side_flow.await
}

/// The seed's `on_sleep`.
async fn side_flow(addr: SocketAddr) -> Result<(), Error> {
    match get_user_balance(addr, 1).await {
        Ok(balance) => println!("[side flow] {balance}"),
        Err(e) => println!("[side flow] caught: {e}"),
    }
    Ok(())
}

/// The seed's `print_balance`: one flow, its failure caught here and nowhere else.
async fn print_balance(addr: SocketAddr, user_id: u64) -> Result<(), Error> {
    match get_user_balance(addr, user_id).await {
        Ok(balance) => println!("[flow {user_id}] {balance}"),
        Err(e) => println!("[flow {user_id}] caught: {e}"),
    }
    Ok(())
}

/// The seed's `get_user_balance`.
async fn get_user_balance(addr: SocketAddr, user_id: u64) -> Result<String, Error> {
    sleep(Duration::from_millis(client_randint(0, MAX_START_DELAY_MS))).await?;

    let client = Client { addr };
    let user = client.get_user(user_id).await?;
    if user_id % 5 == 0 {
        return Err(Error::msg("It is OK to throw here"));
    }
    let account = client.get_balance(&user.account_id).await?;
    Ok(format!("User {} has {} USD", user.name, account.balance))
}

/// What the client keeps of a user.
struct User {
    name: String,
    account_id: String,
}

/// What the client keeps of an account.
struct Account {
    balance: i64,
}

/// The seed's `Client`: one connection per request.
struct Client {
    addr: SocketAddr,
}

impl Client {
    async fn get_user(&self, user_id: u64) -> Result<User, Error> {
        let reply = self.get(format!("GET user {user_id}\n")).await?;
        Ok(User {
            name: reply.text("name")?.to_string(),
            account_id: reply.text("account_id")?.to_string(),
        })
    }

    async fn get_balance(&self, account_id: &str) -> Result<Account, Error> {
        let reply = self.get(format!("GET account {account_id}\n")).await?;
        Ok(Account {
            balance: reply.integer("balance")?,
        })
    }

    /// Connects, sends `request`, reads the one-line reply. The seed closes the
    /// socket in a `finally`; here `conn` is closed when it goes out of scope,
    /// whichever way this returns.
    async fn get(&self, request: String) -> Result<JsonObject, Error> {
        let conn = TcpStream::connect(self.addr).await?;
        conn.write_all(request).await?;
        let reply = conn
            .read_line(MAX_REPLY)
            .await?
            .ok_or_else(|| Error::msg("the server hung up without answering"))?;
        let reply = JsonObject::parse(&reply)?;
        match reply.get("error") {
            Some(JsonValue::Text(message)) => Err(Error::msg(format!("server error: {message}"))),
            _ => Ok(reply),
        }
    }
}

// ---------------------------------------------------------------------------
// The demo's rude client: bad requests on one connection, then a cut-off one
// ---------------------------------------------------------------------------

async fn rude_client(addr: SocketAddr) -> Result<(), Error> {
    let mut too_long = vec![b'A'; 2 * MAX_REQUEST];
    too_long.push(b'\n');
    let requests: Vec<Vec<u8>> = vec![
        b"HELLO\n".to_vec(),
        b"GET user abc\n".to_vec(),
        b"GET account 999\n".to_vec(),
        too_long,
        // The first bytes of a TLS handshake: someone speaking another protocol.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n".to_vec(),
        // Still the same connection, still served.
        b"GET user 42\n".to_vec(),
    ];
    let conn = TcpStream::connect(addr).await?;
    for request in requests {
        println!("[rude] > {}", describe(&request));
        conn.write_all(request).await?;
        match conn.read_line(MAX_REPLY).await? {
            Some(reply) => println!("[rude] < {reply}"),
            None => return Err(Error::msg("the server hung up on the rude client")),
        }
    }
    drop(conn);

    let conn = TcpStream::connect(addr).await?;
    println!("[rude] > \"GET acc\" (then hangs up in the middle of the request)");
    conn.write_all("GET acc").await?;
    Ok(()) // `conn` closes here
}

/// A request as the transcript shows it: quoted and escaped, without its newline,
/// long ones abbreviated.
fn describe(bytes: &[u8]) -> String {
    let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if line.len() <= 40 {
        format!("\"{}\"", line.escape_ascii())
    } else {
        format!(
            "\"{}\"... ({} bytes)",
            line[..20].escape_ascii(),
            bytes.len()
        )
    }
}

// ---------------------------------------------------------------------------
// The server: the seed's `server.py`, a task per connection, many requests each
// ---------------------------------------------------------------------------

/// What the server knows. Shared by the connection tasks; `Arc<Mutex>` because
/// tasks must be `Send`, though they all run on the one loop thread.
struct Bank {
    users: HashMap<u64, StoredUser>,
    /// Balances, by account id.
    accounts: HashMap<u64, u64>,
    random: Rng,
}

struct StoredUser {
    name: String,
    account_id: u64,
}

/// Accepts connections until cancelled; each is served by its own task, whose
/// failure ends that connection only.
fn serve(listener: TcpListener, random: Rng) -> Promise<()> {
    let bank = Arc::new(Mutex::new(Bank {
        users: HashMap::new(),
        accounts: HashMap::new(),
        random,
    }));
    spawn(async move {
        loop {
            let (conn, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: the connections already open go on.
                    println!("[server] accept failed: {e}");
                    sleep(Duration::from_millis(100)).await?;
                    continue;
                }
            };
            let bank = bank.clone();
            // Detached: dropping the promise leaves the task running.
            drop(spawn(serve_connection(conn, peer, bank)).catch(move |e| {
                println!("[server] {peer}: connection ended: {}", explain(&e));
                Ok(())
            }));
        }
    })
}

/// Answers each request line of one connection until the client hangs up.
async fn serve_connection(
    mut conn: TcpStream,
    peer: SocketAddr,
    bank: Arc<Mutex<Bank>>,
) -> Result<(), Error> {
    let mut answered = 0;
    loop {
        let reply = match read_request(&mut conn).await? {
            Request::Line(line) => {
                println!("[server] {peer} < {line:?}");
                answer(
                    &mut bank.lock().unwrap_or_else(PoisonError::into_inner),
                    &line,
                )
            }
            Request::TooLong => {
                println!("[server] {peer} < (a line longer than {MAX_REQUEST} bytes)");
                error_reply(&format!("request longer than {MAX_REQUEST} bytes"))
            }
            Request::NotText => {
                println!("[server] {peer} < (bytes that are not UTF-8 text)");
                error_reply("request is not UTF-8 text")
            }
            Request::End if answered == 0 => {
                println!("[server] {peer} unexpectedly disconnected");
                return Ok(());
            }
            Request::End => return Ok(()),
        };
        println!("[server] {peer} > {reply}");
        conn.write_all(format!("{reply}\n")).await?;
        answered += 1;
    }
}

/// One line from a client, as far as framing goes.
enum Request {
    Line(String),
    /// Longer than [`MAX_REQUEST`]: skipped up to its end, never held in memory.
    TooLong,
    NotText,
    /// The client closed the connection between requests.
    End,
}

/// Reads the next line through the stream's `AsyncBufRead` side, which lends the
/// buffered bytes and consumes exactly up to the newline: a line over the limit is
/// discarded piece by piece and the next request is read from where it starts.
/// (`TcpStream::read_line` rejects such a line without consuming it, which suits a
/// server that hangs up; this one reads on.) A client gone in the middle of a line
/// is an `UnexpectedEof` error.
async fn read_request(conn: &mut TcpStream) -> io::Result<Request> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buffered = conn.fill_buf().await?;
        if buffered.is_empty() {
            if line.is_empty() && !too_long {
                return Ok(Request::End);
            }
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "client disconnected in the middle of a request",
            ));
        }
        let newline = buffered.iter().position(|&b| b == b'\n');
        let piece = &buffered[..newline.unwrap_or(buffered.len())];
        // One byte of slack for the '\r' of a "\r\n".
        if !too_long && line.len() + piece.len() <= MAX_REQUEST + 1 {
            line.extend_from_slice(piece);
        } else {
            too_long = true;
            line = Vec::new();
        }
        let used = newline.map_or(buffered.len(), |at| at + 1);
        conn.consume_unpin(used);
        if newline.is_some() {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if too_long || line.len() > MAX_REQUEST {
        return Ok(Request::TooLong);
    }
    Ok(String::from_utf8(line).map_or(Request::NotText, Request::Line))
}

/// The seed's `Handler.handle`, for one well-framed line.
fn answer(bank: &mut Bank, line: &str) -> String {
    let parts: Vec<&str> = line.split(' ').collect();
    let (kind, id) = match parts[..] {
        ["GET", kind @ ("user" | "account"), id] if is_number(id) => match id.parse::<u64>() {
            Ok(id) => (kind, id),
            Err(_) => return error_reply("id out of range"),
        },
        _ => return error_reply("bad request: expected GET user <id> or GET account <id>"),
    };
    if kind == "user" {
        let Bank {
            users,
            accounts,
            random,
        } = bank;
        let user = users.entry(id).or_insert_with(|| {
            // The seed: a name from a fresh UUID, a new account with 0 to 100 USD.
            let account_id = accounts.len() as u64 + 1;
            accounts.insert(account_id, random.randint(0, 100));
            StoredUser {
                name: format!("{:08x}", random.next() as u32),
                account_id,
            }
        });
        return format!(
            "{{\"id\": \"{id}\", \"name\": {}, \"account_id\": \"{}\"}}",
            json_string(&user.name),
            user.account_id
        );
    }
    match bank.accounts.get(&id) {
        Some(balance) => format!("{{\"id\": \"{id}\", \"balance\": {balance}}}"),
        None => error_reply(&format!("no account {id}")),
    }
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn error_reply(message: &str) -> String {
    format!("{{\"error\": {}}}", json_string(message))
}

/// What ended a connection, with the I/O error kind when there is one.
fn explain(error: &Error) -> String {
    match error.downcast_ref::<io::Error>() {
        Some(io_error) => format!("{io_error} ({:?})", io_error.kind()),
        None => error.to_string(),
    }
}

// ---------------------------------------------------------------------------
// JSON, the little the protocol needs: flat objects of strings and integers
// ---------------------------------------------------------------------------

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c if u32::from(c) < 0x20 => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

enum JsonValue {
    Text(String),
    Integer(i64),
}

/// A flat JSON object; anything nested, or a value other than a string or an
/// integer, is refused as malformed.
struct JsonObject(Vec<(String, JsonValue)>);

impl JsonObject {
    fn parse(text: &str) -> Result<JsonObject, Error> {
        let malformed = |why: &str| Error::msg(format!("malformed reply ({why}): {text:?}"));
        let mut parser = JsonParser {
            rest: text.chars().peekable(),
        };
        let mut fields = Vec::new();
        parser.skip_spaces();
        parser.expect('{').map_err(|()| malformed("expected '{'"))?;
        parser.skip_spaces();
        if parser.rest.peek() == Some(&'}') {
            parser.rest.next();
        } else {
            loop {
                parser.skip_spaces();
                let key = parser.string().map_err(|()| malformed("bad key"))?;
                parser.skip_spaces();
                parser.expect(':').map_err(|()| malformed("expected ':'"))?;
                parser.skip_spaces();
                let value = match parser.rest.peek() {
                    Some('"') => {
                        JsonValue::Text(parser.string().map_err(|()| malformed("bad string"))?)
                    }
                    Some(c) if *c == '-' || c.is_ascii_digit() => {
                        JsonValue::Integer(parser.integer().map_err(|()| malformed("bad integer"))?)
                    }
                    _ => return Err(malformed("expected a string or an integer")),
                };
                fields.push((key, value));
                parser.skip_spaces();
                match parser.rest.next() {
                    Some(',') => continue,
                    Some('}') => break,
                    _ => return Err(malformed("expected ',' or '}'")),
                }
            }
        }
        parser.skip_spaces();
        if parser.rest.next().is_some() {
            return Err(malformed("trailing characters"));
        }
        Ok(JsonObject(fields))
    }

    fn get(&self, key: &str) -> Option<&JsonValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn text(&self, key: &str) -> Result<&str, Error> {
        match self.get(key) {
            Some(JsonValue::Text(text)) => Ok(text),
            _ => Err(Error::msg(format!("reply has no text field {key:?}"))),
        }
    }

    fn integer(&self, key: &str) -> Result<i64, Error> {
        match self.get(key) {
            Some(JsonValue::Integer(n)) => Ok(*n),
            _ => Err(Error::msg(format!("reply has no integer field {key:?}"))),
        }
    }
}

struct JsonParser<'a> {
    rest: std::iter::Peekable<std::str::Chars<'a>>,
}

impl JsonParser<'_> {
    fn skip_spaces(&mut self) {
        while self
            .rest
            .next_if(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
            .is_some()
        {}
    }

    fn expect(&mut self, wanted: char) -> Result<(), ()> {
        self.rest.next_if_eq(&wanted).map(drop).ok_or(())
    }

    fn string(&mut self) -> Result<String, ()> {
        self.expect('"')?;
        let mut text = String::new();
        loop {
            match self.rest.next().ok_or(())? {
                '"' => return Ok(text),
                '\\' => text.push(match self.rest.next().ok_or(())? {
                    '"' => '"',
                    '\\' => '\\',
                    '/' => '/',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'u' => {
                        let hex: String = (0..4).filter_map(|_| self.rest.next()).collect();
                        let code = u32::from_str_radix(&hex, 16).map_err(drop)?;
                        // Surrogate pairs are refused: the server never sends them.
                        char::from_u32(code).ok_or(())?
                    }
                    _ => return Err(()),
                }),
                c if u32::from(c) < 0x20 => return Err(()),
                c => text.push(c),
            }
        }
    }

    fn integer(&mut self) -> Result<i64, ()> {
        let mut digits = String::new();
        if let Some(minus) = self.rest.next_if_eq(&'-') {
            digits.push(minus);
        }
        while let Some(digit) = self.rest.next_if(char::is_ascii_digit) {
            digits.push(digit);
        }
        digits.parse().map_err(drop)
    }
}

// ---------------------------------------------------------------------------
// Randomness: a small deterministic generator instead of Python's `random`
// ---------------------------------------------------------------------------

/// SplitMix64: tiny, and plenty for sleeps, names and balances.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`, like Python's `random.randint` (the modulo bias is
    /// negligible for ranges this small).
    fn randint(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// The client's generator, the seed's module-level `random`. Flows draw from it in
/// the order they start, which the loop makes deterministic.
static CLIENT_RANDOM: Mutex<Rng> = Mutex::new(Rng(0));

fn seed_client_random(seed: u64) {
    *CLIENT_RANDOM.lock().unwrap_or_else(PoisonError::into_inner) = Rng::new(seed);
}

fn client_randint(low: u64, high: u64) -> u64 {
    CLIENT_RANDOM
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .randint(low, high)
}

/// A seed that differs from run to run, for the modes that behave as the seed does.
fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}
