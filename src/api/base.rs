//! `GET /v2/`: the API version check (after `auth` has let the client in).

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response};

use crate::body::{self, Body};

/// `200 {}` with JSON headers, as distribution answers.
pub fn get(is_head: bool) -> Response<Body> {
    let mut resp = Response::new(if is_head { body::empty() } else { body::full("{}") });
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("2"));
    resp
}
