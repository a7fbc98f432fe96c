//! Facts about the machine itself that the kernel keeps.

/// This machine's host name (empty if unreadable), for the bare-metal `host` label and the
/// key of an offline tag in the topology file.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
