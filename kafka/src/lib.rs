//! What millstream's Kafka source (`millstream-connectors`) and Kafka sink (`millstream-sinks`)
//! share about their librdkafka clients: reading librdkafka's failure reports to tell a
//! configuration problem (a refused TLS handshake, a failed SASL authentication, the wrong
//! `security.protocol`) from an outage, and logging its messages without flooding.

pub mod diagnostics;
