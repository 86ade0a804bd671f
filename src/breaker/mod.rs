//! Circuit breaking: a service-level breaker (Hystrix semantics).
