//! Parser for `show servers state`: a version line, a `# be_id be_name …`
//! header, then one space-separated row per server.

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
    let mut header: Option<Vec<&str>> = None;
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            header = Some(h.split_whitespace().collect());
            continue;
        }
        let Some(names) = header.as_ref() else {
            // The version line comes before the header.
            if line.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            return Err(ServersStateParseError::MissingHeader);
        };
        let col = |wanted: &'static str| {
            names
                .iter()
                .position(|n| *n == wanted)
                .ok_or(ServersStateParseError::MissingColumn(wanted))
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = |reason: String| ServersStateParseError::BadLine {
            line: index + 1,
            reason,
        };
        let text_at = |wanted: &'static str| -> Result<&str, ServersStateParseError> {
            let i = col(wanted)?;
            fields
                .get(i)
                .copied()
                .ok_or_else(|| bad(format!("missing {wanted}")))
        };
        let num_at = |wanted: &'static str| -> Result<u32, ServersStateParseError> {
            let raw = text_at(wanted)?;
            raw.parse()
                .map_err(|_| bad(format!("{wanted} is not a number: {raw:?}")))
        };
        rows.push(ServerStateRow {
            backend_id: num_at("be_id")?,
            backend: text_at("be_name")?.to_owned(),
            server_id: num_at("srv_id")?,
            server: text_at("srv_name")?.to_owned(),
            addr: text_at("srv_addr")?.to_owned(),
            port: text_at("srv_port").ok().and_then(|p| p.parse().ok()),
            op_code: num_at("srv_op_state")?,
            admin_bits: num_at("srv_admin_state")?,
            user_weight: num_at("srv_uweight")?,
        });
    }
    if header.is_none() {
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
