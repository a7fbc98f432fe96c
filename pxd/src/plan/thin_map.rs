//! What a thin device maps, read from the XML that thin-provisioning-tools print
//! (`thin_dump`, `thin_delta`): the block ranges a new replica is built from (DESIGN §5, "A
//! new replica"). Only mapped blocks are copied; an unmapped one reads as zeros on both ends.
//! Blocks are the pool's data blocks (its chunk), counted from the start of the device.

use std::collections::BTreeMap;

/// A run of blocks, `begin .. begin + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockRange {
    pub begin: u64,
    pub len: u64,
}

impl BlockRange {
    pub fn end(&self) -> u64 {
        self.begin + self.len
    }
}

/// The mapped blocks of one thin device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The pool's block size in 512-byte sectors.
    pub block_sectors: u64,
    /// Sorted, merged, disjoint.
    pub ranges: Vec<BlockRange>,
}

/// What changed from one thin device (an older snapshot) to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub block_sectors: u64,
    /// Mapped in the newer one and new or different there: to copy.
    pub changed: Vec<BlockRange>,
    /// Mapped in the older one only (discarded since): to discard on the copy.
    pub unmapped: Vec<BlockRange>,
}

impl Mapping {
    pub fn blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.blocks() * self.block_sectors * 512
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("thin tools output: {0}")]
    Format(String),
    #[error("thin tools output has no device {0}")]
    NoDevice(u32),
}

/// The attributes of the element on `line` if it is `<tag ...>`.
fn element<'a>(line: &'a str, tag: &str) -> Option<BTreeMap<&'a str, &'a str>> {
    let rest = line.trim().strip_prefix('<')?.strip_prefix(tag)?;
    if !rest.starts_with([' ', '/', '>']) {
        return None;
    }
    let mut attrs = BTreeMap::new();
    // `name="value"` pairs: split on quotes, names end in `=`.
    let mut parts = rest.split('"');
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        let name = name.trim().trim_end_matches('=').trim();
        attrs.insert(name, value);
    }
    Some(attrs)
}

fn number(attrs: &BTreeMap<&str, &str>, name: &str, line: &str) -> Result<u64, MapError> {
    attrs
        .get(name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| MapError::Format(format!("no number {name} in {:?}", line.trim())))
}

fn block_sectors(xml: &str) -> Result<u64, MapError> {
    xml.lines()
        .find_map(|l| element(l, "superblock").map(|a| (a, l)))
        .ok_or_else(|| MapError::Format("no superblock element".into()))
        .and_then(|(a, l)| number(&a, "data_block_size", l))
}

/// Sorts and merges touching or overlapping ranges.
fn merged(mut ranges: Vec<BlockRange>) -> Vec<BlockRange> {
    ranges.retain(|r| r.len > 0);
    ranges.sort();
    let mut out: Vec<BlockRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.begin <= last.end() => {
                last.len = last.end().max(r.end()) - last.begin;
            }
            _ => out.push(r),
        }
    }
    out
}

/// Device `dev_id`'s mapped blocks from `thin_dump` output.
pub fn parse_dump(xml: &str, dev_id: u32) -> Result<Mapping, MapError> {
    let block_sectors = block_sectors(xml)?;
    let mut inside = false;
    let mut found = false;
    let mut ranges = Vec::new();
    for line in xml.lines() {
        if let Some(a) = element(line, "device") {
            inside = number(&a, "dev_id", line)? == u64::from(dev_id);
            found |= inside;
            continue;
        }
        if line.trim() == "</device>" {
            inside = false;
            continue;
        }
        if line.trim_start().starts_with("<def") || line.trim_start().starts_with("<ref") {
            // Shared subtrees (newer thin_dump): mappings this parser would miss.
            return Err(MapError::Format(format!(
                "shared mapping subtrees are not supported: {:?}",
                line.trim()
            )));
        }
        if !inside {
            continue;
        }
        if let Some(a) = element(line, "range_mapping") {
            ranges.push(BlockRange {
                begin: number(&a, "origin_begin", line)?,
                len: number(&a, "length", line)?,
            });
        } else if let Some(a) = element(line, "single_mapping") {
            ranges.push(BlockRange {
                begin: number(&a, "origin_block", line)?,
                len: 1,
            });
        }
    }
    if !found {
        return Err(MapError::NoDevice(dev_id));
    }
    Ok(Mapping {
        block_sectors,
        ranges: merged(ranges),
    })
}

/// What changed between the two devices of `thin_delta` output.
pub fn parse_delta(xml: &str) -> Result<Delta, MapError> {
    let block_sectors = block_sectors(xml)?;
    let (mut changed, mut unmapped) = (Vec::new(), Vec::new());
    for line in xml.lines() {
        let (attrs, into) = if let Some(a) = element(line, "different") {
            (a, &mut changed)
        } else if let Some(a) = element(line, "right_only") {
            (a, &mut changed)
        } else if let Some(a) = element(line, "left_only") {
            (a, &mut unmapped)
        } else {
            continue;
        };
        into.push(BlockRange {
            begin: number(&attrs, "begin", line)?,
            len: number(&attrs, "length", line)?,
        });
    }
    Ok(Delta {
        block_sectors,
        changed: merged(changed),
        unmapped: merged(unmapped),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"<superblock uuid="" time="1" transaction="4" flags="0" version="2" data_block_size="128" nr_data_blocks="16384">
  <device dev_id="1" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
    <single_mapping origin_block="2" data_block="9" time="1"/>
    <single_mapping origin_block="40" data_block="3" time="0"/>
    <range_mapping origin_begin="8" data_begin="4" length="1" time="0"/>
  </device>
  <device dev_id="7" mapped_blocks="1" transaction="2" creation_time="1" snap_time="1">
    <single_mapping origin_block="100" data_block="12" time="1"/>
  </device>
</superblock>
"#;

    fn r(begin: u64, len: u64) -> BlockRange {
        BlockRange { begin, len }
    }

    #[test]
    fn a_dump_gives_one_devices_mapped_blocks_merged_in_order() {
        let m = parse_dump(DUMP, 1).unwrap();
        assert_eq!(m.block_sectors, 128);
        assert_eq!(m.ranges, [r(0, 3), r(8, 1), r(40, 1)]);
        assert_eq!((m.blocks(), m.bytes()), (5, 5 * 64 * 1024));
        assert_eq!(parse_dump(DUMP, 7).unwrap().ranges, [r(100, 1)]);
        assert_eq!(parse_dump(DUMP, 3), Err(MapError::NoDevice(3)));
        let empty = "<superblock data_block_size=\"128\">\n<device dev_id=\"3\">\n</device>\n";
        assert!(parse_dump(empty, 3).unwrap().ranges.is_empty());
        for bad in [
            "<superblock data_block_size=\"128\">\n<def name=\"a\">\n",
            "<device dev_id=\"1\">\n",
            "<superblock data_block_size=\"x\">\n",
            "<superblock data_block_size=\"128\">\n<device dev_id=\"1\">\n<single_mapping data_block=\"3\"/>\n",
        ] {
            assert!(matches!(parse_dump(bad, 1), Err(MapError::Format(_))), "{bad}");
        }
    }

    #[test]
    fn a_delta_says_what_to_copy_and_what_to_discard() {
        let xml = r#"<superblock uuid="" time="2" transaction="5" data_block_size="256" nr_data_blocks="100">
  <diff left="1" right="2">
    <same begin="0" length="4"/>
    <different begin="4" length="2"/>
    <right_only begin="6" length="1"/>
    <left_only begin="10" length="3"/>
    <right_only begin="20" length="5"/>
  </diff>
</superblock>
"#;
        let d = parse_delta(xml).unwrap();
        assert_eq!(d.block_sectors, 256);
        assert_eq!(d.changed, [r(4, 3), r(20, 5)]);
        assert_eq!(d.unmapped, [r(10, 3)]);
    }
}
