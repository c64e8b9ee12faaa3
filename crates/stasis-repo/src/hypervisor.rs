//! Which hypervisor wrote a snapshot's files, told from the files themselves when
//! neither the instance nor the caller says:
//!
//! - **QEMU**: a migration stream (`migrate "exec:cat > F"`, `savevm`'s state) starts
//!   with the magic `QEVM` and a big-endian version (3 today).
//! - **Firecracker**: a `vmstate` file starts with a little-endian u64 magic whose top
//!   48 bits are `0x0710_1984_8664` (x86_64) or `0x0710_1984_AAAA` (aarch64); older
//!   versions keep the format version in the low 16 bits.
//! - **Cloud Hypervisor**: its snapshot directory holds `config.json`, `state.json` and
//!   `memory-ranges`; a state file named one of the first two that is a JSON object,
//!   or a memory file named `memory-ranges`, tells.
//!
//! Only a file's name and its first [`HEAD`] bytes are looked at; nothing matching
//! tells nothing (`None`), and two files telling different hypervisors tell nothing
//! either.

use stasis_catalog::Hypervisor;
use stasis_store::Role;

/// How many leading bytes of a file [`detect`] looks at.
pub const HEAD: usize = 4096;

/// One file of a snapshot, as [`detect`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct Seen<'a> {
    /// Its role.
    pub role: Role,
    /// Its name in the snapshot.
    pub name: &'a str,
    /// Its first bytes (up to [`HEAD`]; fewer for a shorter file).
    pub head: &'a [u8],
}

const QEMU_MAGIC: &[u8; 4] = b"QEVM";
const FIRECRACKER_X86_64: u64 = 0x0710_1984_8664;
const FIRECRACKER_AARCH64: u64 = 0x0710_1984_AAAA;

/// The hypervisor one file tells, if any.
pub fn of_file(f: &Seen<'_>) -> Option<Hypervisor> {
    if f.role == Role::Disk {
        return None;
    }
    if f.head.len() >= 8 && &f.head[..4] == QEMU_MAGIC {
        let version = u32::from_be_bytes([f.head[4], f.head[5], f.head[6], f.head[7]]);
        if (2..=16).contains(&version) {
            return Some(Hypervisor::Qemu);
        }
    }
    if f.role == Role::State && f.head.len() >= 8 {
        let mut m = [0u8; 8];
        m.copy_from_slice(&f.head[..8]);
        let top = u64::from_le_bytes(m) >> 16;
        if top == FIRECRACKER_X86_64 || top == FIRECRACKER_AARCH64 {
            return Some(Hypervisor::Firecracker);
        }
    }
    let base = f.name.rsplit('/').next().unwrap_or(f.name);
    match (f.role, base) {
        (Role::Memory, "memory-ranges") => Some(Hypervisor::CloudHypervisor),
        (Role::State, "config.json" | "state.json") if json_object(f.head) => {
            Some(Hypervisor::CloudHypervisor)
        }
        _ => None,
    }
}

/// Whether `head` starts (after white space) a JSON object.
fn json_object(head: &[u8]) -> bool {
    head.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// The hypervisor `files` tell together: the one every telling file agrees on.
pub fn detect<'a>(files: impl IntoIterator<Item = Seen<'a>>) -> Option<Hypervisor> {
    let mut found = None;
    for f in files {
        match (found, of_file(&f)) {
            (_, None) => {}
            (None, Some(h)) => found = Some(h),
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => return None,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(role: Role, name: &'a str, head: &'a [u8]) -> Seen<'a> {
        Seen { role, name, head }
    }

    #[test]
    fn each_hypervisor_is_told_by_its_own_files() {
        let qemu = b"QEVM\0\0\0\x03\x05ram\0";
        assert_eq!(
            detect([seen(Role::State, "vmstate", qemu)]),
            Some(Hypervisor::Qemu)
        );
        let fc = 0x0710_1984_8664_0000u64.to_le_bytes();
        assert_eq!(
            detect([
                seen(Role::Memory, "memory", &[0u8; 64]),
                seen(Role::State, "vmstate", &fc)
            ]),
            Some(Hypervisor::Firecracker)
        );
        let old_fc = (0x0710_1984_AAAA_0000u64 | 2).to_le_bytes();
        assert_eq!(
            detect([seen(Role::State, "vmstate", &old_fc)]),
            Some(Hypervisor::Firecracker)
        );
        assert_eq!(
            detect([
                seen(Role::State, "config.json", b"  {\"cpus\": {}}"),
                seen(Role::State, "state.json", b"{\"snapshots\":{}}"),
                seen(Role::Memory, "memory-ranges", &[0u8; 16]),
            ]),
            Some(Hypervisor::CloudHypervisor)
        );
    }

    #[test]
    fn nothing_telling_or_disagreeing_files_tell_nothing() {
        assert_eq!(detect([]), None);
        assert_eq!(
            detect([seen(Role::Disk, "memory-ranges", b"QEVM\0\0\0\x03")]),
            None
        );
        assert_eq!(detect([seen(Role::State, "state.json", b"not json")]), None);
        assert_eq!(detect([seen(Role::State, "vmstate", b"QEVM")]), None);
        assert_eq!(
            detect([seen(Role::State, "vmstate", b"QEVM\xff\xff\xff\xff")]),
            None
        );
        let fc = 0x0710_1984_8664_0000u64.to_le_bytes();
        assert_eq!(
            detect([
                seen(Role::State, "vmstate", &fc),
                seen(Role::State, "qemu.state", b"QEVM\0\0\0\x03")
            ]),
            None
        );
        // Firecracker's magic in a memory file is guest data, not a vmstate.
        assert_eq!(detect([seen(Role::Memory, "memory", &fc)]), None);
    }
}
