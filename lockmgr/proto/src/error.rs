//! Error types of the codec and of session authentication.

/// Why a frame or one of its messages could not be decoded.
///
/// Frame-level problems (header, framing of the message list) are returned by
/// [`decode_frame`](crate::decode_frame); problems inside one message body are yielded by the
/// [`FrameReader`](crate::FrameReader) iterator for that message only.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before a field did.
    #[error("truncated: needed {needed} bytes, only {available} available")]
    Truncated { needed: usize, available: usize },
    /// The frame does not start with [`MAGIC`](crate::MAGIC).
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// The frame's version is not [`VERSION`](crate::VERSION).
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// Frame flag bits this version does not define were set.
    #[error("unsupported frame flags {0:#04x}")]
    UnsupportedFlags(u8),
    /// The frame (as declared or as given) is longer than [`MAX_FRAME`](crate::MAX_FRAME).
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    /// The header's total length differs from the length of the buffer handed to the decoder.
    #[error("frame header declares {declared} bytes, buffer holds {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    /// Bytes follow the last message the header announced.
    #[error("{extra} bytes after the last of the frame's messages")]
    TrailingFrameBytes { extra: usize },
    /// A message body is longer than its fields.
    #[error("message type {tag:#04x} has {extra} bytes after its last field")]
    TrailingBodyBytes { tag: u8, extra: usize },
    /// A message type this version does not know, not marked optional by its sender.
    #[error("unknown message type {0:#04x}")]
    UnknownMessageType(u8),
    /// Message flag bits this version does not define were set.
    #[error("message type {tag:#04x} has unknown flags {flags:#04x}")]
    UnknownMessageFlags { tag: u8, flags: u8 },
    /// A field holds a value outside its enumeration (including booleans other than 0 and 1).
    #[error("invalid value {value:#x} for {field}")]
    InvalidEnumValue { field: &'static str, value: u64 },
    /// A lock or unlock request carries more ranges than [`MAX_LOCK_RANGES`](crate::MAX_LOCK_RANGES).
    #[error("{count} lock ranges, at most {max} allowed")]
    TooManyRanges { count: usize, max: usize },
    /// A text field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    /// A text field is longer than its limit.
    #[error("{field} is {len} bytes, at most {max} allowed")]
    StringTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A replica configuration record (in `Recorded`) is not one the coordination service
    /// could hold.
    #[error("configuration record: {0}")]
    InvalidConfiguration(#[from] lockmgr_replica::ConfigError),
}

/// Why a message could not be added to a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message does not fit in what is left of this frame: finish it and start a new one.
    /// The frame is unchanged.
    #[error("frame full")]
    FrameFull,
    /// The message does not fit even in an empty frame; a new frame will not help.
    #[error("message of {len} bytes cannot fit in a frame (at most {max} bytes of messages)")]
    MessageTooLarge { len: usize, max: usize },
    /// The buffer given to [`FrameWriter::new_fixed`](crate::FrameWriter::new_fixed) cannot
    /// even hold a frame header.
    #[error("buffer of {len} bytes is smaller than the {min}-byte frame header")]
    BufferTooSmall { len: usize, min: usize },
    /// A lock or unlock request carries more ranges than [`MAX_LOCK_RANGES`](crate::MAX_LOCK_RANGES).
    #[error("{count} lock ranges, at most {max} allowed")]
    TooManyRanges { count: usize, max: usize },
    /// A text field is longer than its limit.
    #[error("{field} is {len} bytes, at most {max} allowed")]
    StringTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A field holds a value the decoder would reject (e.g. lease state bits above RWH).
    #[error("invalid value {value:#x} for {field}")]
    InvalidValue { field: &'static str, value: u64 },
    /// The encoder wrote a different number of bytes than it computed: a codec bug, reported
    /// rather than sending a corrupt frame. The frame is unchanged.
    #[error("internal codec error: encoded length differs from computed length")]
    LengthMismatch,
    /// A variant of a `#[non_exhaustive]` engine type that this codec version does not know.
    #[error("{0} variant not supported by this protocol version")]
    UnsupportedVariant(&'static str),
}

/// Why a cluster key was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Keys shorter than [`MIN_KEY_LEN`](crate::auth::MIN_KEY_LEN) are too weak to authenticate nodes.
    #[error("cluster key of {len} bytes is shorter than the minimum of {min}")]
    TooShort { len: usize, min: usize },
    /// The MAC implementation refused the key.
    #[error("cluster key rejected by HMAC")]
    Invalid,
    /// A key file is unreadable, too short, or readable by others.
    #[error("cluster key file {}: {why}", path.display())]
    File {
        path: std::path::PathBuf,
        why: String,
    },
}
