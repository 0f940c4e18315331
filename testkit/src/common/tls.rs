//! TLS test support: a certificate authority made with the `openssl` command (installed by
//! scripts/test.sh), server and client certificates it signs, files laid out the way a
//! Kubernetes secret volume lays them out (for rotation by symlink swap), and a rustls client
//! that reports what the server presented.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A CA in a temp dir; each certificate it issues gets a fresh key and serial.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    key: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Issued {
    /// The DER of the (first) certificate.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_file(&self.cert).unwrap().to_vec()
    }
}

/// `openssl req` arguments for a fresh unencrypted P-256 key.
const NEW_EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        let subject = format!("/CN={name}");
        let rest = [
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        openssl(&[&["req", "-x509"][..], &NEW_EC_KEY, &rest].concat());
        TestCa { dir, cert, key }
    }

    /// A server certificate for 127.0.0.1 and localhost, written as `<name>.crt`/`<name>.key`.
    pub fn issue_server(&self, name: &str) -> Issued {
        self.issue(
            name,
            "berth-test-server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
    }

    /// A client certificate whose subject common name is `cn`.
    pub fn issue_client(&self, name: &str, cn: &str) -> Issued {
        self.issue(name, cn, "extendedKeyUsage=clientAuth\n")
    }

    fn issue(&self, name: &str, cn: &str, ext: &str) -> Issued {
        let d = self.dir.path();
        let (cert, key, csr, extfile) = (
            d.join(format!("{name}.crt")),
            d.join(format!("{name}.key")),
            d.join(format!("{name}.csr")),
            d.join(format!("{name}.ext")),
        );
        std::fs::write(
            &extfile,
            format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"),
        )
        .unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let (key_path, csr_path, subject) = (s(&key), s(&csr), format!("/CN={cn}"));
        let rest = ["-keyout", &key_path, "-out", &csr_path, "-subj", &subject];
        openssl(&[&["req", "-new"][..], &NEW_EC_KEY, &rest].concat());
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&self.cert),
            "-CAkey",
            &s(&self.key),
            "-set_serial",
            &fastrand::u64(1..u64::MAX >> 1).to_string(),
            "-days",
            "2",
            "-extfile",
            &s(&extfile),
            "-out",
            &s(&cert),
        ]);
        Issued { cert, key }
    }
}

/// `tls.crt` and `tls.key` laid out like a Kubernetes secret volume: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<version>/`. `rotate` swaps `..data` atomically, as the kubelet does.
pub struct SecretVolume {
    pub dir: tempfile::TempDir,
    version: usize,
}

impl SecretVolume {
    pub fn new(first: &Issued) -> SecretVolume {
        let dir = tempfile::tempdir().unwrap();
        let mut v = SecretVolume { dir, version: 0 };
        v.rotate(first);
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), v.dir.path().join(f)).unwrap();
        }
        v
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Publish `next` the kubelet way: write a new versioned dir, point `..data` at it with
    /// one rename, remove the old dir.
    pub fn rotate(&mut self, next: &Issued) {
        let d = self.dir.path();
        self.version += 1;
        let versioned = format!("..v{}", self.version);
        std::fs::create_dir(d.join(&versioned)).unwrap();
        std::fs::copy(&next.cert, d.join(&versioned).join("tls.crt")).unwrap();
        std::fs::copy(&next.key, d.join(&versioned).join("tls.key")).unwrap();
        std::os::unix::fs::symlink(&versioned, d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        if self.version > 1 {
            std::fs::remove_dir_all(d.join(format!("..v{}", self.version - 1))).unwrap();
        }
    }

    /// The `[server.tls]` lines for this volume.
    pub fn config(&self) -> String {
        format!("cert_file = {:?}\nkey_file = {:?}\n", self.cert(), self.key())
    }
}

/// How a test client connects.
pub struct ClientOptions<'a> {
    pub ca: &'a Path,
    pub alpn: &'a [&'a str],
    pub identity: Option<&'a Issued>,
    pub versions: &'a [&'static rustls::SupportedProtocolVersion],
}

impl<'a> ClientOptions<'a> {
    pub fn new(ca: &'a Path) -> ClientOptions<'a> {
        ClientOptions {
            ca,
            alpn: &["h2", "http/1.1"],
            identity: None,
            versions: rustls::ALL_VERSIONS,
        }
    }
}

/// An established TLS connection and what the handshake settled.
pub struct TlsConn {
    pub stream: TlsStream<TcpStream>,
    pub alpn: Option<String>,
    pub version: Option<rustls::ProtocolVersion>,
    /// DER of the certificate the server presented.
    pub server_cert: Vec<u8>,
}

/// Connect to `addr` over TLS, trusting only the test CA.
pub async fn connect(addr: std::net::SocketAddr, opts: &ClientOptions<'_>) -> std::io::Result<TlsConn> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(opts.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(opts.versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match opts.identity {
        Some(id) => {
            let chain = CertificateDer::pem_file_iter(&id.cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&id.key).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = opts.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (_, conn) = stream.get_ref();
    Ok(TlsConn {
        alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
        version: conn.protocol_version(),
        server_cert: conn.peer_certificates().unwrap()[0].to_vec(),
        stream,
    })
}

/// A request sender over a `TlsConn`, HTTP/2 if ALPN chose it, else HTTP/1.1.
pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl TlsConn {
    pub async fn sender(self) -> Sender {
        let io = TokioIo::new(self.stream);
        if self.alpn.as_deref() == Some("h2") {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(s)
        }
    }
}

impl Sender {
    /// Send a GET for `path` and return the response with its body still streaming.
    pub async fn get(&mut self, path: &str) -> hyper::Result<http::Response<Incoming>> {
        let req = |uri: &str| {
            Request::builder()
                .method(Method::GET)
                .uri(uri)
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        // A connection takes a moment to be ready again after the previous response.
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                let mut r = req(path);
                r.headers_mut().insert("host", "127.0.0.1".parse().unwrap());
                s.send_request(r).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req(&format!("https://127.0.0.1{path}"))).await
            }
        }
    }

    /// GET `path` and collect the whole body.
    pub async fn get_bytes(&mut self, path: &str) -> (u16, Bytes) {
        let resp = self.get(path).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }
}
