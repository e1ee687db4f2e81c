//! `BPF_PROG_TEST_RUN` on the program a daemon has attached: the kernel
//! runs it on a frame many times and reports the mean time per run, so the
//! data plane's per-packet cost is measured without a traffic generator.

use std::{
    ffi::CString,
    io,
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use anyhow::Context as _;

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_OBJ_GET: libc::c_long = 7;

/// `bpf(cmd, attr)`: the result, or the error it set.
fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of the size given,
    // and whatever pointers it holds outlive the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// An fd the kernel just returned.
fn owned(fd: i64) -> OwnedFd {
    // SAFETY: a descriptor the kernel returned to us, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// The program run by the BPF link pinned at `pin`.
pub fn program_of_link(pin: &Path) -> anyhow::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut get = [path.as_ptr() as u64, 0, 0];
    let link =
        owned(bpf(BPF_OBJ_GET, &mut get).with_context(|| format!("opening {}", pin.display()))?);
    // `struct bpf_link_info` starts with type, id, prog_id (u32 each).
    let mut info = [0u32; 64];
    let mut get_info = [
        u64::from(std::os::fd::AsRawFd::as_raw_fd(&link) as u32)
            | (std::mem::size_of_val(&info) as u64) << 32,
        info.as_mut_ptr() as u64,
    ];
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut get_info).context("reading the link's info")?;
    let mut by_id = [u64::from(info[2]), 0];
    Ok(owned(
        bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id).context("opening the link's program")?,
    ))
}

/// Runs `program` on `frame` `repeat` times; the mean nanoseconds per run
/// and the program's return value.
pub fn run(program: &OwnedFd, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, u32)> {
    // `union bpf_attr` for BPF_PROG_TEST_RUN: prog_fd, retval,
    // data_size_in, data_size_out, data_in, data_out, repeat, duration, ...
    let mut attr = [0u64; 10];
    attr[0] = u64::from(std::os::fd::AsRawFd::as_raw_fd(program) as u32);
    attr[1] = frame.len() as u64;
    attr[2] = frame.as_ptr() as u64;
    attr[4] = u64::from(repeat);
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    let retval = attr[0] >> 32;
    let duration = attr[4] >> 32;
    Ok((duration as u32, retval as u32))
}
