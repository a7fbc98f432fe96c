//! Where a new volume goes on this node, and whether its pool can take it: the pool of the
//! class asked for (or the best class the node has), within the pool's overcommit and below
//! its near-full thresholds. Pure: the caller passes the pools and their last known use.

use crate::volume::spec::{human, Class};

/// A pool as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub class: Class,
    /// Usable data bytes (from the live pool, else the drives' sizes).
    pub capacity: u64,
    /// Sum of the sizes of the volumes already provisioned on it.
    pub provisioned: u64,
    /// Why it takes no new allocations, if it is near full.
    pub near_full: Option<String>,
}

/// Picks the pool for a volume of `size` bytes asking for `class`, with at most `overcommit`
/// times a pool's capacity provisioned on it.
pub fn place(
    pools: &[Candidate],
    class: Option<Class>,
    size: u64,
    overcommit: f64,
) -> Result<&Candidate, String> {
    if pools.is_empty() {
        return Err(
            "io_priority: this node has no pool yet; add a drive with `pxd drive add`".into(),
        );
    }
    let chosen = match class {
        Some(c) => pools.iter().find(|p| p.class == c).ok_or_else(|| {
            let have: Vec<String> = pools.iter().map(|p| p.class.to_string()).collect();
            format!(
                "io_priority: this node has no {c} pool (it has: {}); add a drive of that class",
                have.join(", ")
            )
        })?,
        // High before medium before low: the best this node has.
        None => pools.iter().min_by_key(|p| p.class).unwrap_or(&pools[0]),
    };
    admit(chosen, size, overcommit)?;
    Ok(chosen)
}

/// Checks that `pool` can take `more` bytes of new provisioning.
pub fn admit(pool: &Candidate, more: u64, overcommit: f64) -> Result<(), String> {
    if let Some(why) = &pool.near_full {
        return Err(format!("pool {} is near full: {why}", pool.id));
    }
    let limit = (pool.capacity as f64 * overcommit) as u64;
    let total = pool.provisioned.saturating_add(more);
    if total > limit {
        return Err(format!(
            "size: {} more would provision {} on pool {} ({} {}); the limit is {} ({}x its capacity, --overcommit)",
            human(more),
            human(total),
            pool.id,
            pool.class,
            human(pool.capacity),
            human(limit),
            overcommit
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(id: &str, class: Class) -> Candidate {
        Candidate {
            id: id.into(),
            class,
            capacity: 1 << 30,
            provisioned: 0,
            near_full: None,
        }
    }

    #[test]
    fn the_class_asked_for_is_the_pool_chosen() {
        let pools = [pool("slow", Class::Low), pool("fast", Class::High)];
        assert_eq!(
            place(&pools, Some(Class::High), 1 << 20, 4.0).unwrap().id,
            "fast"
        );
        assert_eq!(
            place(&pools, Some(Class::Low), 1 << 20, 4.0).unwrap().id,
            "slow"
        );
        assert_eq!(place(&pools, None, 1 << 20, 4.0).unwrap().id, "fast");
        let e = place(&pools, Some(Class::Medium), 1 << 20, 4.0).unwrap_err();
        assert!(
            e.starts_with("io_priority: this node has no medium pool"),
            "{e}"
        );
        assert!(place(&[], None, 1, 4.0)
            .unwrap_err()
            .contains("pxd drive add"));
    }

    #[test]
    fn overcommit_and_near_full_refuse_with_the_limit() {
        let mut p = pool("p", Class::Medium);
        p.provisioned = 3 << 30;
        assert!(admit(&p, 1 << 30, 4.0).is_ok());
        let e = admit(&p, (1 << 30) + 4096, 4.0).unwrap_err();
        assert!(
            e.starts_with("size:") && e.contains("the limit is 4 GiB"),
            "{e}"
        );
        p.near_full = Some("its data is 95% used".into());
        assert!(admit(&p, 1, 4.0).unwrap_err().contains("near full"));
    }
}
