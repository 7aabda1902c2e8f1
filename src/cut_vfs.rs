//! A SQLite VFS whose reads fail once its work is cut: the one way to stop SQLCipher's
//! `PRAGMA cipher_integrity_check`, which verifies every page's HMAC in one C loop while
//! the statement is prepared, where neither a progress handler nor `sqlite3_interrupt`
//! reaches. With every read failing, the loop runs to its end in a moment (it records a
//! read error per page and goes on) and the thread running it can be joined.
//!
//! The VFS is the default one (`unix`) with one difference: each file it opens gets a copy
//! of the default's I/O methods whose `xRead` looks at the cut first. Each [`CutVfs`] is
//! registered under a name of its own and unregistered when dropped, after every
//! connection using it is closed.

use std::ffi::{CString, c_int, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Result, bail};
use rusqlite::ffi;

/// A registered VFS; connections opened with [`CutVfs::name`] read through it.
pub struct CutVfs {
    vfs: Box<ffi::sqlite3_vfs>,
    name: CString,
    state: Box<State>,
}

// SQLite serializes its use of the VFS object; the state is atomics.
unsafe impl Send for CutVfs {}

/// What the VFS's functions reach through `pAppData` and each file.
struct State {
    cut: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    default: *mut ffi::sqlite3_vfs,
    /// Where [`Extra`] starts in each file: after the default VFS's own file object.
    extra_at: usize,
}

/// Appended to the default VFS's file object. `methods` is first: a file's `pMethods`
/// points at it, which is how `xRead` finds the rest.
#[repr(C)]
struct Extra {
    methods: ffi::sqlite3_io_methods,
    original_read: unsafe extern "C" fn(*mut ffi::sqlite3_file, *mut c_void, c_int, i64) -> c_int,
    state: *const State,
}

impl CutVfs {
    /// Registers a new one, not as the default.
    pub fn register() -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = CString::new(format!(
            "ghostwire-cut-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))?;
        let default = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
        if default.is_null() {
            bail!("SQLite has no default VFS");
        }
        let align = std::mem::align_of::<Extra>();
        let own_size = usize::try_from(unsafe { (*default).szOsFile })?;
        let extra_at = own_size.div_ceil(align) * align;
        let state = Box::new(State {
            cut: Arc::new(AtomicBool::new(false)),
            reads: Arc::new(AtomicU64::new(0)),
            default,
            extra_at,
        });
        let mut vfs = Box::new(unsafe { *default });
        vfs.szOsFile = c_int::try_from(extra_at + std::mem::size_of::<Extra>())?;
        vfs.pNext = std::ptr::null_mut();
        vfs.zName = name.as_ptr();
        vfs.pAppData = (&*state as *const State).cast_mut().cast();
        vfs.xOpen = Some(open);
        let rc = unsafe { ffi::sqlite3_vfs_register(&mut *vfs, 0) };
        if rc != ffi::SQLITE_OK {
            bail!("cannot register a SQLite VFS (error {rc})");
        }
        Ok(Self { vfs, name, state })
    }

    /// The name to open connections with.
    pub fn name(&self) -> &std::ffi::CStr {
        &self.name
    }

    /// Setting it makes every later read through this VFS fail.
    pub fn cut(&self) -> Arc<AtomicBool> {
        self.state.cut.clone()
    }

    /// How many reads went through to the file so far (not those a cut failed).
    pub fn reads(&self) -> Arc<AtomicU64> {
        self.state.reads.clone()
    }
}

impl Drop for CutVfs {
    fn drop(&mut self) {
        unsafe { ffi::sqlite3_vfs_unregister(&mut *self.vfs) };
    }
}

/// `xOpen`: the default VFS opens the file, then it gets methods of its own.
unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    unsafe {
        let state = (*vfs).pAppData as *const State;
        let default = (*state).default;
        let Some(default_open) = (*default).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        let rc = default_open(default, name, file, flags, out_flags);
        let methods = (*file).pMethods;
        if rc != ffi::SQLITE_OK || methods.is_null() {
            return rc;
        }
        let Some(original_read) = (*methods).xRead else {
            return rc;
        };
        let extra = file.cast::<u8>().add((*state).extra_at).cast::<Extra>();
        extra.write(Extra {
            methods: ffi::sqlite3_io_methods {
                xRead: Some(read),
                ..*methods
            },
            original_read,
            state,
        });
        (*file).pMethods = &raw const (*extra).methods;
        rc
    }
}

/// `xRead`: fails once cut, else the default's.
unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buffer: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    unsafe {
        let extra = (*file).pMethods.cast::<Extra>();
        let state = &*(*extra).state;
        if state.cut.load(Ordering::Relaxed) {
            return ffi::SQLITE_IOERR_READ;
        }
        state.reads.fetch_add(1, Ordering::Relaxed);
        ((*extra).original_read)(file, buffer, amount, offset)
    }
}
