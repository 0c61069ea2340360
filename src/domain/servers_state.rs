//! Parser for `show servers state`: a version line, a `# be_id be_name …`
//! header, then one space-separated row per server.

use std::collections::HashSet;

/// The fields of one `show servers state` row that the module uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStateRow {
    pub backend_id: u32,
    pub backend: String,
    pub server_id: u32,
    pub server: String,
    pub addr: String,
    pub port: Option<u16>,
    pub op_code: u32,
    pub admin_bits: u32,
    pub user_weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServersStateParseError {
    #[error("show servers state output has no '# be_id …' header line")]
    MissingHeader,
    #[error("show servers state header lacks the column {0:?}")]
    MissingColumn(&'static str),
    #[error("show servers state line {line}: {reason}")]
    BadLine { line: usize, reason: String },
}

/// Parses the whole reply of `show servers state [<backend>]`.
///
/// # Errors
/// [`ServersStateParseError`] when the header is missing or a row is malformed.
pub fn parse(text: &str) -> Result<Vec<ServerStateRow>, ServersStateParseError> {
    parse_rows(text, None)
}

/// The row of server `server` in the reply of `show servers state
/// <backend>`, without building the rows of the others (the agent reads one
/// server out of a whole backend after every change). Rows of other servers
/// are skipped unread.
///
/// # Errors
/// [`ServersStateParseError`] when the header is missing or that row is
/// malformed.
pub fn find(text: &str, server: &str) -> Result<Option<ServerStateRow>, ServersStateParseError> {
    Ok(find_all(text, &HashSet::from([server]))?.into_iter().next())
}

/// The rows of `servers` (one backend's, whose names are unique) in the
/// reply of `show servers state <backend>`, in the reply's order; rows of
/// other servers are skipped unread, and reading stops once every one asked
/// for was found.
///
/// # Errors
/// [`ServersStateParseError`] when the header is missing or one of those
/// rows is malformed.
pub fn find_all(
    text: &str,
    servers: &HashSet<&str>,
) -> Result<Vec<ServerStateRow>, ServersStateParseError> {
    parse_rows(text, Some(servers))
}

/// Where the used columns are, read once from the header.
struct Columns {
    backend_id: usize,
    backend: usize,
    server_id: usize,
    server: usize,
    addr: usize,
    port: Option<usize>,
    op_code: usize,
    admin_bits: usize,
    user_weight: usize,
}

impl Columns {
    fn of(header: &str) -> Result<Self, ServersStateParseError> {
        let names: Vec<&str> = header.split_whitespace().collect();
        let at = |wanted: &'static str| names.iter().position(|n| *n == wanted);
        let need =
            |wanted: &'static str| at(wanted).ok_or(ServersStateParseError::MissingColumn(wanted));
        Ok(Self {
            backend_id: need("be_id")?,
            backend: need("be_name")?,
            server_id: need("srv_id")?,
            server: need("srv_name")?,
            addr: need("srv_addr")?,
            port: at("srv_port"),
            op_code: need("srv_op_state")?,
            admin_bits: need("srv_admin_state")?,
            user_weight: need("srv_uweight")?,
        })
    }
}

fn parse_rows(
    text: &str,
    only: Option<&HashSet<&str>>,
) -> Result<Vec<ServerStateRow>, ServersStateParseError> {
    // The header's columns; a header lacking one is an error only once a
    // row needs it.
    let mut columns: Option<Result<Columns, ServersStateParseError>> = None;
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            columns = Some(Columns::of(h));
            continue;
        }
        let Some(cols) = columns.as_ref() else {
            // The version line comes before the header.
            if line.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            return Err(ServersStateParseError::MissingHeader);
        };
        let cols = cols.as_ref().map_err(Clone::clone)?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(servers) = only
            && !fields.get(cols.server).is_some_and(|s| servers.contains(s))
        {
            continue;
        }
        let bad = |reason: String| ServersStateParseError::BadLine {
            line: index + 1,
            reason,
        };
        let text_at = |i: usize, wanted: &str| -> Result<&str, ServersStateParseError> {
            fields
                .get(i)
                .copied()
                .ok_or_else(|| bad(format!("missing {wanted}")))
        };
        let num_at = |i: usize, wanted: &str| -> Result<u32, ServersStateParseError> {
            let raw = text_at(i, wanted)?;
            raw.parse()
                .map_err(|_| bad(format!("{wanted} is not a number: {raw:?}")))
        };
        rows.push(ServerStateRow {
            backend_id: num_at(cols.backend_id, "be_id")?,
            backend: text_at(cols.backend, "be_name")?.to_owned(),
            server_id: num_at(cols.server_id, "srv_id")?,
            server: text_at(cols.server, "srv_name")?.to_owned(),
            addr: text_at(cols.addr, "srv_addr")?.to_owned(),
            port: cols
                .port
                .and_then(|i| fields.get(i))
                .and_then(|p| p.parse().ok()),
            op_code: num_at(cols.op_code, "srv_op_state")?,
            admin_bits: num_at(cols.admin_bits, "srv_admin_state")?,
            user_weight: num_at(cols.user_weight, "srv_uweight")?,
        });
        if only.is_some_and(|servers| rows.len() == servers.len()) {
            break;
        }
    }
    if columns.is_none() {
        return Err(ServersStateParseError::MissingHeader);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/haproxy-2.6/show_servers_state.txt");

    #[test]
    fn parses_the_captured_output() {
        let rows = parse(FIXTURE).expect("fixture parses");
        assert_eq!(rows.len(), 9);
        let find = |b: &str, s: &str| {
            rows.iter()
                .find(|r| r.backend == b && r.server == s)
                .unwrap_or_else(|| panic!("{b}/{s}"))
        };
        assert_eq!(find("web", "web1_shop_1").admin_bits, 8);
        assert_eq!(find("web", "web2_shop_1").admin_bits, 1);
        assert_eq!(find("web", "web3_shop_1").user_weight, 0);
        let web6 = find("web", "web6_shop_1");
        assert_eq!(
            (web6.addr.as_str(), web6.port, web6.user_weight),
            ("::1", Some(19101), 50)
        );
        assert_eq!(find("tracking", "t1_shop_2").admin_bits, 16);
        assert_eq!(find("tracking", "t2_shop_2").admin_bits, 2);
        assert_eq!(find("nolb", "n1_api_1").op_code, 3);
        assert_eq!(
            (
                find("nolb", "n1_api_1").backend_id,
                find("nolb", "n1_api_1").server_id
            ),
            (5, 1)
        );
    }

    #[test]
    fn find_returns_the_one_row_asked_for_and_skips_the_others() {
        let all = parse(FIXTURE).expect("fixture parses");
        for row in &all {
            let found = find(FIXTURE, &row.server).expect("fixture parses");
            let first = all.iter().find(|r| r.server == row.server);
            assert_eq!(found.as_ref(), first, "server {}", row.server);
        }
        assert_eq!(find(FIXTURE, "no-such-server").expect("parses"), None);
        // A malformed row of another server does not matter to `find`.
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n\
                    3 b 1 bad 10.0.0.1 x 0 1\n3 b 2 good 10.0.0.2 2 1 1\n";
        assert!(parse(text).is_err());
        let good = find(text, "good").expect("parses").expect("found");
        assert_eq!((good.server_id, good.admin_bits, good.op_code), (2, 1, 2));
        assert!(find(text, "bad").is_err());
        assert_eq!(
            find("1\n3 b 1 s 10.0.0.1 2 0 1\n", "s"),
            Err(ServersStateParseError::MissingHeader)
        );
    }

    #[test]
    fn find_all_returns_the_rows_asked_for_in_reply_order() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n\
                    3 b 1 one 10.0.0.1 2 0 1\n3 b 2 bad 10.0.0.2 x 0 1\n3 b 3 three 10.0.0.3 2 8 1\n";
        let rows = find_all(text, &HashSet::from(["three", "one", "ghost"])).expect("parses");
        let names: Vec<&str> = rows.iter().map(|r| r.server.as_str()).collect();
        assert_eq!(names, ["one", "three"]);
        assert_eq!(rows.last().map(|r| r.admin_bits), Some(8));
        assert!(find_all(text, &HashSet::from(["one", "bad"])).is_err());
        assert_eq!(find_all(text, &HashSet::new()).expect("parses"), []);
    }

    #[test]
    fn refuses_errors_and_garbage() {
        assert_eq!(
            parse("Can't find backend.\n"),
            Err(ServersStateParseError::MissingHeader)
        );
        assert_eq!(parse(""), Err(ServersStateParseError::MissingHeader));
        let header = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n";
        assert!(matches!(
            parse(&format!("{header}3 web x s1 127.0.0.1 2 0 1\n")),
            Err(ServersStateParseError::BadLine { line: 3, .. })
        ));
        assert_eq!(parse(header).map(|r| r.len()), Ok(0));
    }
}
