//! librdkafka's errors, classed: refusals that no retry can fix (credentials,
//! certificates, authorization, sizes) are permanent with a hint; the rest retry.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::engine::error::SinkError;

/// Remembers the last refusal among the client-level errors librdkafka reports. A
/// refused password or an untrusted certificate reaches the caller of a request only
/// as a transport failure or a timeout (and later errors, such as "all brokers
/// down", follow it); this keeps the reason, so the failure can say what was refused.
#[derive(Default)]
pub struct ClientErrors {
    refused: std::sync::Mutex<Option<(RDKafkaErrorCode, String)>>,
}

impl ClientErrors {
    pub(super) fn record(&self, error: &KafkaError, reason: &str) {
        let Some(code) = error.rdkafka_error_code() else {
            return;
        };
        if refusal(code, reason, "").is_some() {
            if let Ok(mut slot) = self.refused.lock() {
                *slot = Some((code, reason.to_string()));
            }
        }
    }

    /// A permanent error when the brokers refused our credentials or certificate.
    pub(super) fn refusal(&self, brokers: &str) -> Option<SinkError> {
        let (code, reason) = self.refused.lock().ok()?.clone()?;
        refusal(code, &reason, brokers)
    }
}

/// The error for a broker that refused who we are: SASL credentials (wrong user,
/// password or mechanism) or TLS (a certificate neither side trusts).
pub fn refusal(code: RDKafkaErrorCode, reason: &str, brokers: &str) -> Option<SinkError> {
    use RDKafkaErrorCode::*;
    let tls = ["SSL handshake failed", "certificate verify failed", "SSL routines"].iter().any(|s| reason.contains(s));
    let hint = match code {
        _ if tls => {
            "Check ssl_certificate_authority (the CA that signed the brokers' certificates) and, for mutual TLS, ssl_certificate and ssl_key."
        }
        Authentication | SaslAuthenticationFailed => "Check the connection's security_protocol, sasl_mechanisms, sasl_username and sasl_password.",
        _ => return None,
    };
    Some(SinkError::permanent(format!("Kafka brokers \"{brokers}\" refused the connection")).detail(reason.to_string()).hint(hint))
}

/// Whether the code refuses one record for what it is (its size, its form), not
/// the sink: `errors.policy` may set such a record aside.
pub fn is_record_refusal(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(code, MessageSizeTooLarge | InvalidRecord | MessageBatchTooLarge | PolicyViolation)
}

/// Whether a librdkafka error code means retrying cannot help.
pub fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | GroupAuthorizationFailed
            | TransactionalIdAuthorizationFailed
            | SaslAuthenticationFailed
            | Authentication
            | InvalidRecord
            | InvalidTopic
            | UnsupportedVersion
            | UnsupportedCompressionType
            | MessageBatchTooLarge
            | InvalidConfig
            | PolicyViolation
    )
}

pub(super) fn classify(what: &str, e: &KafkaError) -> SinkError {
    let code = e.rdkafka_error_code();
    let message = format!("Kafka {what} failed: {e}");
    match code {
        Some(c) if is_permanent(c) => SinkError::permanent(message).hint(permanent_hint(c)),
        _ => SinkError::transient(message),
    }
}

pub(super) fn permanent_hint(code: RDKafkaErrorCode) -> String {
    use RDKafkaErrorCode::*;
    match code {
        MessageSizeTooLarge | MessageBatchTooLarge => "Raise the topic's max.message.bytes (and the producer's message.max.bytes via properties.message.max.bytes), then resume the sink.".into(),
        TopicAuthorizationFailed | ClusterAuthorizationFailed | TransactionalIdAuthorizationFailed | GroupAuthorizationFailed => {
            "Grant the sink's principal Write on the topic, Read/Write on the progress topic, Write on its transactional id and Read on its group, then resume the sink.".into()
        }
        SaslAuthenticationFailed | Authentication => "Check the connection's SASL user and password.".into(),
        _ => "Fix the cause, then resume the sink with sink.resume_sink().".into(),
    }
}

pub(super) fn error_for_code(code: RDKafkaErrorCode, message: String) -> SinkError {
    if is_permanent(code) {
        SinkError::permanent(message)
    } else {
        SinkError::transient(message)
    }
}
