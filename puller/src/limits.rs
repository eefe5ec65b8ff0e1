//! Bounds on what one layer may cost, so a hostile layer fails with a clear error instead
//! of exhausting memory, disk or time.

/// Limits applied while decompressing and applying one layer. Every limit, when
/// exceeded, fails the layer with [`ApplyError::LimitExceeded`](crate::ApplyError::LimitExceeded)
/// before more than a bounded amount of memory is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes of the tar stream, headers and trailing bytes included.
    pub max_total_bytes: u64,
    /// Tar entries (extension headers not counted; they are bounded by size).
    pub max_entries: u64,
    /// Size of one PAX extension header or GNU long name / long link body. These are
    /// buffered whole, so this bounds the memory one entry's metadata can take.
    pub max_header_size: u64,
    /// Length of an entry path, hard link or symlink target, in bytes (PATH_MAX).
    pub max_path_len: usize,
    /// Length of one path component, in bytes (NAME_MAX).
    pub max_component_len: usize,
    /// log2 of the largest zstd window a frame may ask for; the decoder allocates
    /// a buffer of the window's size.
    pub zstd_window_log_max: u32,
}

impl Limits {
    /// 32 GiB.
    pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 32 << 30;
    /// One million.
    pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
    /// 1 MiB.
    pub const DEFAULT_MAX_HEADER_SIZE: u64 = 1 << 20;
    /// 4096 (PATH_MAX).
    pub const DEFAULT_MAX_PATH_LEN: usize = 4096;
    /// 255 (NAME_MAX).
    pub const DEFAULT_MAX_COMPONENT_LEN: usize = 255;
    /// 27, a 128 MiB window: zstd's own default cap is 27 too, and `zstd --long=27`
    /// is the largest window common tools write without being asked for more.
    pub const DEFAULT_ZSTD_WINDOW_LOG_MAX: u32 = 27;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: Self::DEFAULT_MAX_TOTAL_BYTES,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            max_header_size: Self::DEFAULT_MAX_HEADER_SIZE,
            max_path_len: Self::DEFAULT_MAX_PATH_LEN,
            max_component_len: Self::DEFAULT_MAX_COMPONENT_LEN,
            zstd_window_log_max: Self::DEFAULT_ZSTD_WINDOW_LOG_MAX,
        }
    }
}
