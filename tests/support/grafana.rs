//! The dashboards and rules in the repository's `grafana/` directory, as the tests read them.

use std::path::{Path, PathBuf};

/// The dashboard files, each a Grafana JSON model.
pub const DASHBOARDS: [&str; 3] = ["pxd-cluster.json", "pxd-node-pool.json", "pxd-volume.json"];

/// The repository's `grafana/` directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana")
}

/// One PromQL expression of a dashboard: where it is, and the text with its template
/// variables (`$job`, `$volume`, ...) still in.
#[derive(Debug, Clone)]
pub struct Expr {
    pub place: String,
    pub text: String,
    /// A variable's `label_values(metric, label)` rather than a panel's query.
    pub variable: bool,
}

/// Every variable query and panel query of every dashboard, with a check that the first
/// variable of each is the datasource picker.
pub fn expressions() -> Vec<Expr> {
    let mut out = Vec::new();
    for file in DASHBOARDS {
        let text = std::fs::read_to_string(dir().join("dashboards").join(file)).expect(file);
        let d: serde_json::Value = serde_json::from_str(&text).expect(file);
        assert_eq!(d["templating"]["list"][0]["type"], "datasource", "{file}");
        for var in d["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .skip(1)
        {
            out.push(Expr {
                place: format!("{file} variable {}", var["name"]),
                text: var["definition"].as_str().expect("definition").to_owned(),
                variable: true,
            });
        }
        for p in d["panels"].as_array().expect("panels") {
            let title = p["title"].as_str().unwrap_or_default();
            for t in p["targets"].as_array().expect("targets") {
                out.push(Expr {
                    place: format!("{file} panel {title:?}"),
                    text: t["expr"].as_str().expect("expr").to_owned(),
                    variable: false,
                });
            }
        }
    }
    out
}
