//! Parser for `show stat` (CSV). Columns are found by the header's names, so
//! the parser follows HAProxy versions that add columns.

use super::csv::split_line;

/// What a `show stat` row describes (its `type` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    Frontend,
    Backend,
    Server,
    Listener,
}

/// The fields of one `show stat` row that the module uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    pub proxy: String,
    pub name: String,
    pub kind: StatKind,
    pub status: String,
    pub weight: Option<u32>,
    pub current_sessions: Option<u64>,
    pub check_status: Option<String>,
    pub addr: Option<String>,
    pub proxy_id: Option<u32>,
    pub server_id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatParseError {
    #[error("show stat output has no '# pxname,…' header line")]
    MissingHeader,
    #[error("show stat header lacks the column {0:?}")]
    MissingColumn(&'static str),
    #[error("show stat line {line}: {reason}")]
    BadLine { line: usize, reason: String },
}

struct Columns {
    pxname: usize,
    svname: usize,
    status: usize,
    weight: usize,
    scur: usize,
    check_status: usize,
    addr: Option<usize>,
    kind: usize,
    iid: usize,
    sid: usize,
}

impl Columns {
    fn from_header(header: &str) -> Result<Self, StatParseError> {
        let names: Vec<String> = split_line(header.trim_start_matches('#').trim());
        let find = |wanted: &'static str| {
            names
                .iter()
                .position(|n| n == wanted)
                .ok_or(StatParseError::MissingColumn(wanted))
        };
        Ok(Columns {
            pxname: find("pxname")?,
            svname: find("svname")?,
            status: find("status")?,
            weight: find("weight")?,
            scur: find("scur")?,
            check_status: find("check_status")?,
            addr: find("addr").ok(),
            kind: find("type")?,
            iid: find("iid")?,
            sid: find("sid")?,
        })
    }
}

/// Parses the whole reply of `show stat`.
///
/// # Errors
/// [`StatParseError`] when the header is missing or a row is malformed.
pub fn parse(text: &str) -> Result<Vec<StatRow>, StatParseError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let header = match lines.next() {
        Some((_, l)) if l.starts_with('#') => l,
        _ => return Err(StatParseError::MissingHeader),
    };
    let cols = Columns::from_header(header)?;
    let mut rows = Vec::new();
    for (index, line) in lines {
        let f = split_line(line);
        let get = |i: usize| f.get(i).map(String::as_str).unwrap_or("");
        let bad = |reason: String| StatParseError::BadLine {
            line: index + 1,
            reason,
        };
        let kind = match get(cols.kind) {
            "0" => StatKind::Frontend,
            "1" => StatKind::Backend,
            "2" => StatKind::Server,
            "3" => StatKind::Listener,
            other => return Err(bad(format!("unknown type {other:?}"))),
        };
        let (proxy, name) = (get(cols.pxname), get(cols.svname));
        if proxy.is_empty() || name.is_empty() {
            return Err(bad(format!(
                "a row without a proxy or server name ({proxy:?}, {name:?})"
            )));
        }
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        rows.push(StatRow {
            proxy: proxy.to_owned(),
            name: name.to_owned(),
            kind,
            status: get(cols.status).to_owned(),
            weight: get(cols.weight).parse().ok(),
            current_sessions: get(cols.scur).parse().ok(),
            check_status: non_empty(get(cols.check_status)),
            addr: cols.addr.and_then(|i| non_empty(get(i))),
            proxy_id: get(cols.iid).parse().ok(),
            server_id: get(cols.sid).parse().ok(),
        });
    }
    Ok(rows)
}

/// Splits `127.0.0.1:80` or `[::1]:80` into address and port.
pub fn split_addr(addr: &str) -> Option<(String, u16)> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host.to_owned(), port.parse().ok()?));
    }
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/haproxy-2.6/show_stat.csv");

    fn row<'a>(rows: &'a [StatRow], proxy: &str, name: &str) -> &'a StatRow {
        rows.iter()
            .find(|r| r.proxy == proxy && r.name == name)
            .unwrap_or_else(|| panic!("{proxy}/{name} missing"))
    }

    #[test]
    fn parses_the_captured_output() {
        let rows = parse(FIXTURE).expect("fixture parses");
        assert_eq!(rows.len(), 14);
        let web1 = row(&rows, "web", "web1_shop_1");
        assert_eq!(web1.kind, StatKind::Server);
        assert_eq!(web1.status, "DRAIN");
        assert_eq!(web1.check_status.as_deref(), Some("L7OK"));
        assert_eq!(web1.addr.as_deref(), Some("127.0.0.1:19101"));
        assert_eq!((web1.proxy_id, web1.server_id), (Some(3), Some(1)));
        assert_eq!(row(&rows, "web", "web3_shop_1").weight, Some(0));
        assert_eq!(row(&rows, "web", "web5_shop_1").status, "no check");
        assert_eq!(row(&rows, "web", "web5_shop_1").check_status, None);
        assert_eq!(
            row(&rows, "web", "web6_shop_1").addr.as_deref(),
            Some("[::1]:19101")
        );
        assert_eq!(
            row(&rows, "tracking", "t2_shop_2").status,
            "MAINT (via web/web2_shop_1)"
        );
        assert_eq!(row(&rows, "nolb", "n1_api_1").status, "NOLB");
        assert_eq!(row(&rows, "empty", "BACKEND").kind, StatKind::Backend);
        assert_eq!(row(&rows, "fe", "FRONTEND").kind, StatKind::Frontend);
    }

    #[test]
    fn refuses_output_without_header() {
        assert_eq!(
            parse("Unknown command\n"),
            Err(StatParseError::MissingHeader)
        );
        assert_eq!(parse(""), Err(StatParseError::MissingHeader));
        assert_eq!(
            parse("# pxname,svname\nweb,x\n"),
            Err(StatParseError::MissingColumn("status"))
        );
    }

    #[test]
    fn reports_a_bad_type_with_its_line() {
        let header = FIXTURE.lines().next().unwrap_or_default();
        let text = format!("{header}\nweb,x,,,,,,,,,,,,,,,,UP,1,,,,,,,,,,,,,,9\n");
        assert!(matches!(
            parse(&text),
            Err(StatParseError::BadLine { line: 2, .. })
        ));
    }

    /// Found by `fuzz/fuzz_targets/show_stat.rs` (minimized): a row whose
    /// `pxname` (or `svname`) is empty parsed as a server of no backend.
    #[test]
    fn refuses_a_row_without_a_proxy_or_server_name() {
        let crash = "# pxname,svname,qcur,qmax,scur,,status,weight,chkfailmit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,,0,0,0,-,,0,,\n\n\n,0,0,,,,,0,0,,0,0,,0,0,0,0,0,000,0\n\n";
        assert!(matches!(
            parse(crash),
            Err(StatParseError::BadLine { line: 4, .. })
        ));
        // A real server row of the fixture with its pxname or svname blanked.
        let header = FIXTURE.lines().next().unwrap_or_default();
        let web1 = FIXTURE
            .lines()
            .find_map(|l| l.strip_prefix("web,web1_shop_1,"))
            .unwrap_or_default();
        assert!(parse(&format!("{header}\nweb,web1_shop_1,{web1}\n")).is_ok());
        for names in [",web1_shop_1", "web,"] {
            let text = format!("{header}\n{names},{web1}\n");
            assert!(
                matches!(parse(&text), Err(StatParseError::BadLine { line: 2, ref reason }) if reason.contains("without a proxy or server name")),
                "{names}: {:?}",
                parse(&text)
            );
        }
    }

    #[test]
    fn splits_v4_and_v6_addresses() {
        assert_eq!(split_addr("127.0.0.1:80"), Some(("127.0.0.1".into(), 80)));
        assert_eq!(split_addr("[::1]:19101"), Some(("::1".into(), 19101)));
        assert_eq!(split_addr("nonsense"), None);
        assert_eq!(split_addr("[::1]"), None);
    }
}
