//! Host tier: a volume's write IOPS limit holds for the device as a whole when two writers
//! in two different cgroups share it, on this host's cgroup hierarchy (v1 blkio here), with
//! the real probes and the real limit controller over a loop device.
//!
//! Needs root (loop devices, bpf, cgroups). Run with
//! `cargo test -p pxd-tests --test host_io_limits`.

use pxd::kernel::loop_device::LoopDevice;

#[test]
fn a_write_iops_limit_holds_for_two_writers_in_two_cgroups_and_goes_to_the_one_left() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the host tier needs root");
    let backing = std::env::temp_dir().join(format!("pxd-limits-{}.img", std::process::id()));
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(256 << 20))
        .expect("backing file");
    let device = LoopDevice::attach(&backing).expect("loop device");
    pxd_tests::limits::two_writers_share_a_write_limit(
        device.path(),
        &format!("limits-{}", std::process::id()),
    );
    device.detach().expect("detach");
    let _ = std::fs::remove_file(&backing);
}
