//! Monitoring and Alerting: what the proxy saw of each colour. HAProxy's
//! `show stat` counts, per server of a blue-green backend, the requests,
//! the 5xx answers and the average response time (of its last 1,024
//! requests): the figures `monitor` exports per colour and a canary's
//! verdict would compare.

use anyhow::Result;
use serde::Serialize;

use crate::config::Env;

/// One colour of one released service, as the proxy counts it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ColourStat {
    /// The backend (the service).
    pub service: String,
    /// The server (`blue`, `green`).
    pub colour: String,
    /// `UP`, `DRAIN`, `MAINT`, `DOWN`, `no check`...
    pub status: String,
    pub requests: u64,
    pub responses_5xx: u64,
    pub active: u64,
    /// Average response time of its last 1,024 requests, in ms.
    pub avg_response_ms: u64,
}

/// Parse `show stat`'s CSV (its first line names the columns): the servers
/// named `blue` or `green`.
pub fn parse(csv: &str) -> Vec<ColourStat> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.split(',').collect();
    let at = |name: &str| cols.iter().position(|c| *c == name);
    let (px, sv, status, req, e5, cur, rtime, stot) = (
        at("pxname"),
        at("svname"),
        at("status"),
        at("req_tot"),
        at("hrsp_5xx"),
        at("scur"),
        at("rtime"),
        at("stot"),
    );
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let get = |i: Option<usize>| i.and_then(|i| f.get(i).copied()).unwrap_or("");
            let num = |i: Option<usize>| get(i).parse::<u64>().unwrap_or(0);
            let colour = get(sv);
            if !crate::core::proxy::COLOURS.contains(&colour) {
                return None;
            }
            // Servers count requests in `req_tot` from 2.6 on; older: sessions.
            let requests = if get(req).is_empty() {
                num(stot)
            } else {
                num(req)
            };
            Some(ColourStat {
                service: get(px).to_string(),
                colour: colour.to_string(),
                status: get(status).to_string(),
                requests,
                responses_5xx: num(e5),
                active: num(cur),
                avg_response_ms: num(rtime),
            })
        })
        .collect()
}

/// The colours of `env`'s proxy; None where there is no HAProxy to ask.
pub fn colour_stats(env: &Env) -> Option<Result<Vec<ColourStat>>> {
    Some(crate::core::proxy::stat_csv(env)?.map(|csv| parse(&csv)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_of_a_blue_green_backend() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,hrsp_5xx,req_tot,rtime,\n\
                   front,FRONTEND,,,3,9,,120,OPEN,0,,0,\n\
                   mre-app,blue,0,0,0,2,,50,DRAIN,1,48,7,\n\
                   mre-app,green,0,0,2,4,,70,UP,3,69,12,\n\
                   mre-app,BACKEND,0,0,2,6,,120,UP,4,117,10,\n";
        let s = parse(csv);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            ColourStat {
                service: "mre-app".into(),
                colour: "green".into(),
                status: "UP".into(),
                requests: 69,
                responses_5xx: 3,
                active: 2,
                avg_response_ms: 12,
            }
        );
        assert_eq!(s[0].status, "DRAIN");
        assert!(parse("").is_empty());
    }
}
