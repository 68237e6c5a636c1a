//! A client of the Serf agent's RPC (SPEC §13, §19, §20): msgpack over TCP, as
//! Serf's own `client` package and the `serf` command speak it — so no `serf`
//! binary is needed to ask the fleet.
//!
//! One job: the wire. Every request is a header map `{Command, Seq}` and, for most
//! commands, a body map; every answer a header `{Seq, Error}` and, for some, a
//! body. `connect` performs the `handshake` (IPC version 1) and, with a key, the
//! `auth`; then `members_filtered`, `user_event` and `query`. A query answers once
//! (its header), then streams records `{Type, From, Payload}` of type `ack`,
//! `response` and finally `done` at the query's deadline; `Query` hands them out as
//! they arrive and can be stopped early (`Query::stop`): Serf's `stop` command ends
//! event streams and monitors only, never a query, so the client forgets the
//! query's sequence number and skips its later records on this connection.
//!
//! The agent is not trusted to behave (SPEC §17): every call is bounded by a
//! deadline (a trickling agent cannot stretch it, as each read waits only for what
//! is left of it), every message by `MAX_MESSAGE` bytes and a query's whole stream
//! by `MAX_STREAM` bytes, so garbage or endless data ends in a clear error, never a
//! hang or unbounded memory. The codec is `rmp-serde`'s.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The IPC version this client speaks (Serf's `maxIPCVersion`).
const IPC_VERSION: i32 = 1;

/// The largest message (header or body) read from the agent: a member list of
/// thousands of members fits many times over.
pub const MAX_MESSAGE: u64 = 16 << 20;

/// The most a query's stream of records may carry in all.
pub const MAX_STREAM: u64 = 64 << 20;

/// How long a query's stream may run past its own timeout before the agent is
/// taken for stuck (its `done` is sent at the query's deadline).
const STREAM_GRACE: Duration = Duration::from_secs(5);

/// The longest a query without a timeout of its own (Serf's default: about 3 to
/// 13 s, growing with the cluster) may stream.
const DEFAULT_QUERY_LIMIT: Duration = Duration::from_secs(120);

/// What each record counts against `MAX_STREAM` besides its node name and payload.
const RECORD_COST: u64 = 64;

/// Serf's error answer when a key is required.
const AUTH_REQUIRED: &str = "Authentication required";

/// A connection to one Serf agent's RPC, after the handshake (and auth).
pub struct Client {
    addr: String,
    stream: BufReader<Bounded>,
    /// How long each call (and the connect) may take.
    timeout: Duration,
    seq: u64,
    /// Queries stopped early: their records still arrive, and are skipped.
    stale: Vec<u64>,
    /// A read failed midway: where the next message starts is unknown.
    broken: bool,
}

/// One member as the agent lists it (`Member` of Serf's client; other fields,
/// such as its address, port and protocol versions, are not read).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    /// The node name.
    #[serde(rename = "Name")]
    pub name: String,
    /// `alive`, `leaving`, `left` or `failed`.
    #[serde(rename = "Status")]
    pub status: String,
    /// Its tags.
    #[serde(rename = "Tags", default, deserialize_with = "nil_default")]
    pub tags: BTreeMap<String, String>,
}

/// The agent's own member: what `stats` tells of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalMember {
    /// Its node name.
    pub name: String,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

/// The filters of `members_filtered` (Serf anchors each regexp at both ends; an
/// empty one matches all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberFilter {
    /// Tag name → regexp its value must match.
    pub tags: BTreeMap<String, String>,
    /// Regexp the status must match (`alive`, `failed`, ...).
    pub status: String,
    /// Regexp the node name must match.
    pub name: String,
}

/// What a query asks (Serf's `QueryParam`, without its channels).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams {
    /// Only these nodes (empty: all).
    pub nodes: Vec<String>,
    /// Only nodes whose tag matches the regexp.
    pub tags: BTreeMap<String, String>,
    /// How long the query collects answers; `None` = Serf's default.
    pub timeout: Option<Duration>,
}

/// One record of a query's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryEvent {
    /// `node` received the query.
    Ack(String),
    /// A node answered.
    Response {
        /// The node.
        from: String,
        /// Its answer (its handler's output).
        payload: Vec<u8>,
    },
}

/// What `Query::poll` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// An ack or a response.
    Event(QueryEvent),
    /// Nothing arrived before the instant given.
    Idle,
    /// The agent ended the query (its timeout passed).
    Done,
}

/// A query in progress: its records as they arrive. Iterating gives acks and
/// responses until `done` (or an error, after which the iteration ends).
/// Dropping it (or `stop`) before `done` stops reading it; the connection stays
/// usable.
pub struct Query<'c> {
    client: &'c mut Client,
    seq: u64,
    /// When the agent must have sent `done`.
    deadline: Instant,
    /// What the stream may still carry.
    budget: u64,
    finished: bool,
}

#[derive(Serialize)]
struct RequestHeader<'a> {
    #[serde(rename = "Command")]
    command: &'a str,
    #[serde(rename = "Seq")]
    seq: u64,
}

#[derive(Deserialize)]
struct ResponseHeader {
    #[serde(rename = "Seq")]
    seq: u64,
    #[serde(rename = "Error", default, deserialize_with = "nil_default")]
    error: String,
}

#[derive(Serialize)]
struct HandshakeRequest {
    #[serde(rename = "Version")]
    version: i32,
}

#[derive(Serialize)]
struct AuthRequest<'a> {
    #[serde(rename = "AuthKey")]
    auth_key: &'a str,
}

#[derive(Serialize)]
struct MembersFilteredRequest<'a> {
    #[serde(rename = "Tags")]
    tags: &'a BTreeMap<String, String>,
    #[serde(rename = "Status")]
    status: &'a str,
    #[serde(rename = "Name")]
    name: &'a str,
}

#[derive(Deserialize)]
struct MembersResponse {
    #[serde(rename = "Members", default, deserialize_with = "nil_default")]
    members: Vec<Member>,
}

#[derive(Serialize)]
struct EventRequest<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Payload", with = "serde_bytes")]
    payload: &'a [u8],
    #[serde(rename = "Coalesce")]
    coalesce: bool,
}

#[derive(Serialize)]
struct QueryRequest<'a> {
    #[serde(rename = "FilterNodes")]
    filter_nodes: &'a [String],
    #[serde(rename = "FilterTags")]
    filter_tags: &'a BTreeMap<String, String>,
    #[serde(rename = "RequestAck")]
    request_ack: bool,
    #[serde(rename = "RelayFactor")]
    relay_factor: u8,
    /// Go's `time.Duration`: nanoseconds; 0 = Serf's default.
    #[serde(rename = "Timeout")]
    timeout: i64,
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Payload", with = "serde_bytes")]
    payload: &'a [u8],
}

#[derive(Deserialize)]
struct QueryRecord {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "From", default, deserialize_with = "nil_default")]
    from: String,
    #[serde(rename = "Payload", default)]
    payload: Option<serde_bytes::ByteBuf>,
}

/// Go writes an empty map, slice or string as nil.
fn nil_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The socket, read within a deadline and a byte budget set before each message.
struct Bounded {
    tcp: TcpStream,
    deadline: Instant,
    budget: u64,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        if self.budget == 0 {
            return Err(std::io::Error::other(TooLong));
        }
        self.tcp.set_read_timeout(Some(left))?;
        let want = buf
            .len()
            .min(usize::try_from(self.budget).unwrap_or(usize::MAX));
        let n = match self.tcp.read(&mut buf[..want]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(std::io::ErrorKind::TimedOut.into())
            }
            r => r?,
        };
        self.budget -= n as u64;
        Ok(n)
    }
}

/// The marker of a message over its budget.
#[derive(Debug)]
struct TooLong;

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("more data than the message may hold")
    }
}

impl std::error::Error for TooLong {}

impl Client {
    /// Connects to the agent at `addr` (`HOST:PORT`), shakes hands and, with
    /// `auth` (`SERF_RPC_AUTH`), authenticates; each later call must end within
    /// `timeout` (a query: within its own timeout and `timeout`).
    pub fn connect(addr: &str, auth: Option<&str>, timeout: Duration) -> Result<Client> {
        let start = Instant::now();
        let err = |msg: String, e: std::io::Error| Error::SerfRpc {
            addr: addr.to_string(),
            msg,
            source: Some(e.into()),
        };
        let mut last = None;
        let addrs = addr
            .to_socket_addrs()
            .map_err(|e| err("cannot resolve the address".into(), e))?;
        let mut tcp = None;
        for a in addrs {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&a, left) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            err(
                "cannot connect (is a serf agent running there? --rpc-addr, SERF_RPC_ADDR)".into(),
                last.unwrap_or_else(|| std::io::ErrorKind::TimedOut.into()),
            )
        })?;
        let _ = tcp.set_nodelay(true);
        let mut client = Client {
            addr: addr.to_string(),
            stream: BufReader::new(Bounded {
                tcp,
                deadline: start + timeout,
                budget: MAX_MESSAGE,
            }),
            timeout,
            seq: 0,
            stale: Vec::new(),
            broken: false,
        };
        client.call(
            "handshake",
            Some(&HandshakeRequest {
                version: IPC_VERSION,
            }),
        )?;
        if let Some(key) = auth.filter(|k| !k.is_empty()) {
            client.call("auth", Some(&AuthRequest { auth_key: key }))?;
        }
        Ok(client)
    }

    /// The members the agent knows that match `filter` (`members-filtered`).
    pub fn members_filtered(&mut self, filter: &MemberFilter) -> Result<Vec<Member>> {
        let req = MembersFilteredRequest {
            tags: &filter.tags,
            status: &filter.status,
            name: &filter.name,
        };
        self.call("members-filtered", Some(&req))?;
        let body: MembersResponse = self.read_message("the member list", MAX_MESSAGE)?;
        Ok(body.members)
    }

    /// Fires the user event `name` with `payload` (`event`); with `coalesce`,
    /// Serf may merge it with events of the same name.
    pub fn user_event(&mut self, name: &str, payload: &[u8], coalesce: bool) -> Result<()> {
        self.call(
            "event",
            Some(&EventRequest {
                name,
                payload,
                coalesce,
            }),
        )
        .map(|_| ())
    }

    /// The agent's own node name and tags (`stats`, whose `agent` section names
    /// the node and whose `tags` section lists its tags).
    pub fn local_member(&mut self) -> Result<LocalMember> {
        self.call::<()>("stats", None)?;
        // Go writes an empty section as nil
        let mut stats: BTreeMap<String, Option<BTreeMap<String, String>>> =
            self.read_message("stats", MAX_MESSAGE)?;
        let name = stats
            .get_mut("agent")
            .and_then(|a| a.as_mut()?.remove("name"))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| self.rpc_error("stats: no agent name in the answer"))?;
        Ok(LocalMember {
            name,
            tags: stats.remove("tags").flatten().unwrap_or_default(),
        })
    }

    /// Starts the query `name` with `payload`, acks requested; its records are
    /// read from the `Query`.
    pub fn query(&mut self, name: &str, payload: &[u8], params: &QueryParams) -> Result<Query<'_>> {
        let nanos = params
            .timeout
            .map_or(0, |t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX));
        let req = QueryRequest {
            filter_nodes: &params.nodes,
            filter_tags: &params.tags,
            request_ack: true,
            relay_factor: 0,
            timeout: nanos,
            name,
            payload,
        };
        let start = Instant::now();
        let seq = self.call("query", Some(&req))?;
        let deadline = start + params.timeout.unwrap_or(DEFAULT_QUERY_LIMIT) + STREAM_GRACE;
        Ok(Query {
            client: self,
            seq,
            deadline,
            budget: MAX_STREAM,
            finished: false,
        })
    }

    fn rpc_error(&self, msg: impl Into<String>) -> Error {
        Error::SerfRpc {
            addr: self.addr.clone(),
            msg: msg.into(),
            source: None,
        }
    }

    /// Sends `command` with `body` and reads its answer's header (skipping the
    /// records of stopped queries): its sequence number. An answer's error is an
    /// `Err`; a body, if the command has one, is left to read.
    fn call<B: Serialize>(&mut self, command: &str, body: Option<&B>) -> Result<u64> {
        if self.broken {
            return Err(self.rpc_error(format!(
                "{command}: the connection is unusable after an earlier error"
            )));
        }
        self.seq += 1;
        let seq = self.seq;
        let deadline = Instant::now() + self.timeout;
        self.send(command, seq, body, deadline)?;
        loop {
            let header = self.read_header(command, deadline)?;
            if header.seq == seq {
                if header.error.is_empty() {
                    return Ok(seq);
                }
                let hint = if header.error == AUTH_REQUIRED {
                    " (set SERF_RPC_AUTH to the agent's rpc_auth key)"
                } else {
                    ""
                };
                return Err(self.rpc_error(format!(
                    "{command}: {}{hint}",
                    crate::log::shown_text(&header.error)
                )));
            }
            self.skip_stale(header.seq, command)?;
        }
    }

    /// The record of a stopped query: read and dropped (forgetting the query at
    /// its `done`). Any other sequence number is a protocol error.
    fn skip_stale(&mut self, seq: u64, what: &str) -> Result<()> {
        let Some(i) = self.stale.iter().position(|s| *s == seq) else {
            self.broken = true;
            return Err(self.rpc_error(format!(
                "{what}: an answer to request {seq}, which was not asked"
            )));
        };
        let rec: QueryRecord = self.read_message(what, MAX_MESSAGE)?;
        if rec.kind == "done" {
            self.stale.swap_remove(i);
        }
        Ok(())
    }

    fn send<B: Serialize>(
        &mut self,
        command: &str,
        seq: u64,
        body: Option<&B>,
        deadline: Instant,
    ) -> Result<()> {
        let encode = |e: rmp_serde::encode::Error| Error::SerfRpc {
            addr: self.addr.clone(),
            msg: format!("{command}: cannot encode the request"),
            source: Some(e.into()),
        };
        let mut msg = rmp_serde::to_vec_named(&RequestHeader { command, seq }).map_err(encode)?;
        if let Some(b) = body {
            msg.extend(rmp_serde::to_vec_named(b).map_err(encode)?);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let tcp = &mut self.stream.get_mut().tcp;
        let r = tcp
            .set_write_timeout(Some(left.max(Duration::from_millis(1))))
            .and_then(|()| tcp.write_all(&msg));
        r.map_err(|e| Error::SerfRpc {
            addr: self.addr.clone(),
            msg: format!("{command}: cannot send the request"),
            source: Some(e.into()),
        })
    }

    fn read_header(&mut self, what: &str, deadline: Instant) -> Result<ResponseHeader> {
        self.stream.get_mut().deadline = deadline;
        self.read_message(what, MAX_MESSAGE)
    }

    /// One msgpack message, within the deadline set and `limit` bytes.
    fn read_message<T: DeserializeOwned>(&mut self, what: &str, limit: u64) -> Result<T> {
        // what the buffer already holds was counted when it was read
        self.stream.get_mut().budget = limit;
        rmp_serde::from_read(&mut self.stream).map_err(|e| {
            use rmp_serde::decode::Error as D;
            self.broken = true;
            let io = match &e {
                D::InvalidMarkerRead(io) | D::InvalidDataRead(io) => Some(io.kind()),
                _ => None,
            };
            let msg = match io {
                Some(std::io::ErrorKind::TimedOut) => {
                    format!("{what}: no complete answer in time")
                }
                Some(std::io::ErrorKind::UnexpectedEof) => format!(
                    "{what}: the agent closed the connection (a --tag value that is not a \
                     valid regexp?)"
                ),
                Some(std::io::ErrorKind::Other) => {
                    format!("{what}: an answer larger than {limit} bytes")
                }
                _ => format!(
                    "{what}: an answer that is not Serf's RPC ({})",
                    crate::log::shown_text(e.to_string())
                ),
            };
            Error::SerfRpc {
                addr: self.addr.clone(),
                msg,
                source: Some(e.into()),
            }
        })
    }
}

impl Query<'_> {
    /// The next record, waiting at most until `until` (or the stream's deadline,
    /// whichever is first) for one to start: `Idle` when none did. A record that
    /// has started must be whole by the stream's deadline.
    pub fn poll(&mut self, until: Instant) -> Result<Poll> {
        if self.finished {
            return Ok(Poll::Done);
        }
        let r = self.read(until);
        if !matches!(r, Ok(Poll::Event(_)) | Ok(Poll::Idle)) {
            self.finished = true;
        }
        r
    }

    fn read(&mut self, until: Instant) -> Result<Poll> {
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return Err(self.client.rpc_error(
                    "query: the agent did not end the query by its deadline".to_string(),
                ));
            }
            if self.client.stream.buffer().is_empty() {
                let wait = until.min(self.deadline);
                let inner = self.client.stream.get_mut();
                inner.deadline = wait.max(now + Duration::from_millis(1));
                inner.budget = MAX_MESSAGE;
                match self.client.stream.fill_buf() {
                    Ok([]) => {
                        self.client.broken = true;
                        return Err(self
                            .client
                            .rpc_error("query: the agent closed the connection".to_string()));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        if wait < self.deadline {
                            return Ok(Poll::Idle);
                        }
                        continue;
                    }
                    Err(e) => {
                        self.client.broken = true;
                        return Err(Error::SerfRpc {
                            addr: self.client.addr.clone(),
                            msg: "query: cannot read the stream".into(),
                            source: Some(e.into()),
                        });
                    }
                }
            }
            let header = self.client.read_header("query", self.deadline)?;
            if header.seq != self.seq {
                self.client.skip_stale(header.seq, "query")?;
                continue;
            }
            if !header.error.is_empty() {
                return Err(self
                    .client
                    .rpc_error(format!("query: {}", crate::log::shown_text(&header.error))));
            }
            let rec: QueryRecord = self.client.read_message("query", MAX_MESSAGE)?;
            // what the caller may keep of it (and a little for each record, so that
            // endless empty records run out too)
            let size = RECORD_COST
                + rec.from.len() as u64
                + rec.payload.as_ref().map_or(0, |p| p.len() as u64);
            if size > self.budget {
                self.client.broken = true;
                return Err(self.client.rpc_error(format!(
                    "query: the agent streamed more than {MAX_STREAM} bytes"
                )));
            }
            self.budget -= size;
            return match rec.kind.as_str() {
                "ack" => Ok(Poll::Event(QueryEvent::Ack(rec.from))),
                "response" => Ok(Poll::Event(QueryEvent::Response {
                    from: rec.from,
                    payload: rec.payload.map(|p| p.into_vec()).unwrap_or_default(),
                })),
                "done" => Ok(Poll::Done),
                other => Err(self.client.rpc_error(format!(
                    "query: a record of unknown type {}",
                    crate::log::shown_text(other)
                ))),
            };
        }
    }

    /// Stops reading this query before its end: its later records are skipped
    /// by the next calls on the connection (Serf cannot end a query early).
    pub fn stop(mut self) {
        self.forget();
    }

    fn forget(&mut self) {
        if !self.finished {
            self.finished = true;
            self.client.stale.push(self.seq);
        }
    }
}

impl Drop for Query<'_> {
    fn drop(&mut self) {
        self.forget();
    }
}

impl Iterator for Query<'_> {
    type Item = Result<QueryEvent>;

    /// The next ack or response, waiting until the stream's deadline; `None`
    /// after `done` or an error.
    fn next(&mut self) -> Option<Result<QueryEvent>> {
        match self.poll(self.deadline) {
            Ok(Poll::Event(e)) => Some(Ok(e)),
            Ok(Poll::Done) => None,
            // the deadline is the stream's: reached, it is an error next time
            Ok(Poll::Idle) => Some(Err(self
                .client
                .rpc_error("query: the agent did not end the query by its deadline"))),
            Err(e) => Some(Err(e)),
        }
    }
}

/// A scripted agent for tests (here and in `fleet`): it speaks just enough of the
/// protocol, with `rmp-serde` too, to reach the point where it does what a test
/// needs (a real `serf agent` is driven by tests/integration/serf_e2e_fleet.rs).
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use serde::de::IgnoredAny;
    use std::net::TcpListener;

    /// A request's header.
    #[derive(Deserialize, Debug)]
    pub struct Req {
        #[serde(rename = "Command")]
        pub command: String,
        #[serde(rename = "Seq")]
        pub seq: u64,
    }

    /// An answer's header.
    #[derive(Serialize)]
    pub struct Header<'a> {
        #[serde(rename = "Seq")]
        pub seq: u64,
        #[serde(rename = "Error")]
        pub error: &'a str,
    }

    /// A query's record.
    #[derive(Serialize)]
    pub struct Rec<'a> {
        #[serde(rename = "Type")]
        pub kind: &'a str,
        #[serde(rename = "From")]
        pub from: &'a str,
        #[serde(rename = "Payload", with = "serde_bytes")]
        pub payload: &'a [u8],
    }

    /// The agent's side of one connection.
    pub struct Agent {
        pub tcp: TcpStream,
    }

    impl Agent {
        /// The next request's header and its body, decoded as `B`.
        pub fn request<B: DeserializeOwned>(&mut self) -> (Req, B) {
            let req: Req = rmp_serde::from_read(&mut self.tcp).unwrap();
            let body: B = rmp_serde::from_read(&mut self.tcp).unwrap();
            (req, body)
        }
        pub fn send<T: Serialize>(&mut self, v: &T) -> std::io::Result<()> {
            self.tcp.write_all(&rmp_serde::to_vec_named(v).unwrap())
        }
        pub fn answer(&mut self, seq: u64, error: &str) {
            self.send(&Header { seq, error }).unwrap();
        }
        /// One record of the query `seq`.
        pub fn record(&mut self, seq: u64, kind: &str, from: &str, payload: &[u8]) {
            self.answer(seq, "");
            self.send(&Rec {
                kind,
                from,
                payload,
            })
            .unwrap();
        }
        /// Answers the handshake.
        pub fn shake(&mut self) {
            let (req, _): (Req, IgnoredAny) = self.request();
            assert_eq!(req.command, "handshake");
            self.answer(req.seq, "");
        }
    }

    /// An agent on 127.0.0.1 that runs `script` on its first connection.
    pub fn agent(script: impl FnOnce(Agent) + Send + 'static) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            if let Ok((tcp, _)) = l.accept() {
                script(Agent { tcp });
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    //! Against agents that misbehave on purpose (`fake`).

    use super::fake::*;
    use super::*;
    use serde::de::IgnoredAny;
    use std::net::TcpListener;

    fn connect(addr: &str, timeout: Duration) -> Result<Client> {
        Client::connect(addr, None, timeout)
    }

    #[test]
    fn members_and_events_as_serf_writes_them() {
        #[derive(Deserialize)]
        struct Filtered {
            #[serde(rename = "Tags")]
            tags: BTreeMap<String, String>,
            #[serde(rename = "Status")]
            status: String,
            #[serde(rename = "Name")]
            name: String,
        }
        #[derive(Deserialize)]
        struct Event {
            #[serde(rename = "Name")]
            name: String,
            #[serde(rename = "Payload", with = "serde_bytes")]
            payload: Vec<u8>,
            #[serde(rename = "Coalesce")]
            coalesce: bool,
        }
        let addr = agent(|mut a| {
            let (req, hs): (Req, BTreeMap<String, i32>) = a.request();
            assert_eq!((req.command.as_str(), hs["Version"]), ("handshake", 1));
            a.answer(req.seq, "");
            let (req, auth): (Req, BTreeMap<String, String>) = a.request();
            assert_eq!(
                (req.command.as_str(), auth["AuthKey"].as_str()),
                ("auth", "k")
            );
            a.answer(req.seq, "");
            let (req, f): (Req, Filtered) = a.request();
            assert_eq!(req.command, "members-filtered");
            assert_eq!((f.tags["role"].as_str(), f.status.as_str()), ("web", ""));
            assert_eq!(f.name, "a|b");
            a.answer(req.seq, "");
            // Go's member: an address as bytes, nil tags, fields this client skips
            let members = serde_json::json!({"Members": [
                {"Name": "a", "Port": 7946, "Tags": {"role": "web"}, "Status": "alive",
                 "ProtocolMin": 1, "DelegateCur": 4},
                {"Name": "b", "Tags": null, "Status": "failed"},
            ]});
            a.send(&members).unwrap();
            let (req, e): (Req, Event) = a.request();
            assert_eq!(req.command, "event");
            assert_eq!(
                (e.name.as_str(), &e.payload[..], e.coalesce),
                ("deploy", &b"u"[..], false)
            );
            a.answer(req.seq, "");
            let (req, _): (Req, IgnoredAny) = a.request();
            a.answer(req.seq, "event name too long");
        });
        let mut c = Client::connect(&addr, Some("k"), Duration::from_secs(10)).unwrap();
        let filter = MemberFilter {
            tags: BTreeMap::from([("role".into(), "web".into())]),
            name: "a|b".into(),
            ..MemberFilter::default()
        };
        let m = c.members_filtered(&filter).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].name.as_str(), m[0].status.as_str()), ("a", "alive"));
        assert_eq!(m[0].tags["role"], "web");
        assert!(m[1].tags.is_empty());
        c.user_event("deploy", b"u", false).unwrap();
        let e = c.user_event("deploy", b"u", false).unwrap_err().to_string();
        assert!(
            e.contains("event name too long") && e.contains(&addr),
            "{e}"
        );
    }

    #[test]
    fn a_query_streams_and_can_be_stopped() {
        #[derive(Deserialize)]
        struct Q {
            #[serde(rename = "FilterNodes")]
            nodes: Vec<String>,
            #[serde(rename = "RequestAck")]
            ack: bool,
            #[serde(rename = "Timeout")]
            timeout: i64,
            #[serde(rename = "Name")]
            name: String,
        }
        let addr = agent(|mut a| {
            a.shake();
            let (req, q): (Req, Q) = a.request();
            assert_eq!(req.command, "query");
            assert_eq!(
                (q.nodes, q.ack, q.timeout),
                (vec!["a".to_string()], true, 2_500_000_000)
            );
            assert_eq!(q.name, "stretcher-status");
            let seq = req.seq;
            a.answer(seq, "");
            let rec = |a: &mut Agent, kind: &str, from: &str, payload: &[u8]| {
                a.answer(seq, "");
                a.send(&Rec {
                    kind,
                    from,
                    payload,
                })
                .unwrap();
            };
            rec(&mut a, "ack", "a", b"");
            rec(&mut a, "response", "a", b"{}\n");
            rec(&mut a, "ack", "b", b"");
            // stopped here: these arrive while the client asks for the members
            let (req, _): (Req, IgnoredAny) = a.request();
            rec(&mut a, "response", "b", b"late");
            rec(&mut a, "done", "", b"");
            a.answer(req.seq, "");
            a.send(&serde_json::json!({"Members": []})).unwrap();
        });
        let mut c = connect(&addr, Duration::from_secs(10)).unwrap();
        let params = QueryParams {
            nodes: vec!["a".into()],
            timeout: Some(Duration::from_millis(2500)),
            ..QueryParams::default()
        };
        let mut q = c.query("stretcher-status", b"", &params).unwrap();
        assert_eq!(q.next().unwrap().unwrap(), QueryEvent::Ack("a".into()));
        assert_eq!(
            q.next().unwrap().unwrap(),
            QueryEvent::Response {
                from: "a".into(),
                payload: b"{}\n".to_vec()
            }
        );
        assert_eq!(q.next().unwrap().unwrap(), QueryEvent::Ack("b".into()));
        q.stop();
        assert!(c
            .members_filtered(&MemberFilter::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn idle_while_waiting_done_at_the_end() {
        let addr = agent(|mut a| {
            a.shake();
            let (req, _): (Req, IgnoredAny) = a.request();
            a.answer(req.seq, "");
            std::thread::sleep(Duration::from_millis(300));
            a.answer(req.seq, "");
            a.send(&Rec {
                kind: "done",
                from: "",
                payload: b"",
            })
            .unwrap();
            std::thread::sleep(Duration::from_secs(2));
        });
        let mut c = connect(&addr, Duration::from_secs(10)).unwrap();
        let params = QueryParams {
            timeout: Some(Duration::from_secs(1)),
            ..QueryParams::default()
        };
        let mut q = c.query("q", b"", &params).unwrap();
        let start = Instant::now();
        assert_eq!(
            q.poll(Instant::now() + Duration::from_millis(50)).unwrap(),
            Poll::Idle
        );
        let mut polls = 0;
        let end = loop {
            polls += 1;
            match q.poll(Instant::now() + Duration::from_millis(50)).unwrap() {
                Poll::Idle => continue,
                other => break other,
            }
        };
        assert_eq!(end, Poll::Done);
        assert!(polls > 1 && start.elapsed() >= Duration::from_millis(250));
        assert!(q.next().is_none());
    }

    /// `hostile` answers the members request; the client's error must contain
    /// `want`, and come before `within`.
    fn refused(
        hostile: impl FnOnce(&mut Agent, u64) + Send + 'static,
        want: &str,
        within: Duration,
    ) {
        let addr = agent(move |mut a| {
            a.shake();
            let (req, _): (Req, IgnoredAny) = a.request();
            hostile(&mut a, req.seq);
        });
        let mut c = connect(&addr, Duration::from_secs(2)).unwrap();
        let start = Instant::now();
        let e = c
            .members_filtered(&MemberFilter::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
        assert!(start.elapsed() < within, "{:?}", start.elapsed());
        assert!(c
            .members_filtered(&MemberFilter::default())
            .unwrap_err()
            .to_string()
            .contains("unusable after an earlier error"));
    }

    #[test]
    fn a_hostile_agent_ends_in_a_clear_error() {
        let far = Duration::from_secs(20);
        // an error string that claims 4 GiB, then endless bytes: cut at MAX_MESSAGE
        refused(
            |a, seq| {
                let mut head = rmp_serde::to_vec_named(&Header { seq, error: "" }).unwrap();
                head.truncate(head.len() - 1);
                head.extend([0xdb, 0xff, 0xff, 0xff, 0xff]);
                let _ = a.tcp.write_all(&head);
                let junk = vec![b'x'; 1 << 16];
                while a.tcp.write_all(&junk).is_ok() {}
            },
            "an answer larger than",
            far,
        );
        // an array that claims 4 billion members
        refused(
            |a, seq| {
                a.answer(seq, "");
                let _ = a.tcp.write_all(&[0x81, 0xa7]);
                let _ = a.tcp.write_all(b"Members");
                let _ = a.tcp.write_all(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
                std::thread::sleep(Duration::from_secs(3));
            },
            "no complete answer in time",
            far,
        );
        // a header trickled a byte at a time, never ending: the call's deadline
        refused(
            |a, seq| {
                let error = "x".repeat(100);
                let head = rmp_serde::to_vec_named(&Header { seq, error: &error }).unwrap();
                for b in &head[..head.len() - 1] {
                    if a.tcp.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            },
            "no complete answer in time",
            Duration::from_secs(4),
        );
        // garbage
        refused(
            |a, _| {
                let _ = a.tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
                std::thread::sleep(Duration::from_secs(1));
            },
            "an answer that is not Serf's RPC",
            far,
        );
        // an answer to a request never made
        refused(|a, seq| a.answer(seq + 7, ""), "which was not asked", far);
        // the connection closed (serf does so on a bad regexp)
        refused(|_, _| {}, "the agent closed the connection", far);
    }

    #[test]
    fn an_endless_query_stream_is_cut() {
        let addr = agent(|mut a| {
            a.shake();
            let (req, _): (Req, IgnoredAny) = a.request();
            a.answer(req.seq, "");
            let payload = vec![b'x'; 1 << 20];
            for i in 0.. {
                let from = format!("n{i}");
                let head = rmp_serde::to_vec_named(&Header {
                    seq: req.seq,
                    error: "",
                })
                .unwrap();
                let rec = rmp_serde::to_vec_named(&Rec {
                    kind: "response",
                    from: &from,
                    payload: &payload,
                })
                .unwrap();
                if a.tcp.write_all(&head).is_err() || a.tcp.write_all(&rec).is_err() {
                    return;
                }
            }
        });
        let mut c = connect(&addr, Duration::from_secs(10)).unwrap();
        let q = c.query("q", b"", &QueryParams::default()).unwrap();
        let results: Vec<Result<QueryEvent>> = q.collect();
        let n = results.len();
        assert!((60..=65).contains(&n), "{n}");
        let e = results.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(e.contains("streamed more than"), "{e}");
    }

    #[test]
    fn auth_and_connect_errors_say_what_to_do() {
        let addr = agent(|mut a| {
            a.shake();
            let (req, _): (Req, IgnoredAny) = a.request();
            a.answer(req.seq, AUTH_REQUIRED);
        });
        let mut c = connect(&addr, Duration::from_secs(5)).unwrap();
        let e = c
            .members_filtered(&MemberFilter::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("SERF_RPC_AUTH"), "{e}");
        let addr = agent(|mut a| {
            let (req, _): (Req, IgnoredAny) = a.request();
            a.answer(req.seq, "Unsupported IPC version");
        });
        let e = connect(&addr, Duration::from_secs(5))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("handshake: Unsupported IPC version"), "{e}");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = connect(&format!("127.0.0.1:{port}"), Duration::from_secs(5))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot connect"), "{e}");
    }
}
