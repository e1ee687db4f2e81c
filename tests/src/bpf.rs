//! Raw `bpf(2)` calls on what a daemon pinned: the program behind a link,
//! `BPF_PROG_TEST_RUN` on it (the kernel runs the real program on a given
//! frame, with its live maps), and per-CPU counter reads. For the
//! frame-by-frame differential test and the benchmark's per-packet cost,
//! and map writes that damage a live policy.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

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

fn context(error: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

/// The object (map, link) pinned at `pin`.
pub fn pinned(pin: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut get = [path.as_ptr() as u64, 0, 0];
    bpf(BPF_OBJ_GET, &mut get)
        .map(owned)
        .map_err(|err| context(err, format_args!("opening {}", pin.display())))
}

/// Elements `indexes` of the array map pinned at `pin` (values of
/// `value_size` bytes), as raw bytes.
pub fn array_elements(
    pin: &Path,
    indexes: std::ops::Range<u32>,
    value_size: usize,
) -> io::Result<Vec<Vec<u8>>> {
    let map = pinned(pin)?;
    let fd = u64::from(map.as_raw_fd() as u32);
    indexes
        .map(|index| {
            let mut value = vec![0u8; value_size];
            let mut attr = [fd, &raw const index as u64, value.as_mut_ptr() as u64, 0];
            bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)
                .map_err(|err| context(err, format_args!("reading {}", pin.display())))?;
            Ok(value)
        })
        .collect()
}

/// Writes `value` (raw bytes of the map's value size) at `index` of the
/// array map pinned at `pin`: how a test damages a map.
pub fn set_array_element(pin: &Path, index: u32, value: &[u8]) -> io::Result<()> {
    let map = pinned(pin)?;
    let fd = u64::from(map.as_raw_fd() as u32);
    let mut attr = [fd, &raw const index as u64, value.as_ptr() as u64, 0];
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
        .map(drop)
        .map_err(|err| context(err, format_args!("writing {}", pin.display())))
}

/// The program run by the BPF link pinned at `pin`.
pub fn program_of_link(pin: &Path) -> io::Result<OwnedFd> {
    let link = pinned(pin)?;
    // `struct bpf_link_info` starts with type, id, prog_id (u32 each).
    let mut info = [0u32; 64];
    let mut get_info = [
        u64::from(link.as_raw_fd() as u32) | (std::mem::size_of_val(&info) as u64) << 32,
        info.as_mut_ptr() as u64,
    ];
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut get_info)
        .map_err(|err| context(err, "reading the link's info"))?;
    let mut by_id = [u64::from(info[2]), 0];
    bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id)
        .map(owned)
        .map_err(|err| context(err, "opening the link's program"))
}

/// Runs `program` on `frame` `repeat` times; the mean nanoseconds per run
/// and the program's return value (`XDP_DROP` 1, `XDP_PASS` 2).
pub fn test_run(program: impl AsFd, frame: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
    // `union bpf_attr` for BPF_PROG_TEST_RUN: prog_fd, retval,
    // data_size_in, data_size_out, data_in, data_out, repeat, duration, ...
    let mut attr = [0u64; 10];
    attr[0] = u64::from(program.as_fd().as_raw_fd() as u32);
    attr[1] = frame.len() as u64;
    attr[2] = frame.as_ptr() as u64;
    attr[4] = u64::from(repeat);
    bpf(BPF_PROG_TEST_RUN, &mut attr).map_err(|err| context(err, "BPF_PROG_TEST_RUN"))?;
    let retval = attr[0] >> 32;
    let duration = attr[4] >> 32;
    Ok((duration as u32, retval as u32))
}

/// `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux 5.18): frames the program returns
/// `XDP_TX` or `XDP_REDIRECT` for are really sent.
const BPF_F_TEST_XDP_LIVE_FRAMES: u64 = 1 << 1;

/// Runs the XDP `program` on `repeat` copies of `frame` as if received on
/// `ifindex` (of the calling thread's namespace), in live-frames mode: what
/// it transmits leaves through that interface. A traffic generator.
pub fn test_run_live(
    program: impl AsFd,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> io::Result<()> {
    // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let xdp_md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let mut attr = [0u64; 10];
    attr[0] = u64::from(program.as_fd().as_raw_fd() as u32);
    attr[1] = frame.len() as u64;
    attr[2] = frame.as_ptr() as u64;
    attr[4] = u64::from(repeat);
    attr[5] = std::mem::size_of_val(&xdp_md) as u64;
    attr[6] = xdp_md.as_ptr() as u64;
    attr[8] = BPF_F_TEST_XDP_LIVE_FRAMES;
    bpf(BPF_PROG_TEST_RUN, &mut attr)
        .map(drop)
        .map_err(|err| context(err, "BPF_PROG_TEST_RUN (live frames)"))
}

/// CPUs the kernel may bring up: the number of values of a per-CPU map.
pub fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    // "0-3", "0", or "0-3,5-7".
    text.trim()
        .split(',')
        .map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            let parse = |n: &str| {
                n.parse::<usize>()
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
            };
            Ok(parse(last)? - parse(first)? + 1)
        })
        .sum()
}

/// A per-CPU array of `{packets, bytes}` counters (`REASON_STATS`,
/// `RULE_STATS`), read one index at a time and summed over CPUs.
pub struct PerCpuCounters {
    map: OwnedFd,
    values: Vec<[u64; 2]>,
}

impl PerCpuCounters {
    pub fn open(pin: &Path) -> io::Result<PerCpuCounters> {
        Ok(PerCpuCounters {
            map: pinned(pin)?,
            values: vec![[0; 2]; possible_cpus()?],
        })
    }

    /// `(packets, bytes)` at `index`, summed over CPUs.
    pub fn get(&mut self, index: u32) -> io::Result<(u64, u64)> {
        let key = index;
        let mut attr = [
            u64::from(self.map.as_raw_fd() as u32),
            &raw const key as u64,
            self.values.as_mut_ptr() as u64,
            0,
        ];
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map_err(|err| context(err, "reading a counter"))?;
        Ok(self.values.iter().fold((0, 0), |(packets, bytes), value| {
            (packets + value[0], bytes + value[1])
        }))
    }
}
