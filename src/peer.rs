//! Who is on the other end of a connection, as the kernel tells it.

/// A connected client's identity, from the socket's peer credentials
/// (SO_PEERCRED), which the client cannot forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Effective user id of the process that connected.
    pub uid: u32,
    /// Effective group id of the process that connected.
    pub gid: u32,
    /// Process id, when the kernel reports one.
    pub pid: Option<i32>,
}
