//! Gauge families whose series come and go with the objects they describe (volumes, drives).
//! Each reconcile pass sets the current series in place and removes only those of objects
//! that are gone, instead of resetting the families and building every series again: the
//! cost of a pass then follows what changed, and a scrape never lands between a reset and
//! the rebuild and sees a family empty.

use prometheus::IntGaugeVec;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

type Labels = Vec<String>;

/// The series each family was given by the last finished [`Round`].
#[derive(Default)]
pub struct Tracked {
    last: Mutex<BTreeMap<String, (IntGaugeVec, BTreeSet<Labels>)>>,
}

impl Tracked {
    /// A round of updates; its [`Round::finish`] removes what it did not set.
    pub fn round(&self) -> Round<'_> {
        Round {
            tracked: self,
            now: BTreeMap::new(),
        }
    }
}

/// The series set since the round began.
pub struct Round<'a> {
    tracked: &'a Tracked,
    now: BTreeMap<String, (IntGaugeVec, BTreeSet<Labels>)>,
}

fn family_name(g: &IntGaugeVec) -> String {
    use prometheus::core::Collector;
    g.desc()
        .first()
        .map(|d| d.fq_name.clone())
        .unwrap_or_default()
}

impl Round<'_> {
    /// Sets one series, and keeps it past [`Round::finish`].
    pub fn set(&mut self, g: &IntGaugeVec, labels: &[&str], value: i64) {
        g.with_label_values(labels).set(value);
        self.now
            .entry(family_name(g))
            .or_insert_with(|| (g.clone(), BTreeSet::new()))
            .1
            .insert(labels.iter().map(|l| (*l).to_owned()).collect());
    }

    /// [`Round::set`] from an unsigned count, saturating.
    pub fn set_u64(&mut self, g: &IntGaugeVec, labels: &[&str], value: u64) {
        self.set(g, labels, i64::try_from(value).unwrap_or(i64::MAX));
    }

    /// Removes every series the last round set and this one did not.
    pub fn finish(self) {
        let mut last = self.tracked.last.lock().unwrap_or_else(|p| p.into_inner());
        for (name, (g, before)) in last.iter() {
            let kept = self.now.get(name).map(|(_, now)| now);
            for labels in before
                .iter()
                .filter(|l| kept.is_none_or(|k| !k.contains(*l)))
            {
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                // Absent already (never set, or reset elsewhere) is fine.
                let _ = g.remove_label_values(&refs);
            }
        }
        *last = self.now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;
    use prometheus::Opts;

    fn values(g: &IntGaugeVec) -> Vec<(String, i64)> {
        g.collect()[0]
            .get_metric()
            .iter()
            .map(|m| {
                (
                    m.get_label()[0].value().to_owned(),
                    m.get_gauge().get_value() as i64,
                )
            })
            .collect()
    }

    #[test]
    fn series_are_set_in_place_and_only_those_of_what_is_gone_are_removed() {
        let g = IntGaugeVec::new(Opts::new("t_bytes", "t"), &["volume"]).unwrap();
        let tracked = Tracked::default();
        let mut r = tracked.round();
        r.set(&g, &["a"], 1);
        r.set(&g, &["b"], 2);
        r.finish();
        assert_eq!(values(&g), [("a".into(), 1), ("b".into(), 2)]);

        let mut r = tracked.round();
        r.set(&g, &["b"], 3);
        // Before the round finishes, a's series is still there, and b already new.
        assert_eq!(values(&g), [("a".into(), 1), ("b".into(), 3)]);
        r.finish();
        assert_eq!(values(&g), [("b".into(), 3)]);

        // A round that sets nothing in a family empties it.
        tracked.round().finish();
        assert!(g.collect()[0].get_metric().is_empty());
    }
}
