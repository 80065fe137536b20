//! The client contract (`shared/spec/PROTOCOL.md`) as Rust types.
//!
//! A request line is parsed once, at the edge, into a [`Request`]: an optional echoed
//! [`RequestId`] and a typed [`Op`]. Everything behind the edge works with typed values; only
//! [`Response`] turns them back into a JSON line. The client side reads response lines with
//! [`WireResponse`], which needs to know what kind of request it answers ([`OpKind`]) because
//! the contract's responses do not repeat the operation.
//!
//! | file          | what is in it                                                      |
//! |---------------|--------------------------------------------------------------------|
//! | `request.rs`  | [`Request`], [`Op`], [`Command`], parsing and the size limits        |
//! | `response.rs` | [`Reply`], [`Failure`], [`ErrorCode`], [`Response`], [`WireResponse`] |
//! | `status.rs`   | the `status` payload: [`Status`], [`Role`], [`Member`]               |
//! | `text.rs`     | [`Text`], a `get` answer's value, owned or shared with the map       |

mod request;
mod response;
mod status;
mod text;

pub use request::{
    Command, Consistency, Limits, Op, OpKind, Request, RequestId, Session, is_host_port,
    parse_host_port,
};
pub use response::{
    CasOutcome, ErrorCode, Failure, Outcome, Reply, Response, WireResponse, WireResponseError,
    WriteOutcome,
};
pub use status::{Member, NodeId, Role, Status};
pub use text::Text;

#[cfg(test)]
mod tests;
