//! The API's Unix socket: created with the configured mode and group, a stale
//! socket file from a crashed run replaced, a live one never stolen.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::UnixListener;

/// Binds the API socket at `path` with permission bits `mode` and, if given,
/// owned by group `group`.
pub fn bind_unix_socket(path: &Path, mode: u32, group: Option<&str>) -> io::Result<UnixListener> {
    let context = |e: io::Error, what: &str| {
        io::Error::new(
            e.kind(),
            format!("API socket {}: {what}: {e}", path.display()),
        )
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| context(e, "cannot create its directory"))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
    if path.exists() {
        // Another daemon answering there keeps its socket; a dead file goes.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "API socket {} is in use by another running metalbondd",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path).map_err(|e| context(e, "cannot remove the stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| context(e, "cannot bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| context(e, "cannot set its mode"))?;
    if let Some(group) = group {
        let gid = group_id(group).map_err(|e| context(e, "cannot set its group"))?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| context(e, "cannot set its group"))?;
    }
    Ok(listener)
}

/// Looks up a group by name (or a numeric gid).
fn group_id(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = CString::new(group)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name contains NUL"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: all-zero is a valid `group`; getgrnam_r fills it using `buf`
    // as storage and sets `result` to it (or null if not found).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group named {group:?}"),
        ));
    }
    Ok(grp.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mbd-api-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("sub").join("api.sock")
    }

    #[tokio::test]
    async fn creates_the_directory_sets_the_mode_and_replaces_a_stale_socket() {
        let path = temp_path("stale");
        let first = bind_unix_socket(&path, 0o660, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // A live socket is not stolen.
        let err = bind_unix_socket(&path, 0o660, None).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        // A dead one (listener gone, file left behind) is replaced.
        drop(first);
        assert!(path.exists());
        let _second = bind_unix_socket(&path, 0o600, Some("0")).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn unknown_groups_are_an_error() {
        let err = group_id("no-such-group-for-metalbondd").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(group_id("0").unwrap(), 0);
    }
}
