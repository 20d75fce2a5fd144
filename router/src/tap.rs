//! The sleeve's TAP device, opened through `/dev/net/tun` with raw ioctls so that it can carry
//! TSO super-frames: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (optionally `IFF_MULTI_QUEUE`), then
//! `TUNSETOFFLOAD(CSUM | TSO4 | TSO6 | TSO_ECN)`.
//!
//! With offloads on, every read and write is a 10-byte `virtio_net_hdr` followed by an Ethernet
//! frame of up to 64 KiB; the header travels unchanged to the far TAP, which rebuilds the GSO
//! skb (shared/probes/RESULTS.md). Shell only: this module reads and writes whole buffers and
//! never looks inside them. The `tun-tap` crate the design card names cannot set
//! `IFF_VNET_HDR` or `TUNSETOFFLOAD` (docs/ARCHITECTURE.md, "Dependency choices").
//!
//! `TUNSETIFF` resolves the device name in the network namespace of the calling thread, so a
//! caller serving another namespace opens the device on a thread that entered it; the file
//! descriptor then works from anywhere.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::time::Duration;

/// `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN`: the offloads that let the kernel
/// hand the TAP TCP super-frames with partial checksums.
pub const OFFLOAD_TSO: u32 =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
/// A read buffer that holds any frame a TAP with [`OFFLOAD_TSO`] returns: a 64 KiB GSO
/// super-frame, its Ethernet header and the virtio header, rounded up.
pub const MAX_READ_LEN: usize = 65_536 + 14 + 10 + 64;

/// How to open a TAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOptions {
    /// Prefix every frame with a `virtio_net_hdr` (`IFF_VNET_HDR`).
    pub vnet_hdr: bool,
    /// `TUN_F_*` flags for `TUNSETOFFLOAD`; needs `vnet_hdr` when non-zero.
    pub offload: u32,
    /// Open one queue of a multi-queue device (`IFF_MULTI_QUEUE`); every queue must say so.
    pub multi_queue: bool,
    /// Open the descriptor non-blocking (reads return `WouldBlock` when empty).
    pub nonblocking: bool,
}

impl Default for TapOptions {
    fn default() -> Self {
        Self {
            vnet_hdr: true,
            offload: OFFLOAD_TSO,
            multi_queue: false,
            nonblocking: true,
        }
    }
}

/// One open queue of a TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    vnet_hdr: bool,
}

impl Tap {
    /// Opens (creating it if absent, which needs `CAP_NET_ADMIN`) the TAP `name` in the calling
    /// thread's network namespace, and sets its offloads. A device created here disappears when
    /// its last descriptor closes.
    ///
    /// # Errors
    /// Fails when `/dev/net/tun` cannot be opened, the name is too long, or an ioctl fails
    /// (for example a device with other flags already exists).
    pub fn open(name: &str, options: &TapOptions) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        if options.offload != 0 && !options.vnet_hdr {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut open = OpenOptions::new();
        open.read(true).write(true).custom_flags(libc::O_CLOEXEC);
        if options.nonblocking {
            open.custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK);
        }
        let file = open.open("/dev/net/tun")?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if options.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        if options.multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut req = IfReq::new(name, flags as libc::c_short);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one, laid out as the
        // kernel's (40 bytes on 64-bit Linux), and lives for the call.
        check(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &raw mut req) })?;
        let tap = Self {
            file,
            name: req.name()?,
            vnet_hdr: options.vnet_hdr,
        };
        // Offloads belong to the device and outlive a previous reader, so they are always set,
        // to zero too (shared/probes/RESULTS.md, pitfall 2).
        tap.set_offload(options.offload)?;
        Ok(tap)
    }

    /// Returns the device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns whether frames carry a `virtio_net_hdr`.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Sets the device's offloads (`TUNSETOFFLOAD`, whose argument is passed by value).
    ///
    /// # Errors
    /// Fails as the ioctl (`EINVAL` for flags the kernel does not know).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value, not through a pointer.
        check(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        })
    }

    /// Returns the `IFF_*` features the driver supports (`TUNGETFEATURES`).
    ///
    /// # Errors
    /// Fails as the ioctl.
    pub fn features(&self) -> io::Result<u32> {
        let mut v: libc::c_uint = 0;
        // SAFETY: TUNGETFEATURES writes one unsigned int through the pointer.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETFEATURES, &raw mut v) })?;
        Ok(v)
    }

    /// Returns the length of the virtio header the device uses (`TUNGETVNETHDRSZ`; 10 unless
    /// changed).
    ///
    /// # Errors
    /// Fails as the ioctl.
    pub fn vnet_hdr_len(&self) -> io::Result<usize> {
        let mut v: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one int through the pointer.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETVNETHDRSZ, &raw mut v) })?;
        usize::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
    }

    /// Reads one frame (with its virtio header) into `buf`; `WouldBlock` when none is queued on
    /// a non-blocking descriptor. A frame longer than `buf` is cut.
    ///
    /// # Errors
    /// As `read(2)`.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Reads one frame scattered over `bufs` in order (for example straight into the data
    /// areas of sleeve chunk slots).
    ///
    /// # Errors
    /// As `readv(2)`.
    pub fn read_vectored(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.file).read_vectored(bufs)
    }

    /// Writes one frame (with its virtio header).
    ///
    /// # Errors
    /// As `write(2)`; `EINVAL` when the virtio header is inconsistent with the frame.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    /// Writes one frame gathered from `bufs`.
    ///
    /// # Errors
    /// As `writev(2)`.
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }

    /// Waits until a frame can be read or `timeout` passes; returns whether one can.
    ///
    /// # Errors
    /// Fails as `poll(2)`.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        crate::udp::poll_readable(self.file.as_fd(), timeout)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// `struct ifreq` as TUNSETIFF uses it: the name and the flags member of the union.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    // The rest of the 24-byte union.
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_short) -> Self {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req
    }

    /// The name the kernel wrote back (it fills in a pattern such as `tap%d`).
    fn name(&self) -> io::Result<String> {
        // SAFETY: c_char and u8 have the same size and alignment.
        let bytes: &[u8; libc::IFNAMSIZ] = unsafe { &*(&raw const self.name).cast() };
        CStr::from_bytes_until_nul(bytes)
            .ok()
            .and_then(|c| c.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const _: () = assert!(size_of::<IfReq>() == 40);
