//! Recognises thin-pool metadata, so pxd only zeroes a metadata device that holds none: a pool
//! coming back after a reboot keeps its metadata, a new pool starts clean.

/// `THIN_SUPERBLOCK_MAGIC` of the kernel's dm-thin-metadata.c.
const THIN_MAGIC: u64 = 27_022_010;
/// The magic sits after csum (4), flags (4), blocknr (8) and uuid (16).
const MAGIC_OFFSET: usize = 32;

/// Bytes that must be read from the start of a metadata device to decide.
pub const HEAD_LEN: usize = 4096;

/// True if `head` (the first block of a metadata device) carries a thin-pool superblock.
pub fn has_thin_superblock(head: &[u8]) -> bool {
    head.get(MAGIC_OFFSET..MAGIC_OFFSET + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        == Some(THIN_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_magic_and_nothing_else() {
        let mut head = vec![0u8; HEAD_LEN];
        assert!(!has_thin_superblock(&head));
        head[MAGIC_OFFSET..MAGIC_OFFSET + 8].copy_from_slice(&THIN_MAGIC.to_le_bytes());
        assert!(has_thin_superblock(&head));
        head[MAGIC_OFFSET] ^= 1;
        assert!(!has_thin_superblock(&head));
        assert!(!has_thin_superblock(&[0u8; 16]));
    }
}
