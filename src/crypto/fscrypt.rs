//! Linux fscrypt v2 on a data folder: the kernel encrypts the contents and
//! names of every file below a folder that has a policy, with the key the
//! policy names, while that key is in the filesystem.
//!
//! Owns the ioctls (`FS_IOC_ADD_ENCRYPTION_KEY`, `FS_IOC_REMOVE_ENCRYPTION_KEY`,
//! `FS_IOC_GET_ENCRYPTION_KEY_STATUS`, `FS_IOC_SET_ENCRYPTION_POLICY`,
//! `FS_IOC_GET_ENCRYPTION_POLICY_EX`) as `#[repr(C)]` structs of
//! `<linux/fscrypt.h>` (a test compiles the header and compares every size
//! and offset), through rustix's ioctl plumbing; and the key identifier, the
//! kernel's HKDF-SHA512 of the key, computed here too. It must never keep a
//! key: the raw bytes passed to the kernel are wiped after the call.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::ioctl::{self, opcode, Updater};
use zeroize::Zeroize;

use super::data_key::{DataKey, DATA_KEY_LEN};

pub const KEY_IDENTIFIER_SIZE: usize = 16;
pub const POLICY_V2: u8 = 2;
pub const MODE_AES_256_XTS: u8 = 1;
pub const MODE_AES_256_CTS: u8 = 4;
pub const POLICY_FLAGS_PAD_32: u8 = 0x03;
pub const KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;
pub const KEY_REMOVAL_STATUS_FLAG_FILES_BUSY: u32 = 0x1;
pub const KEY_REMOVAL_STATUS_FLAG_OTHER_USERS: u32 = 0x2;
pub const KEY_STATUS_ABSENT: u32 = 1;
pub const KEY_STATUS_PRESENT: u32 = 2;
pub const KEY_STATUS_INCOMPLETELY_REMOVED: u32 = 3;

/// `struct fscrypt_policy_v1`: only its size matters (it sizes the
/// `FS_IOC_SET_ENCRYPTION_POLICY` number, also for a v2 policy).
#[repr(C)]
pub struct PolicyV1 {
    pub version: u8,
    pub contents_encryption_mode: u8,
    pub filenames_encryption_mode: u8,
    pub flags: u8,
    pub master_key_descriptor: [u8; 8],
}

/// `struct fscrypt_policy_v2`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyV2 {
    pub version: u8,
    pub contents_encryption_mode: u8,
    pub filenames_encryption_mode: u8,
    pub flags: u8,
    pub reserved: [u8; 4],
    pub master_key_identifier: [u8; KEY_IDENTIFIER_SIZE],
}

/// `struct fscrypt_get_policy_ex_arg` (its union as the v2 policy, the
/// largest member).
#[repr(C)]
#[derive(Default)]
pub struct GetPolicyExArg {
    pub policy_size: u64,
    pub policy: PolicyV2,
}

/// `struct fscrypt_key_specifier`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct KeySpecifier {
    pub kind: u32,
    pub reserved: u32,
    pub u: [u8; 32],
}

/// `struct fscrypt_add_key_arg`, without its flexible `raw` array.
#[repr(C)]
#[derive(Default)]
pub struct AddKeyArg {
    pub key_spec: KeySpecifier,
    pub raw_size: u32,
    pub key_id: u32,
    pub reserved: [u32; 8],
}

/// `struct fscrypt_add_key_arg` followed by the key's bytes.
#[repr(C)]
struct AddKeyWithRaw {
    arg: AddKeyArg,
    raw: [u8; DATA_KEY_LEN],
}

/// `struct fscrypt_remove_key_arg`.
#[repr(C)]
#[derive(Default)]
pub struct RemoveKeyArg {
    pub key_spec: KeySpecifier,
    pub removal_status_flags: u32,
    pub reserved: [u32; 5],
}

/// `struct fscrypt_get_key_status_arg`.
#[repr(C)]
#[derive(Default)]
pub struct GetKeyStatusArg {
    pub key_spec: KeySpecifier,
    pub reserved: [u32; 6],
    pub status: u32,
    pub status_flags: u32,
    pub user_count: u32,
    pub out_reserved: [u32; 13],
}

pub const FS_IOC_SET_ENCRYPTION_POLICY: ioctl::Opcode = opcode::read::<PolicyV1>(b'f', 19);
pub const FS_IOC_GET_ENCRYPTION_POLICY_EX: ioctl::Opcode = opcode::read_write::<[u8; 9]>(b'f', 22);
pub const FS_IOC_ADD_ENCRYPTION_KEY: ioctl::Opcode = opcode::read_write::<AddKeyArg>(b'f', 23);
pub const FS_IOC_REMOVE_ENCRYPTION_KEY: ioctl::Opcode =
    opcode::read_write::<RemoveKeyArg>(b'f', 24);
pub const FS_IOC_GET_ENCRYPTION_KEY_STATUS: ioctl::Opcode =
    opcode::read_write::<GetKeyStatusArg>(b'f', 26);

/// The name of an fscrypt key: a hash of it, not secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyIdentifier(pub [u8; KEY_IDENTIFIER_SIZE]);

impl KeyIdentifier {
    /// The identifier the kernel gives `key`: HKDF-SHA512 with an all-zero
    /// salt, info `"fscrypt\0"` and context byte 1 (`HKDF_CONTEXT_KEY_IDENTIFIER`).
    pub fn of(key: &DataKey) -> Self {
        let hkdf = hkdf::Hkdf::<sha2::Sha512>::new(Some(&[0u8; 64]), key.bytes());
        let mut out = [0u8; KEY_IDENTIFIER_SIZE];
        // 16 bytes is far below HKDF-SHA512's limit: this cannot fail.
        let _ = hkdf.expand(b"fscrypt\0\x01", &mut out);
        Self(out)
    }

    pub fn hex(&self) -> String {
        super::hex(&self.0)
    }

    pub fn parse(hex: &str) -> Option<Self> {
        super::unhex(hex)?.try_into().ok().map(Self)
    }

    fn spec(&self) -> KeySpecifier {
        let mut u = [0u8; 32];
        u[..KEY_IDENTIFIER_SIZE].copy_from_slice(&self.0);
        KeySpecifier {
            kind: KEY_SPEC_TYPE_IDENTIFIER,
            reserved: 0,
            u,
        }
    }
}

/// What the kernel says of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Absent,
    Present,
    /// Removed, but files it opened are still in use.
    IncompletelyRemoved,
}

/// What removing a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Gone: nothing below a folder of its policy can be read.
    Removed,
    /// Files it unlocked are still open: try again once they are closed.
    FilesBusy,
    /// Another user added it too: it stays for them.
    OtherUsers,
    /// It was not there.
    Absent,
}

/// A filesystem with fscrypt, reached through a folder on it.
pub struct Fscrypt {
    root: PathBuf,
    fd: OwnedFd,
}

impl std::fmt::Debug for Fscrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fscrypt({})", self.root.display())
    }
}

fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
}

impl Fscrypt {
    /// The filesystem of `root`, if it can encrypt; else why not and what to do.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let fd = open_dir(root)
            .map_err(|e| anyhow::anyhow!("the data folder {}: {e}", root.display()))?;
        let this = Self {
            root: root.to_owned(),
            fd,
        };
        match policy_of(this.fd.as_fd()) {
            Ok(_) => Ok(this),
            Err(Errno::OPNOTSUPP) => anyhow::bail!(
                "encryption.enabled: the filesystem of the data folder {} has no encryption \
                 support: turn it on with `tune2fs -O encrypt <its device>` (ext4, unmounted), \
                 or put the data folder on a volume formatted with it (`mkfs.ext4 -O encrypt`, \
                 or f2fs with `-O encrypt`)",
                root.display()
            ),
            Err(Errno::NOTTY) | Err(Errno::INVAL) => anyhow::bail!(
                "encryption.enabled: the filesystem of the data folder {} does not support \
                 Linux fscrypt: use ext4 or f2fs with the `encrypt` feature",
                root.display()
            ),
            Err(e) => anyhow::bail!(
                "encryption.enabled: cannot ask the filesystem of {} about encryption: {e}",
                root.display()
            ),
        }
    }

    /// Put `key` into the filesystem: folders of its policy can be read.
    pub fn add_key(&self, key: &DataKey) -> std::io::Result<KeyIdentifier> {
        let mut arg = AddKeyWithRaw {
            arg: AddKeyArg {
                key_spec: KeySpecifier {
                    kind: KEY_SPEC_TYPE_IDENTIFIER,
                    ..Default::default()
                },
                raw_size: DATA_KEY_LEN as u32,
                ..Default::default()
            },
            raw: *key.bytes(),
        };
        // SAFETY: the opcode is FS_IOC_ADD_ENCRYPTION_KEY, whose argument is
        // `struct fscrypt_add_key_arg` followed by `raw_size` bytes: `arg`.
        let done = unsafe {
            ioctl::ioctl(
                self.fd.as_fd(),
                Updater::<{ FS_IOC_ADD_ENCRYPTION_KEY }, AddKeyWithRaw>::new(&mut arg),
            )
        };
        arg.raw.zeroize();
        done.map_err(std::io::Error::from)?;
        let mut id = [0u8; KEY_IDENTIFIER_SIZE];
        id.copy_from_slice(&arg.arg.key_spec.u[..KEY_IDENTIFIER_SIZE]);
        Ok(KeyIdentifier(id))
    }

    /// Take the key out of the filesystem.
    pub fn remove_key(&self, id: &KeyIdentifier) -> std::io::Result<Removal> {
        let mut arg = RemoveKeyArg {
            key_spec: id.spec(),
            ..Default::default()
        };
        // SAFETY: FS_IOC_REMOVE_ENCRYPTION_KEY takes `struct fscrypt_remove_key_arg`.
        let done = unsafe {
            ioctl::ioctl(
                self.fd.as_fd(),
                Updater::<{ FS_IOC_REMOVE_ENCRYPTION_KEY }, RemoveKeyArg>::new(&mut arg),
            )
        };
        match done {
            Err(Errno::NOKEY) => Ok(Removal::Absent),
            Err(e) => Err(e.into()),
            Ok(()) if arg.removal_status_flags & KEY_REMOVAL_STATUS_FLAG_FILES_BUSY != 0 => {
                Ok(Removal::FilesBusy)
            }
            Ok(()) if arg.removal_status_flags & KEY_REMOVAL_STATUS_FLAG_OTHER_USERS != 0 => {
                Ok(Removal::OtherUsers)
            }
            Ok(()) => Ok(Removal::Removed),
        }
    }

    pub fn key_status(&self, id: &KeyIdentifier) -> std::io::Result<KeyStatus> {
        let mut arg = GetKeyStatusArg {
            key_spec: id.spec(),
            ..Default::default()
        };
        // SAFETY: FS_IOC_GET_ENCRYPTION_KEY_STATUS takes `struct fscrypt_get_key_status_arg`.
        unsafe {
            ioctl::ioctl(
                self.fd.as_fd(),
                Updater::<{ FS_IOC_GET_ENCRYPTION_KEY_STATUS }, GetKeyStatusArg>::new(&mut arg),
            )
        }?;
        Ok(match arg.status {
            KEY_STATUS_PRESENT => KeyStatus::Present,
            KEY_STATUS_INCOMPLETELY_REMOVED => KeyStatus::IncompletelyRemoved,
            _ => KeyStatus::Absent,
        })
    }

    /// Give the empty folder `dir` the policy of key `id` (AES-256-XTS
    /// contents, AES-256-CTS names): every file made below it is encrypted.
    pub fn set_policy(&self, dir: &Path, id: &KeyIdentifier) -> std::io::Result<()> {
        let fd = open_dir(dir)?;
        let mut policy = PolicyV2 {
            version: POLICY_V2,
            contents_encryption_mode: MODE_AES_256_XTS,
            filenames_encryption_mode: MODE_AES_256_CTS,
            flags: POLICY_FLAGS_PAD_32,
            reserved: [0; 4],
            master_key_identifier: id.0,
        };
        // SAFETY: FS_IOC_SET_ENCRYPTION_POLICY takes a policy struct whose
        // first byte says its version; a v2 policy is `struct fscrypt_policy_v2`.
        // The kernel only reads it (the Updater pattern passes the pointer).
        unsafe {
            ioctl::ioctl(
                fd.as_fd(),
                Updater::<{ FS_IOC_SET_ENCRYPTION_POLICY }, PolicyV2>::new(&mut policy),
            )
        }
        .map_err(std::io::Error::from)
    }

    /// The key a folder's policy names: `None` for a folder without one.
    pub fn policy(&self, dir: &Path) -> std::io::Result<Option<KeyIdentifier>> {
        let fd = open_dir(dir)?;
        match policy_of(fd.as_fd()) {
            Ok(Some(p)) if p.version == POLICY_V2 => {
                Ok(Some(KeyIdentifier(p.master_key_identifier)))
            }
            Ok(Some(p)) => Err(std::io::Error::other(format!(
                "{} has an fscrypt policy of version {}: only v2 is used here",
                dir.display(),
                p.version
            ))),
            Ok(None) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn policy_of(fd: std::os::fd::BorrowedFd<'_>) -> Result<Option<PolicyV2>, Errno> {
    let mut arg = GetPolicyExArg {
        policy_size: std::mem::size_of::<PolicyV2>() as u64,
        ..Default::default()
    };
    // SAFETY: FS_IOC_GET_ENCRYPTION_POLICY_EX takes `struct
    // fscrypt_get_policy_ex_arg`, whose union is at most a v2 policy.
    let done = unsafe {
        ioctl::ioctl(
            fd,
            Updater::<{ FS_IOC_GET_ENCRYPTION_POLICY_EX }, GetPolicyExArg>::new(&mut arg),
        )
    };
    match done {
        Ok(()) => Ok(Some(arg.policy)),
        Err(Errno::NODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_are_the_kernels() {
        // The values of <linux/fscrypt.h> on x86-64 and aarch64 (a test in
        // tests/fscrypt_layout.rs compiles the header and compares them).
        assert_eq!(FS_IOC_SET_ENCRYPTION_POLICY as u64, 0x800c_6613);
        assert_eq!(FS_IOC_GET_ENCRYPTION_POLICY_EX as u64, 0xc009_6616);
        assert_eq!(FS_IOC_ADD_ENCRYPTION_KEY as u64, 0xc050_6617);
        assert_eq!(FS_IOC_REMOVE_ENCRYPTION_KEY as u64, 0xc040_6618);
        assert_eq!(FS_IOC_GET_ENCRYPTION_KEY_STATUS as u64, 0xc080_661a);
    }

    #[test]
    fn identifiers_print_and_parse() {
        let id = KeyIdentifier([0xab; KEY_IDENTIFIER_SIZE]);
        assert_eq!(KeyIdentifier::parse(&id.hex()), Some(id));
        assert_eq!(KeyIdentifier::parse("abcd"), None);
        let key = DataKey::generate(1).unwrap();
        assert_eq!(KeyIdentifier::of(&key), KeyIdentifier::of(&key));
    }
}
