//! The `rapport.v1.Pipeline` service (sales pipelines).
