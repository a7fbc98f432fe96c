//! The kernel keyring, through which pxd hands volume keys to dm-crypt: a `logon` key can be
//! used by the kernel but never read back by userspace, and tables only name it.

use std::ffi::CString;
use std::io;

/// `KEY_SPEC_PROCESS_KEYRING`: dm-crypt looks keys up in the keyrings of the process that
/// loads the table, and pxd loads every table itself.
const KEY_SPEC_PROCESS_KEYRING: libc::c_long = -2;
/// `KEYCTL_INVALIDATE`.
const KEYCTL_INVALIDATE: libc::c_long = 21;

/// A key placed in the keyring; invalidated (wiped from the keyring) on drop, once the table
/// that needed it holds its own copy.
#[derive(Debug)]
pub struct KeyringKey {
    serial: libc::c_long,
}

/// Adds (or replaces) the `logon` key `description` with `payload`.
pub fn add_logon_key(description: &str, payload: &[u8]) -> io::Result<KeyringKey> {
    let kind = CString::new("logon").expect("no NUL in a literal");
    let desc = CString::new(description)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "key description holds a NUL"))?;
    // SAFETY: all pointers are valid for the call; the kernel copies the payload.
    let serial = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            KEY_SPEC_PROCESS_KEYRING,
        )
    };
    if serial < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(KeyringKey { serial })
}

impl Drop for KeyringKey {
    fn drop(&mut self) {
        // SAFETY: a plain syscall on a serial we own; failure leaves an unusable key behind.
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_INVALIDATE, self.serial) };
    }
}
