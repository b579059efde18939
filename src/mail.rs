//! Sending mail through the school's SMTP server, for the daily summary and for alerts.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SmtpTransport, Transport};
use thiserror::Error;

use crate::config::{Smtp, SmtpTls};

/// Why a message was not sent.
#[derive(Debug, Error)]
pub enum MailError {
    /// The config names an address lettre cannot use.
    #[error("bad address {0:?}; fix it in the [smtp] or recipients settings")]
    Address(String),
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
    #[error(
        "SMTP delivery via {server} failed: {source}; check [smtp] host, port, tls and credentials"
    )]
    Smtp {
        /// `host:port`.
        server: String,
        /// Why.
        source: lettre::transport::smtp::Error,
    },
}

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
        let builder = match smtp.tls {
            SmtpTls::None => SmtpTransport::builder_dangerous(&smtp.host),
            SmtpTls::Starttls => {
                SmtpTransport::starttls_relay(&smtp.host).map_err(|source| MailError::Smtp {
                    server: server.clone(),
                    source,
                })?
            }
            SmtpTls::Tls => SmtpTransport::relay(&smtp.host).map_err(|source| MailError::Smtp {
                server: server.clone(),
                source,
            })?,
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
            .map_err(|source| MailError::Smtp {
                server: self.server.clone(),
                source,
            })?;
        Ok(())
    }
}
