//! Just enough of a BTF reader to find struct member offsets in the running kernel.
//!
//! Rust eBPF programs cannot carry CO-RE relocations, so the loader does the relocation itself:
//! it reads the offsets of the few fields the probe touches from `/sys/kernel/btf/vmlinux` and
//! hands them to the probe as a read-only global. aya parses BTF too, but does not expose struct
//! members. The format is `include/uapi/linux/btf.h` (also Documentation/bpf/btf.rst).

use pxd_ebpf_common::BioLayout;

/// Why a BTF lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("BTF data is malformed: {0}")]
    Malformed(String),
    #[error("no struct named `{0}` in the kernel's BTF")]
    NoStruct(String),
    #[error("struct `{strukt}` has no member `{member}` in the kernel's BTF")]
    NoMember { strukt: String, member: String },
    #[error("`{strukt}.{member}` is {found}, expected {expected}")]
    UnexpectedType {
        strukt: String,
        member: String,
        found: String,
        expected: &'static str,
    },
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type record: the common 12-byte `struct btf_type` and where its trailing data is.
#[derive(Clone, Copy, Debug)]
struct TypeRecord {
    name_off: u32,
    info: u32,
    /// `size` for ints, structs, unions, enums; `type` for pointers, typedefs, modifiers.
    size_or_type: u32,
    /// Offset of the kind-specific data after the common part, in `Btf::types`.
    extra: usize,
}

impl TypeRecord {
    const fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    const fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    const fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// A member found in a struct, with its offset from the start of the outermost struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Member {
    offset_bytes: u32,
    type_id: u32,
}

/// Parsed type and string sections of one BTF blob (native endianness, no base BTF).
pub(crate) struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Index `id - 1`: type ids start at 1, 0 is `void`.
    records: Vec<TypeRecord>,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    bytes
        .get(at..at.checked_add(2)?)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at.checked_add(4)?)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
}

fn malformed(what: impl Into<String>) -> BtfError {
    BtfError::Malformed(what.into())
}

impl<'a> Btf<'a> {
    pub(crate) fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let magic = u16_at(data, 0).ok_or_else(|| malformed("shorter than a header"))?;
        if magic != MAGIC {
            return Err(malformed(format!(
                "magic {magic:#06x}, expected {MAGIC:#06x} (foreign endianness?)"
            )));
        }
        let field = |at| u32_at(data, at).ok_or_else(|| malformed("truncated header"));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        if hdr_len < HEADER_LEN {
            return Err(malformed(format!("header length {hdr_len}")));
        }
        let section = |off: usize, len: usize, what: &str| {
            hdr_len
                .checked_add(off)
                .and_then(|start| data.get(start..start.checked_add(len)?))
                .ok_or_else(|| malformed(format!("{what} section out of bounds")))
        };
        let types = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?;

        let mut records = Vec::new();
        let mut at = 0;
        while at < types.len() {
            let word = |i: usize| {
                u32_at(types, at + 4 * i).ok_or_else(|| malformed("truncated type record"))
            };
            let record = TypeRecord {
                name_off: word(0)?,
                info: word(1)?,
                size_or_type: word(2)?,
                extra: at + 12,
            };
            let vlen = record.vlen();
            let extra_len = match record.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                kind => {
                    return Err(malformed(format!(
                        "unknown type kind {kind} (type id {})",
                        records.len() + 1
                    )))
                }
            };
            at = record.extra + extra_len;
            if at > types.len() {
                return Err(malformed("type record runs past the type section"));
            }
            records.push(record);
        }
        Ok(Self {
            types,
            strings,
            records,
        })
    }

    fn name(&self, name_off: u32) -> &'a [u8] {
        let tail = self.strings.get(name_off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        &tail[..end]
    }

    fn record(&self, id: u32) -> Result<&TypeRecord, BtfError> {
        id.checked_sub(1)
            .and_then(|index| self.records.get(index as usize))
            .ok_or_else(|| malformed(format!("type id {id} out of range")))
    }

    /// The id of the (complete) struct called `name`.
    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.records
            .iter()
            .position(|r| r.kind() == KIND_STRUCT && self.name(r.name_off) == name.as_bytes())
            .map(|index| index as u32 + 1)
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<(u32, &TypeRecord), BtfError> {
        // The chain is short in practice; the bound only stops a malformed loop.
        for _ in 0..32 {
            let record = self.record(id)?;
            match record.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = record.size_or_type;
                }
                _ => return Ok((id, record)),
            }
        }
        Err(malformed(format!(
            "typedef chain from type id {id} too long"
        )))
    }

    /// Finds `member` in the struct or union `id`, looking into anonymous struct and union
    /// members, as C does.
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Result<Option<Member>, BtfError> {
        let record = *self.record(id)?;
        if !matches!(record.kind(), KIND_STRUCT | KIND_UNION) || depth > 8 {
            return Ok(None);
        }
        for i in 0..record.vlen() {
            let at = record.extra + 12 * i;
            let word = |k: usize| {
                u32_at(self.types, at + 4 * k).ok_or_else(|| malformed("truncated member"))
            };
            let (name_off, type_id, raw_offset) = (word(0)?, word(1)?, word(2)?);
            // With kind_flag set, the top 8 bits hold a bitfield size, the rest the bit offset.
            let offset_bits = if record.kind_flag() {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            };
            let name = self.name(name_off);
            let found = if name == member.as_bytes() {
                Some(Member {
                    offset_bytes: 0,
                    type_id,
                })
            } else if name.is_empty() {
                let (inner, _) = self.resolve(type_id)?;
                self.find_member(inner, member, depth + 1)?
            } else {
                None
            };
            if let Some(found) = found {
                if !offset_bits.is_multiple_of(8) {
                    return Err(malformed(format!("`{member}` is a bitfield")));
                }
                return Ok(Some(Member {
                    offset_bytes: found.offset_bytes + offset_bits / 8,
                    type_id: found.type_id,
                }));
            }
        }
        Ok(None)
    }

    fn member(&self, strukt: &str, id: u32, member: &str) -> Result<Member, BtfError> {
        self.find_member(id, member, 0)?
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            })
    }

    /// Describes a type for error messages: kind and size.
    fn describe(&self, record: &TypeRecord) -> String {
        let name = String::from_utf8_lossy(self.name(record.name_off)).into_owned();
        match record.kind() {
            KIND_INT => format!("integer `{name}` of {} bytes", record.size_or_type),
            KIND_PTR => "a pointer".to_owned(),
            kind => format!("`{name}` (BTF kind {kind})"),
        }
    }

    /// Checks that a member is an integer of `bytes` bytes (after typedefs), the width the
    /// probe reads, and returns its offset.
    fn expect_int(
        &self,
        strukt: &str,
        member: &str,
        m: Member,
        bytes: u32,
    ) -> Result<u32, BtfError> {
        let (_, record) = self.resolve(m.type_id)?;
        if record.kind() == KIND_INT && record.size_or_type == bytes {
            Ok(m.offset_bytes)
        } else {
            Err(BtfError::UnexpectedType {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
                found: self.describe(record),
                expected: if bytes == 4 {
                    "a 4-byte integer"
                } else {
                    "an 8-byte integer"
                },
            })
        }
    }

    fn expect_u32(&self, strukt: &str, member: &str, m: Member) -> Result<u32, BtfError> {
        self.expect_int(strukt, member, m, 4)
    }

    fn expect_u64(&self, strukt: &str, member: &str, m: Member) -> Result<u32, BtfError> {
        self.expect_int(strukt, member, m, 8)
    }

    /// The offset of pointer member `member` of struct `strukt`.
    fn ptr_member(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = self.struct_id(strukt)?;
        self.expect_ptr(strukt, member, self.member(strukt, id, member)?)
    }

    /// Checks that argument `index` of tracepoint `tracepoint` (after the tracepoint's own
    /// context pointer) is a pointer to `struct strukt`: the probe reads it there.
    pub(crate) fn check_tracepoint_arg(
        &self,
        tracepoint: &str,
        index: usize,
        strukt: &str,
    ) -> Result<(), BtfError> {
        let typedef = format!("btf_trace_{tracepoint}");
        let wrong = |found: String| BtfError::UnexpectedType {
            strukt: typedef.clone(),
            member: format!("argument {index}"),
            found,
            expected: "a pointer to the struct the probe reads",
        };
        let id = self
            .records
            .iter()
            .position(|r| r.kind() == KIND_TYPEDEF && self.name(r.name_off) == typedef.as_bytes())
            .map(|i| i as u32 + 1)
            .ok_or_else(|| BtfError::NoStruct(typedef.clone()))?;
        // typedef -> pointer -> function prototype (void *ctx, args...).
        let (_, ptr) = self.resolve(self.record(id)?.size_or_type)?;
        let (_, proto) = self.resolve(ptr.size_or_type)?;
        if ptr.kind() != KIND_PTR || proto.kind() != KIND_FUNC_PROTO {
            return Err(wrong(self.describe(proto)));
        }
        let param = index + 1;
        if param >= proto.vlen() {
            return Err(wrong(format!("a prototype of {} parameters", proto.vlen())));
        }
        let type_id = u32_at(self.types, proto.extra + 8 * param + 4)
            .ok_or_else(|| malformed("truncated function prototype"))?;
        let (_, arg) = self.resolve(type_id)?;
        let (_, target) = self.resolve(arg.size_or_type)?;
        let is_struct =
            target.kind() == KIND_STRUCT && self.name(target.name_off) == strukt.as_bytes();
        if arg.kind() == KIND_PTR && is_struct {
            Ok(())
        } else {
            Err(wrong(self.describe(arg)))
        }
    }

    /// Checks that a member is a pointer, and returns its offset.
    fn expect_ptr(&self, strukt: &str, member: &str, m: Member) -> Result<u32, BtfError> {
        let (_, record) = self.resolve(m.type_id)?;
        if record.kind() == KIND_PTR {
            Ok(m.offset_bytes)
        } else {
            Err(BtfError::UnexpectedType {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
                found: self.describe(record),
                expected: "a pointer",
            })
        }
    }

    /// Offsets of the `struct bio` and `struct block_device` fields the bio probe reads.
    ///
    /// These names have been stable since Linux 5.12 (`bi_bdev` replaced `bi_disk`).
    pub(crate) fn bio_layout(&self) -> Result<BioLayout, BtfError> {
        let bio = self.struct_id("bio")?;
        let bdev = self.struct_id("block_device")?;

        let bio_bdev = self.expect_ptr("bio", "bi_bdev", self.member("bio", bio, "bi_bdev")?)?;
        let bio_opf = self.expect_u32("bio", "bi_opf", self.member("bio", bio, "bi_opf")?)?;
        let iter = self.member("bio", bio, "bi_iter")?;
        let (iter_id, _) = self.resolve(iter.type_id)?;
        let size = self.member("bvec_iter", iter_id, "bi_size")?;
        let size = self.expect_u32("bvec_iter", "bi_size", size)?;
        let bdev_dev = self.expect_u32(
            "block_device",
            "bd_dev",
            self.member("block_device", bdev, "bd_dev")?,
        )?;
        let mut layout = BioLayout {
            bio_bdev,
            bio_opf,
            bio_size: iter.offset_bytes + size,
            bdev_dev,
            ..BioLayout::default()
        };
        // Without blk-cgroup the bio has no `bi_blkg`, and every bio's cgroup reads as 0.
        if self.find_member(bio, "bi_blkg", 0)?.is_some() {
            self.cgroup_chain(&mut layout)?;
        }
        Ok(layout)
    }

    /// The offsets from a bio to the id of the cgroup it is charged to.
    fn cgroup_chain(&self, layout: &mut BioLayout) -> Result<(), BtfError> {
        layout.bio_blkg = self.ptr_member("bio", "bi_blkg")?;
        layout.blkg_blkcg = self.ptr_member("blkcg_gq", "blkcg")?;
        let blkcg = self.struct_id("blkcg")?;
        let css = self.member("blkcg", blkcg, "css")?;
        layout.blkcg_cgroup =
            css.offset_bytes + self.ptr_member("cgroup_subsys_state", "cgroup")?;
        layout.cgroup_kn = self.ptr_member("cgroup", "kn")?;
        let kn = self.struct_id("kernfs_node")?;
        layout.kn_id =
            self.expect_u64("kernfs_node", "id", self.member("kernfs_node", kn, "id")?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob from type records (already encoded) and a string table.
    fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]); // version, flags
        for word in [
            HEADER_LEN as u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend_from_slice(&type_bytes);
        out.extend_from_slice(strings);
        out
    }

    const fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
        ((kind_flag as u32) << 31) | (kind << 24) | vlen
    }

    /// A miniature kernel: the members the probe needs, one of them inside an anonymous union,
    /// one behind a typedef, and a bitfield-flagged struct.
    fn mini_kernel() -> Vec<u8> {
        // String offsets.
        let strings = b"\0bio\0block_device\0bvec_iter\0bi_bdev\0bi_opf\0bi_iter\0bi_size\0bd_dev\0u32\0unsigned int\0pad\0";
        let off = |s: &str| {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap_or_else(|| panic!("{s} not in table"))
        };
        #[rustfmt::skip]
        let types = vec![
            // 1: unsigned int, 4 bytes (int encoding word follows).
            off("unsigned int"), info(KIND_INT, 0, false), 4, 32,
            // 2: typedef u32 -> 1.
            off("u32"), info(KIND_TYPEDEF, 0, false), 1,
            // 3: struct block_device { u32 pad; u32 bd_dev; } with kind_flag (bitfield encoding).
            off("block_device"), info(KIND_STRUCT, 2, true), 8,
                off("pad"), 2, 0,
                off("bd_dev"), 2, 32,
            // 4: pointer to 3.
            0, info(KIND_PTR, 0, false), 3,
            // 5: struct bvec_iter { unsigned int pad; unsigned int bi_size at byte 8; }.
            off("bvec_iter"), info(KIND_STRUCT, 2, false), 12,
                off("pad"), 1, 0,
                off("bi_size"), 1, 64,
            // 6: anonymous union { unsigned int bi_opf; }.
            0, info(KIND_UNION, 1, false), 4,
                off("bi_opf"), 2, 0,
            // 7: struct bio { bdev *pad; bdev *bi_bdev; union { bi_opf }; bvec_iter bi_iter; }.
            off("bio"), info(KIND_STRUCT, 4, false), 40,
                off("pad"), 4, 0,
                off("bi_bdev"), 4, 64,
                0, 6, 128,
                off("bi_iter"), 5, 192,
        ];
        blob(&types, strings)
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let data = mini_kernel();
        let btf = Btf::parse(&data).expect("parse");
        assert_eq!(
            btf.bio_layout().expect("layout"),
            BioLayout {
                bio_bdev: 8,
                bio_opf: 16,
                bio_size: 24 + 8,
                bdev_dev: 4,
                ..BioLayout::default()
            }
        );
    }

    #[test]
    fn missing_member_names_struct_and_member() {
        let data = mini_kernel();
        let btf = Btf::parse(&data).expect("parse");
        let bio = btf.struct_id("bio").expect("bio");
        let err = btf
            .member("bio", bio, "bi_disk")
            .expect_err("no such member");
        assert_eq!(
            err.to_string(),
            "struct `bio` has no member `bi_disk` in the kernel's BTF"
        );
    }

    #[test]
    fn rejects_truncated_and_foreign_data() {
        let data = mini_kernel();
        assert!(Btf::parse(&data[..30]).is_err());
        let mut swapped = data.clone();
        swapped.swap(0, 1);
        assert!(Btf::parse(&swapped).is_err());
    }

    /// The real thing, where the host exposes it (readable without root).
    #[test]
    fn running_kernel_layout_is_plausible() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return;
        };
        let layout = Btf::parse(&data)
            .and_then(|btf| btf.bio_layout())
            .expect("layout from the running kernel");
        // bi_next comes first in struct bio, so nothing we read sits at offset 0.
        assert!(layout.bio_bdev > 0 && layout.bio_opf > 0 && layout.bdev_dev > 0);
        assert!(layout.bio_size > layout.bio_opf);
        // A kernel with blk-cgroup (as Debian's): the chain to the cgroup id is there.
        assert!(layout.bio_blkg > 0 && layout.cgroup_kn > 0 && layout.kn_id > 0);
        let btf = Btf::parse(&data).expect("parse");
        btf.check_tracepoint_arg("block_bio_complete", 1, "bio")
            .expect("block_bio_complete(q, bio)");
        btf.check_tracepoint_arg("block_bio_queue", 0, "bio")
            .expect("block_bio_queue(bio)");
        assert!(btf
            .check_tracepoint_arg("block_bio_complete", 0, "bio")
            .is_err());
    }
}
