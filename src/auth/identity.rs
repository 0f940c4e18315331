//! `Identity`: the user an authenticated request comes from. The TLS acceptor puts one in
//! every request's extensions when the connection presented a verified client certificate;
//! `auth` adds logins (htpasswd, berth's tokens). Only the type lives here: no verification
//! and no I/O.

use std::fmt;

/// An authenticated user, carried in `http::Request::extensions`. A request without one is
/// anonymous (as far as the connection is concerned).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    user: String,
    method: AuthMethod,
}

/// How a client proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A client certificate verified against `[server.tls] client_ca_file`; the user is the
    /// certificate's subject common name.
    ClientCertificate,
    /// A user and password from `[auth] htpasswd` (Basic).
    Password,
    /// A bearer token berth issued at `/token` after a password login.
    Token,
}

impl Identity {
    /// The user `user`, authenticated by `method`.
    pub fn new(user: impl Into<String>, method: AuthMethod) -> Identity {
        Identity {
            user: user.into(),
            method,
        }
    }

    /// The user name access rules match on.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// How the user was authenticated.
    pub fn method(&self) -> AuthMethod {
        self.method
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.user)
    }
}
