//! Host tier, driving three VM boots on the same disk images: drives are known by their
//! labels, never by their paths, and metadata is never rewritten on a guess.
//!
//! 1. Three disks: a high pool over two of them and a low pool over the third (slowed with
//!    dm-delay), an ext4 volume on each, holding data.
//! 2. The disks come back in another order behind a blank disk: both pools are assembled on
//!    the right drives, the data reads back, thin_check is clean, and the blank disk's first
//!    8 MiB are untouched.
//! 3. The low pool's metadata superblock is overwritten on the host: the pool is `damaged`,
//!    says why, and its bytes are left exactly as they were, while the high pool's volume
//!    mounts and reads back.

use pxd::api::pools::PoolView;
use pxd::store::types::PoolHealth;
use pxd_tests::boots::{boot_script, pxd, target_debug, xtask_vm};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const MIB: u64 = 1 << 20;

/// Class thresholds for the emulated guest: a raw virtio disk is high, one behind dm-delay's
/// 5 ms is low (as in the VM tier's daemon tests).
const THRESHOLDS: &str = "--high-min-iops 100 --high-max-p50-us 4000 \
                          --medium-min-iops 50 --medium-max-p50-us 4500";

/// The sha256 of `len` bytes of `image` at `offset`.
fn image_sum(image: &Path, offset: u64, len: u64) -> String {
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    format!("{:x}", Sha256::digest(&buf))
}

fn make_image(path: &Path, fill_head: bool) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(1024 * MIB).unwrap();
    if fill_head {
        let head: Vec<u8> = (0..8 * MIB).map(|i| (i * 7 + i / 4096) as u8).collect();
        (&f).write_all(&head).unwrap();
    }
}

fn boot(work: &Path, disks: &[&str], script: &str) -> String {
    let share = work.display().to_string();
    let mut args: Vec<String> = Vec::new();
    for d in disks {
        args.push("--disk".into());
        args.push(work.join(d).display().to_string());
    }
    args.extend(["--share".into(), share.clone(), "--".into(), "sh".into()]);
    args.extend(["-c".into(), script.to_owned()]);
    let (code, out) = xtask_vm(&args, 900);
    assert_eq!(
        code,
        0,
        "boot with {disks:?} failed:\n{out}\n--- daemon log ---\n{}",
        std::fs::read_to_string(work.join("daemon.log")).unwrap_or_default()
    );
    out
}

fn pools(work: &Path, file: &str) -> Vec<PoolView> {
    serde_json::from_slice(&std::fs::read(work.join(file)).unwrap()).unwrap()
}

/// Waits, in the guest's shell, up to 300 s for `cond`.
fn wait_for(cond: &str, what: &str) -> String {
    format!(
        "i=0; until {cond}; do i=$((i+1)); \
         if [ $i -gt 600 ]; then echo 'timed out waiting for {what}'; exit 1; fi; \
         sleep 0.5; done"
    )
}

#[test]
fn pools_follow_their_labels_across_renumbering_and_damaged_metadata_is_left_alone() {
    let work = target_debug().join(format!("disk-identity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    for d in ["a.img", "b.img", "c.img"] {
        make_image(&work.join(d), false);
    }
    make_image(&work.join("blank.img"), true);
    let pxd = pxd();
    let share = work.display().to_string();
    let get = env!("CARGO_BIN_EXE_pxd-test-get");
    let mounted = |v: &str| format!("grep -q ' /mnt/pxd/{v} ' /proc/mounts");

    // Boot 1: a, b, c as vda, vdb, vdc; c is slowed, so it makes a pool of its own.
    let first = format!(
        "set -e; $P cluster init --name ident; \
         $P drive add /dev/vda; $P drive add /dev/vdb; \
         dmsetup create slowc --table \"0 $(blockdev --getsz /dev/vdc) delay /dev/vdc 0 5\"; \
         $P drive add /dev/mapper/slowc; \
         $P volume create fast --size 256M --io_priority high; \
         $P volume create slow --size 128M --io_priority low; \
         $P volume mount fast; $P volume mount slow; \
         head -c 16M /dev/urandom >/mnt/pxd/fast/data; \
         head -c 4M /dev/urandom >/mnt/pxd/slow/data; sync; \
         sha256sum /mnt/pxd/fast/data /mnt/pxd/slow/data >{share}/sums; \
         $P --json pool list >{share}/pools1.json; \
         kill $D; wait $D || true; umount /mnt/pxd/fast /mnt/pxd/slow"
    );
    boot(
        &work,
        &["a.img", "b.img", "c.img"],
        &boot_script(&pxd, &share, THRESHOLDS, &first),
    );
    let before = pools(&work, "pools1.json");
    assert_eq!(before.len(), 2, "{before:?}");
    let high = before.iter().find(|p| p.members.len() == 2).unwrap();
    let low = before.iter().find(|p| p.members.len() == 1).unwrap();
    assert_eq!(
        high.members
            .iter()
            .map(|m| m.path.as_deref())
            .collect::<Vec<_>>(),
        [Some("/dev/vda"), Some("/dev/vdb")]
    );
    let blank_head = image_sum(&work.join("blank.img"), 0, 8 * MIB);

    // Boot 2: a blank disk first, then c, b, a. Nothing but the labels says which is which.
    let second = format!(
        "set -e; {}; {}; \
         sha256sum -c {share}/sums; \
         $P --json pool list >{share}/pools2.json; \
         kill $D; wait $D || true; umount /mnt/pxd/fast /mnt/pxd/slow; \
         for n in $(dmsetup ls | awk '{{print $1}}' | grep -- '-thin-'); do dmsetup remove $n; done; \
         for n in $(dmsetup ls | awk '{{print $1}}' | grep '^pxd-' | grep -v -- '-meta$' | grep -v -- '-data$'); do dmsetup remove $n; done; \
         for m in $(dmsetup ls | awk '{{print $1}}' | grep -- '-meta$'); do thin_check /dev/mapper/$m; echo \"thin_check clean $m\"; done",
        wait_for(&mounted("fast"), "the fast volume"),
        wait_for(&mounted("slow"), "the slow volume"),
    );
    let out = boot(
        &work,
        &["blank.img", "c.img", "b.img", "a.img"],
        &boot_script(&pxd, &share, "", &second),
    );
    assert_eq!(
        out.matches(": OK").count(),
        2,
        "both files read back:\n{out}"
    );
    assert_eq!(
        out.matches("thin_check clean").count(),
        2,
        "both pools' metadata is clean:\n{out}"
    );
    let after = pools(&work, "pools2.json");
    let found = |id: &str| after.iter().find(|p| p.id == id).unwrap().clone();
    let (high2, low2) = (found(&high.id), found(&low.id));
    assert_eq!(high2.health, PoolHealth::Online);
    assert_eq!(low2.health, PoolHealth::Online);
    let paths = |p: &PoolView| -> Vec<(String, Option<String>)> {
        p.members
            .iter()
            .map(|m| (m.uuid.clone(), m.path.clone()))
            .collect()
    };
    assert_eq!(
        paths(&high2),
        [
            (high.members[0].uuid.clone(), Some("/dev/vdd".to_string())),
            (high.members[1].uuid.clone(), Some("/dev/vdc".to_string())),
        ],
        "the high pool's members, found where they are now"
    );
    assert_eq!(
        paths(&low2),
        [(low.members[0].uuid.clone(), Some("/dev/vdb".to_string()))]
    );
    assert_eq!(
        image_sum(&work.join("blank.img"), 0, 8 * MIB),
        blank_head,
        "the blank disk was written to"
    );

    // Boot 3: the low pool's metadata superblock (1 MiB into c, after the label area) is
    // overwritten. Its first 32 MiB (labels, metadata, the start of data) must not change.
    {
        let mut c = std::fs::OpenOptions::new()
            .write(true)
            .open(work.join("c.img"))
            .unwrap();
        c.seek(SeekFrom::Start(MIB)).unwrap();
        c.write_all(&[0xa5; 4096]).unwrap();
        c.sync_all().unwrap();
    }
    let c_head = image_sum(&work.join("c.img"), 0, 32 * MIB);
    let third = format!(
        "set -e; {}; {}; \
         grep /mnt/pxd/fast/data {share}/sums | sha256sum -c; \
         $P --json pool list >{share}/pools3.json; \
         {get} /tmp/pxd.sock /metrics >{share}/metrics3.txt; \
         kill $D; wait $D || true; umount /mnt/pxd/fast",
        wait_for("$P pool list | grep -q damaged", "the damaged pool"),
        wait_for(&mounted("fast"), "the fast volume"),
    );
    let out = boot(
        &work,
        &["a.img", "b.img", "c.img"],
        &boot_script(&pxd, &share, "", &third),
    );
    assert!(out.contains(": OK"), "the fast volume reads back:\n{out}");
    let third_pools = pools(&work, "pools3.json");
    let low3 = third_pools.iter().find(|p| p.id == low.id).unwrap();
    match &low3.health {
        PoolHealth::Damaged(why) => assert!(
            why.contains("no thin superblock") && why.contains(&low.members[0].uuid),
            "the reason names the check and the drive: {why}"
        ),
        other => panic!("the low pool is {other:?}"),
    }
    let high3 = third_pools.iter().find(|p| p.id == high.id).unwrap();
    assert_eq!(high3.health, PoolHealth::Online);
    let metrics = std::fs::read_to_string(work.join("metrics3.txt")).unwrap();
    assert!(
        pxd_tests::metric_has(
            &metrics,
            "pxd_pool_state",
            &[("class", "low"), ("pool", &low.id), ("state", "damaged")],
            "1"
        ),
        "{metrics}"
    );
    let log = std::fs::read_to_string(work.join("daemon.log")).unwrap();
    assert!(log.contains("pool is damaged"), "{log}");
    assert_eq!(
        image_sum(&work.join("c.img"), 0, 32 * MIB),
        c_head,
        "the damaged pool's drive was written to"
    );
    std::fs::remove_dir_all(&work).unwrap();
}
