//! Client authentication: who a request comes from. The identity type is shared by every way
//! a client can prove who it is (a verified TLS client certificate, berth's own users).

pub mod identity;

pub use identity::Identity;
