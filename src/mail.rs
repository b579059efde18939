//! Sending mail through the school's SMTP server, for the daily summary and for alerts.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};
use thiserror::Error;

use crate::config::{Smtp, SmtpTls};

/// Why a message was not sent.
#[derive(Debug, Error)]
pub enum MailError {
    /// The config names an address lettre cannot use.
    #[error("bad address {0:?}; fix it in the [smtp] or recipients settings")]
    Address(String),
    /// The CA certificate file cannot be read or holds no certificate.
    #[error(
        "cannot use {path} as the mail server's CA certificate: {reason}; give a PEM file \
         (-----BEGIN CERTIFICATE-----) in [smtp] ca_file"
    )]
    Ca {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The password file cannot be read.
    #[error("cannot read the SMTP password file {path}: {source}")]
    Password {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No recipients configured.
    #[error("no recipients configured; set report.recipients (or alerts.recipients)")]
    NoRecipients,
    /// Building the message failed.
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
    /// The server refused or could not be reached.
    #[error("SMTP delivery via {server} failed: {reason}; {next}")]
    Smtp {
        /// `host:port`.
        server: String,
        /// Why, as lettre says it.
        reason: String,
        /// What to check.
        next: &'static str,
    },
}

/// Reads a PEM CA certificate for the mail server's TLS.
pub fn read_ca(path: &std::path::Path) -> Result<Certificate, MailError> {
    let ca = |reason: String| MailError::Ca {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
    // A file without a certificate section would parse as an empty set of certificates.
    if !pem
        .windows(CERT_BEGIN.len())
        .any(|w| w == CERT_BEGIN.as_bytes())
    {
        return Err(ca("it holds no certificate".to_string()));
    }
    Certificate::from_pem(&pem).map_err(|e| ca(e.to_string()))
}

fn smtp_failed(server: &str, e: lettre::transport::smtp::Error) -> MailError {
    let reason = e.to_string();
    let next = if reason.contains("certificate") {
        "if the mail server's certificate comes from the school's or the trust's own authority, \
         name that authority's PEM certificate in [smtp] ca_file"
    } else {
        "check [smtp] host, port, tls and credentials"
    };
    MailError::Smtp {
        server: server.to_string(),
        reason,
        next,
    }
}

const CERT_BEGIN: &str = "-----BEGIN CERTIFICATE-----";

/// A connection recipe for the configured server.
pub struct Mailer {
    transport: SmtpTransport,
    from: Mailbox,
    server: String,
}

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

impl Mailer {
    /// Prepares to send through `smtp` (nothing is connected yet).
    pub fn new(smtp: &Smtp) -> Result<Self, MailError> {
        let from: Mailbox = smtp
            .from
            .parse()
            .map_err(|_| MailError::Address(smtp.from.clone()))?;
        let server = format!("{}:{}", smtp.host, smtp.port);
        let smtp_error = |e| smtp_failed(&server, e);
        let builder = match smtp.tls {
            SmtpTls::None => SmtpTransport::builder_dangerous(&smtp.host),
            protected => {
                let mut params = TlsParameters::builder(smtp.host.clone());
                if let Some(ca) = &smtp.ca_file {
                    params = params.add_root_certificate(read_ca(ca)?);
                }
                let params = params.build().map_err(smtp_error)?;
                let tls = match protected {
                    SmtpTls::Tls => Tls::Wrapper(params),
                    _ => Tls::Required(params),
                };
                SmtpTransport::builder_dangerous(&smtp.host).tls(tls)
            }
        };
        let mut builder = builder.port(smtp.port).timeout(Some(SMTP_TIMEOUT));
        if let Some(user) = &smtp.username {
            let password = match &smtp.password_file {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|source| MailError::Password {
                        path: p.clone(),
                        source,
                    })?
                    .trim_end()
                    .to_string(),
                None => String::new(),
            };
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            server,
        })
    }

    /// Sends one message with a text part and, if given, an HTML alternative.
    pub fn send(
        &self,
        to: &[String],
        subject: &str,
        text: String,
        html: Option<String>,
    ) -> Result<(), MailError> {
        if to.is_empty() {
            return Err(MailError::NoRecipients);
        }
        let mut b = Message::builder().from(self.from.clone()).subject(subject);
        for t in to {
            let mb: Mailbox = t.parse().map_err(|_| MailError::Address(t.clone()))?;
            b = b.to(mb);
        }
        let message = match html {
            Some(html) => b.multipart(MultiPart::alternative_plain_html(text, html))?,
            None => b.singlepart(SinglePart::plain(text))?,
        };
        self.transport
            .send(&message)
            .map_err(|e| smtp_failed(&self.server, e))?;
        Ok(())
    }
}
