//! Status codes every hostcall returns. SDKs panic on a status they do not expect, so these are
//! exactly the ABI's numbers.

/// A hostcall's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// No such key, header or property.
    NotFound = 1,
    /// An argument is out of range (map id, buffer id, log level...).
    BadArgument = 2,
    /// Data that could not be serialized.
    SerializationFailure = 3,
    /// Data the guest sent that does not parse (a header map, say).
    ParseFailure = 4,
    /// A pointer or length outside guest memory.
    InvalidMemoryAccess = 6,
    /// Nothing to return.
    Empty = 7,
    /// Compare-and-swap mismatch.
    CasMismatch = 8,
    /// The host failed.
    InternalFailure = 10,
    /// Not implemented by this host.
    Unimplemented = 12,
}

impl From<Status> for i32 {
    fn from(status: Status) -> i32 {
        status as i32
    }
}

/// Collapses a hostcall body's result into its status code.
pub fn code(result: Result<(), Status>) -> i32 {
    match result {
        Ok(()) => Status::Ok.into(),
        Err(status) => status.into(),
    }
}
